"""What the node watch and the annotation need of the Kubernetes API, as a Protocol.

``client.KubeClient`` (aiohttp) implements it; the parts depend only on this, so their
logic imports no HTTP library. A one-shot command's node list needs only
:class:`NodeLister`, which ``oneshot.OneShotClient`` (the standard library) implements too.
Objects are the API's JSON, decoded (``dict``); errors are the ``wgagent.errors.KubeError``
classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

JSONObject = dict[str, Any]


@dataclass(frozen=True)
class WatchEvent:
    """One line of a watch stream: ADDED, MODIFIED, DELETED or BOOKMARK, and its object.

    ERROR events never appear here: the client raises them as errors (410 -> Gone).
    """

    type: str
    object: JSONObject

    @property
    def resource_version(self) -> str | None:
        rv = (self.object.get("metadata") or {}).get("resourceVersion")
        return rv if isinstance(rv, str) and rv else None


class NodeLister(Protocol):
    """What a one-shot LIST of the Nodes needs (``watch.list_once``)."""

    @property
    def source(self) -> str:
        """The kubeconfig this client authenticates with (for messages)."""
        ...

    async def list_nodes_metadata(self, *, resource_version: str | None = None) -> JSONObject:
        """A PartialObjectMetadataList of every Node (only metadata, so it stays small)."""
        ...

    async def close(self) -> None: ...


class NodeAPI(NodeLister, Protocol):
    """What the daemon's parts need: their own Node, every Node's metadata, and the watch."""

    async def get_node(self, name: str) -> JSONObject:
        """The Node, or NotFound / Forbidden / ... ."""
        ...

    async def patch_node(self, name: str, patch: Mapping[str, Any]) -> JSONObject:
        """JSON merge patch (RFC 7386) of the Node; the patched Node."""
        ...

    def watch_nodes_metadata(self, resource_version: str, *, timeout_s: int) -> AsyncIterator[WatchEvent]:
        """Metadata-only events after ``resource_version``, with bookmarks, until the server
        ends the watch (normally after ``timeout_s``)."""
        ...
