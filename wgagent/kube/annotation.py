"""The ``public-ip-overwrite`` annotation on this node's own Node, and whether flannel uses it.

Flannel copies ``flannel.alpha.coreos.com/public-ip-overwrite`` into ``public-ip`` only
when it starts; the other nodes follow ``public-ip``. So the ``annotation`` check is ok
only when both equal the decided address (per family: ``public-ipv6-overwrite`` and
``public-ipv6`` for IPv6), and each pass does the least that gets there:

    decided address   (public_ip(); None -> nothing to do yet)
    the watch's view  (cluster(); already right -> done, no request at all)
    GET own Node      (404 -> wait for k3s to register it; 403 -> say which credential)
    merge-patch       only the overwrites that differ; a removed or changed overwrite is
                      put back, and the log says so
    public-ip stale   -> restarter.defer(reason); its RestartResult.detail goes into the
                      check detail, which says which of the two annotations is wrong

A family that was not decided (``PublicAddresses.ipv6`` None) is left alone: its overwrite
may have been set by someone on purpose. Failures are logged once when they start, not on
every retry; the next pass comes sooner (backoff) while something is failing.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from wgagent.errors import Forbidden, KubeConfigError, KubeError, NotFound, Unauthorized
from wgagent.kube.backoff import OUTAGE_CAP_S, Backoff
from wgagent.kube.protocol import JSONObject, NodeAPI
from wgagent.model import (
    ANN_PUBLIC_IP,
    ANN_PUBLIC_IP_OVERWRITE,
    ANN_PUBLIC_IPV6,
    ANN_PUBLIC_IPV6_OVERWRITE,
    ANN_SUBNET_MANAGER,
    FLANNEL,
    ClusterView,
    PublicAddresses,
    RestartRequests,
)
from wgagent.part import Part, Signal
from wgagent.state import State

log = logging.getLogger(__name__)

PUBLISHED = {ANN_PUBLIC_IP_OVERWRITE: ANN_PUBLIC_IP, ANN_PUBLIC_IPV6_OVERWRITE: ANN_PUBLIC_IPV6}
"""Each overwrite and the annotation flannel copies it into when it starts."""

STEADY_INTERVAL_S = 300.0
"""Between passes when all is well. A pass then reads only the watch's memory; the watch
wakes this part as soon as the own Node's flannel annotations change."""
PENDING_INTERVAL_S = 60.0
"""While waiting for flannel to re-read the overwrite (a k3s restart pending or under way)."""

CREDENTIAL_FILE_RETRY_S = 15.0
"""A missing or unreadable kubeconfig (k3s writes the kubelet's at first start) is read again
this often; it costs the API server nothing."""


def short(key: str) -> str:
    return key[len(FLANNEL) :] if key.startswith(FLANNEL) else key


def wanted(addrs: PublicAddresses) -> dict[str, str]:
    """The overwrite annotations for the decided addresses (only the decided families).

    >>> from ipaddress import ip_address
    >>> wanted(PublicAddresses(ipv4=ip_address("203.0.113.7")))
    {'flannel.alpha.coreos.com/public-ip-overwrite': '203.0.113.7'}
    """
    out = {}
    if addrs.ipv4 is not None:
        out[ANN_PUBLIC_IP_OVERWRITE] = str(addrs.ipv4)
    if addrs.ipv6 is not None:
        out[ANN_PUBLIC_IPV6_OVERWRITE] = str(addrs.ipv6)
    return out


def same_ip(have: str | None, want: str) -> bool:
    """Equal as addresses ("2001:db8::1" is "2001:0db8:0:0:0:0:0:1")."""
    if have is None:
        return False
    try:
        return ipaddress.ip_address(have.strip()) == ipaddress.ip_address(want)
    except ValueError:
        return False


def overwrite_patch(current: Mapping[str, str], want: Mapping[str, str]) -> dict[str, Any] | None:
    """The merge patch that sets the overwrites that differ, or None when none does.

    >>> overwrite_patch({}, {"flannel.alpha.coreos.com/public-ip-overwrite": "203.0.113.7"})
    {'metadata': {'annotations': {'flannel.alpha.coreos.com/public-ip-overwrite': '203.0.113.7'}}}
    """
    changes = {key: value for key, value in want.items() if not same_ip(current.get(key), value)}
    return {"metadata": {"annotations": changes}} if changes else None


@dataclass(frozen=True)
class Assessment:
    ok: bool
    detail: str
    wrong_overwrites: tuple[str, ...] = ()
    """Overwrite keys that do not hold the decided address."""
    stale: tuple[str, ...] = ()
    """Published keys (public-ip, public-ipv6) flannel set from an older overwrite."""
    unpublished: tuple[str, ...] = ()
    """Published keys flannel has not set at all (flannel not running for this Node?)."""

    @property
    def needs_restart(self) -> bool:
        """The overwrites are right and flannel published an older address: only a
        flannel (k3s) restart makes it read them again."""
        return bool(self.stale) and not self.wrong_overwrites


def assess(current: Mapping[str, str], want: Mapping[str, str]) -> Assessment:
    """Compare the Node's annotations with the decided overwrites; the detail names what is wrong.

    >>> a = assess({"flannel.alpha.coreos.com/public-ip-overwrite": "203.0.113.7",
    ...             "flannel.alpha.coreos.com/public-ip": "10.0.0.3"},
    ...            {"flannel.alpha.coreos.com/public-ip-overwrite": "203.0.113.7"})
    >>> a.ok, a.needs_restart
    (False, True)
    >>> a.detail.split(" (")[0]
    "public-ip-overwrite is 203.0.113.7 but flannel's public-ip is still 10.0.0.3"
    """
    wrong, stale, unpublished, good, problems = [], [], [], [], []
    for key, value in want.items():
        published = PUBLISHED[key]
        have, flannel = current.get(key), current.get(published)
        if not same_ip(have, value):
            wrong.append(key)
            problems.append(f"{short(key)} is {have or 'not set'}, should be {value}")
        elif flannel is None:
            unpublished.append(published)
            managed = current.get(ANN_SUBNET_MANAGER) == "true"
            hint = "" if managed else "; is flannel running with the kube subnet manager?"
            problems.append(f"{short(key)} is {value} but flannel has published no {short(published)} yet{hint}")
        elif not same_ip(flannel, value):
            stale.append(published)
            problems.append(
                f"{short(key)} is {value} but flannel's {short(published)} is still {flannel} "
                "(flannel reads the overwrite only when it starts)"
            )
        else:
            good.append(f"{short(key)} and {short(published)} are {value}")
    if problems:
        return Assessment(False, "; ".join(problems), tuple(wrong), tuple(stale), tuple(unpublished))
    return Assessment(True, "; ".join(good))


def annotations_of(node: JSONObject) -> dict[str, str]:
    anns = (node.get("metadata") or {}).get("annotations") or {}
    return {k: v for k, v in anns.items() if isinstance(k, str) and isinstance(v, str)}


class AnnotationPart(Part):
    name = "annotation"
    checks = ("annotation",)
    interval_s = STEADY_INTERVAL_S

    def __init__(
        self,
        state: State,
        node: str,
        api: NodeAPI,
        *,
        public_ip: Callable[[], PublicAddresses | None],
        restarter: RestartRequests | None = None,
        cluster: Callable[[], ClusterView | None] = lambda: None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(state)
        self.node = node
        self.api = api
        self.done: Signal[None] = Signal("annotation.done")
        """Emitted after every pass: the k3s part follows, so k3s restarts once for both."""
        self._public_ip = public_ip
        self._restarter = restarter
        self._cluster = cluster
        self._retry = Backoff(rand, base_s=5.0, cap_s=OUTAGE_CAP_S)
        self._slow = Backoff(rand, base_s=10.0, cap_s=600.0)
        self._problem: str | None = None
        self._confirmed: dict[str, str] = {}
        """Overwrites last seen right: one that goes missing was removed by someone."""
        self._status: dict[str, Any] = {"node": node}
        m = state.metrics
        self._m_patches = m.counter(
            "wgagent_annotation_patches_total", "Patches of the own Node's overwrite annotations.", ("reason",)
        )
        self._m_restarts = m.counter(
            "wgagent_annotation_restart_requests_total", "k3s restarts requested so that flannel re-reads them."
        )

    async def reconcile(self) -> float | None:
        try:
            return await self._pass()
        finally:
            self.done.emit(None)

    async def _pass(self) -> float:
        addrs = self._public_ip()
        want = wanted(addrs) if addrs else {}
        if not want:
            return self._fail(
                "waiting",
                f"no public IP decided yet; nothing to annotate on Node {self.node}",
                PENDING_INTERVAL_S,
                quiet=True,
            )
        current = self._from_watch()
        if current is not None and assess(current, want).ok:
            return self._succeed(assess(current, want), want, current, "watch")
        try:
            current = annotations_of(await self.api.get_node(self.node))
            patch = overwrite_patch(current, want)
            if patch is not None:
                self._explain(current, want)
                current = annotations_of(await self.api.patch_node(self.node, patch))
        except NotFound:
            return self._fail(
                "missing",
                f"Node {self.node} does not exist yet (k3s not started or the node not registered); waiting for it",
                self._retry.next(),
                quiet=True,
            )
        except KubeConfigError as exc:  # no request was made: look at the file again soon
            return self._fail("credential", self._credential_problem(exc), CREDENTIAL_FILE_RETRY_S)
        except (Forbidden, Unauthorized) as exc:
            return self._fail("credential", self._credential_problem(exc), self._slow.next())
        except KubeError as exc:
            return self._fail(
                "api", f"cannot reach the API server to check Node {self.node}: {exc}", self._retry.next()
            )
        self._retry.reset()
        self._slow.reset()
        verdict = assess(current, want)
        if verdict.ok:
            return self._succeed(verdict, want, current, "api")
        detail = f"Node {self.node}: {verdict.detail}"
        if verdict.needs_restart:
            detail += "; " + await self._restart(verdict)
        self._record(want, current, "api")
        return self._fail("flannel" if not verdict.wrong_overwrites else "overwrite", detail, PENDING_INTERVAL_S)

    async def close(self) -> None:
        await self.api.close()

    # --- steps -------------------------------------------------------------------------

    def _from_watch(self) -> dict[str, str] | None:
        view = self._cluster()
        info = view.nodes.get(self.node) if view is not None else None
        return dict(info.annotations) if info is not None else None

    def _explain(self, current: Mapping[str, str], want: Mapping[str, str]) -> None:
        """Log each overwrite about to be written: set for the first time, or put back."""
        for key, value in want.items():
            have = current.get(key)
            if same_ip(have, value):
                continue
            confirmed = self._confirmed.get(key)
            if confirmed is not None and same_ip(confirmed, value):
                how = "removed" if have is None else f"changed to {have}"
                log.warning(
                    "Node %s: %s was %s by someone else (k3s does this at start when flannel-external-ip is off); "
                    "putting back %s",
                    self.node,
                    short(key),
                    how,
                    value,
                )
                self._m_patches.inc(reason="restore")
            else:
                log.info("Node %s: setting %s to %s (was %s)", self.node, short(key), value, have or "not set")
                self._m_patches.inc(reason="set")

    async def _restart(self, verdict: Assessment) -> str:
        reason = "flannel has not read the public-ip-overwrite annotation: " + verdict.detail
        if self._restarter is None:
            return "no k3s restarter is wired to make flannel re-read it"
        self._m_restarts.inc()
        result = await self._restarter.defer(reason)
        return result.detail

    def _credential_problem(self, exc: KubeError) -> str:
        source = self.api.source
        if isinstance(exc, Forbidden):
            return (
                f"the credential in {source} may not read or patch Node {self.node} ({exc}); "
                "it must be this node's own (kube.kubeconfig), or node_name is wrong"
            )
        if isinstance(exc, Unauthorized):
            return f"the API server does not accept the credential in {source} ({exc})"
        return f"no usable credential for Node {self.node}: {exc}"

    # --- reporting ---------------------------------------------------------------------

    def _succeed(self, verdict: Assessment, want: Mapping[str, str], current: Mapping[str, str], source: str) -> float:
        self._confirmed.update(want)
        self._retry.reset()
        self._slow.reset()
        if self._problem is not None:
            log.info("Node %s: %s", self.node, verdict.detail)
        self._problem = None
        self._record(want, current, source)
        self.state.set_check("annotation", True, f"Node {self.node}: {verdict.detail}")
        return STEADY_INTERVAL_S

    def _fail(self, kind: str, detail: str, retry_s: float, *, quiet: bool = False) -> float:
        if kind != self._problem:  # once per kind of problem, not every retry
            (log.info if quiet else log.warning)("%s", detail)
        self._problem = kind
        self._status["retry_in_s"] = round(retry_s, 1)
        self.state.set_part(self.name, self._status)
        self.state.set_check("annotation", False, detail)
        return retry_s

    def _record(self, want: Mapping[str, str], current: Mapping[str, str], source: str) -> None:
        self._status = {
            "node": self.node,
            "kubeconfig": self.api.source,
            "want": dict(want),
            "have": {k: current.get(k) for key in want for k in (key, PUBLISHED[key])},
            "read_from": source,
        }
        self.state.set_part(self.name, self._status)
