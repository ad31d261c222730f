"""wgagent's errors: one tree, so callers catch what they can act on.

    WgAgentError                  anything wgagent reports to a person
    ├── ConfigError               the config file is unreadable or invalid (the CLI exits 2)
    ├── WriteError                an atomic file write failed; the old file is intact
    ├── SourceError               a public IP source is broken (logged, counted, never fatal)
    │   └── MalformedReply        a reply (STUN, HTTP echo, metadata) failed validation
    ├── KubeError                 the Kubernetes API could not do what was asked
    │   ├── KubeUnreachable       no HTTP answer: connection refused, TLS failure, timeout
    │   ├── KubeConfigError       the kubeconfig is missing or unusable
    │   └── KubeStatusError       an HTTP error status; subclasses by status:
    │       ├── Unauthorized (401), Forbidden (403), NotFound (404),
    │       ├── Conflict (409), Gone (410), Invalid (422), ServerError (5xx)
    ├── WireGuardError            a WireGuard device could not be read or changed
    │   └── DeviceNotFound        no such device, or no backend can reach it
    ├── TapUnavailable            the mesh probe tap (AF_PACKET) cannot run here
    ├── NftUnavailable            nft cannot count probes or list the ruleset here
    └── DaemonNotRunning          a command needs the running daemon and found none

Foreign exceptions (OSError, aiohttp, pyroute2's NetlinkError, yaml) are translated
where they enter, with ``raise ... from exc``, so the rest of the code sees only these.
Messages are one line a person can act on, and never contain secrets.
"""

from __future__ import annotations


class WgAgentError(Exception):
    """Base of every error wgagent raises on purpose."""


class ConfigError(WgAgentError):
    """The config file cannot be used. ``str()`` is the whole one-line message."""


class WriteError(WgAgentError):
    """An atomic write failed before its rename: the previous file is untouched."""


class SourceError(WgAgentError):
    """A public IP source could not answer (as opposed to "not applicable here")."""


class MalformedReply(SourceError):
    """A reply was received but failed validation (size, syntax, protocol fields)."""


class KubeError(WgAgentError):
    """The Kubernetes API did not do what was asked."""

    transient = False
    """Whether retrying the same request later may succeed."""


class KubeUnreachable(KubeError):
    """No HTTP answer at all."""

    transient = True


class KubeConfigError(KubeError):
    """The kubeconfig file is missing, unreadable or incomplete."""


class KubeStatusError(KubeError):
    """The API answered with an error status."""

    status = 0

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.reason = reason


class Unauthorized(KubeStatusError):
    status = 401


class Forbidden(KubeStatusError):
    status = 403


class NotFound(KubeStatusError):
    status = 404


class Conflict(KubeStatusError):
    status = 409
    transient = True


class Gone(KubeStatusError):
    status = 410


class Invalid(KubeStatusError):
    status = 422


class ServerError(KubeStatusError):
    status = 500
    transient = True


_BY_STATUS: dict[int, type[KubeStatusError]] = {
    cls.status: cls for cls in (Unauthorized, Forbidden, NotFound, Conflict, Gone, Invalid)
}


def kube_status_error(status: int, message: str, reason: str = "") -> KubeStatusError:
    """The error class for an HTTP status: ``kube_status_error(404, ...)`` is a NotFound.

    Any 5xx and 429 (too many requests) become a transient ServerError.
    """
    if status >= 500 or status == 429:
        return ServerError(message, status=status, reason=reason)
    cls = _BY_STATUS.get(status, KubeStatusError)
    return cls(message, status=status, reason=reason)


class WireGuardError(WgAgentError):
    """A WireGuard device could not be read or changed."""


class DeviceNotFound(WireGuardError):
    """The interface does not exist, or neither backend can talk to it."""


class TapUnavailable(WgAgentError):
    """The probe tap cannot run here; the message says why (the mesh report's ``in.st``)."""


class NftUnavailable(WgAgentError):
    """nft cannot be used here; the message says why (the mesh report's ``in.ctr``)."""


class DaemonNotRunning(WgAgentError):
    """A command that asks the running daemon found nothing listening."""
