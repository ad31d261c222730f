"""core/v1 Events as the API server keeps them: create, get, update, patch, delete, list with
field and label selectors, and the server-side Table ``kubectl get events`` prints.

    >>> store = EventStore(next_rv=iter(range(1, 100)).__next__)
    >>> e = store.create("default", {"metadata": {"name": "n1.1"}, "involvedObject": {"kind": "Node",
    ...     "name": "n1", "uid": "n1"}, "reason": "PublicIPAdopted", "type": "Normal", "count": 1})
    >>> [i["metadata"]["name"] for i in store.list(None, parse_field_selector("involvedObject.name=n1"))]
    ['n1.1']

The server stores what clients send (no aggregation of its own: ``count``, ``firstTimestamp``,
``lastTimestamp`` and ``series`` are the recorder's, client-go ``tools/record``); validation is
the legacy one every core/v1 create and update gets (kubernetes
``pkg/apis/core/validation/events.go`` ``ValidateEventCreate``/``legacyValidateEvent``) plus the
generic ObjectMeta checks. Selectable fields: kubernetes ``pkg/registry/core/event/strategy.go``
``ToSelectableFields``. Not modelled: the event TTL (``--event-ttl``, 1 h), watches on events.
"""

from __future__ import annotations

import copy
import random
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery util/rand: no vowels, no confusables

EVENT_FIELDS = frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                          "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                          "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type",
                          "metadata.name", "metadata.namespace"})  # fmt: skip


class EventError(Exception):
    """An answer with a Status: code, reason, message (the server turns it into ApiError)."""

    def __init__(self, code: int, reason: str, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, dict(details or {})


# --- selectors ----------------------------------------------------------------------------------

Requirement = tuple[str, str, str]
"""(field, "=" or "!=", value)."""


def parse_field_selector(text: str, allowed: Iterable[str] = EVENT_FIELDS) -> list[Requirement]:
    """apimachinery ``fields.ParseSelector``: terms split on unescaped commas, ``=``/``==``/``!=``,
    ``\\`` escapes; a field the resource does not offer is a 400 (``field label not supported``).

    >>> parse_field_selector(r"involvedObject.name=a\\,b,type!=Normal")
    [('involvedObject.name', '=', 'a,b'), ('type', '!=', 'Normal')]
    """
    allowed = frozenset(allowed)
    out: list[Requirement] = []
    for term in _split_unescaped(text, ","):
        if not term:
            continue
        found = next(
            ((op, *parts) for op, spelled in (("!=", "!="), ("=", "=="), ("=", "="))
             if (parts := _partition_unescaped(term, spelled))[1]),
            None,
        )  # fmt: skip
        if found is None:
            raise EventError(400, "BadRequest", f"invalid selector: '{text}'; can't understand '{term}'")
        op, key, _, value = found
        if key not in allowed:
            raise EventError(400, "BadRequest", f"field label not supported: {key}")
        out.append((key, op, _unescape(value)))
    return out


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts, cur, escaped = [], "", False
    for ch in text:
        if escaped:
            cur += "\\" + ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur + ("\\" if escaped else ""))
    return parts


def _partition_unescaped(term: str, op: str) -> tuple[str, str, str]:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        if term.startswith(op, i):
            return term[:i], op, term[i + len(op) :]
        i += 1
    return term, "", ""


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def event_fields(event: Obj) -> dict[str, str]:
    """``ToSelectableFields`` of one event (``source`` falls back to reportingController)."""
    inv = event.get("involvedObject") or {}
    meta = event.get("metadata") or {}
    return {
        "involvedObject.kind": str(inv.get("kind", "")),
        "involvedObject.namespace": str(inv.get("namespace", "")),
        "involvedObject.name": str(inv.get("name", "")),
        "involvedObject.uid": str(inv.get("uid", "")),
        "involvedObject.apiVersion": str(inv.get("apiVersion", "")),
        "involvedObject.resourceVersion": str(inv.get("resourceVersion", "")),
        "involvedObject.fieldPath": str(inv.get("fieldPath", "")),
        "reason": str(event.get("reason", "")),
        "reportingComponent": str(event.get("reportingComponent", "")),
        "source": str((event.get("source") or {}).get("component") or event.get("reportingComponent", "")),
        "type": str(event.get("type", "")),
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "")),
    }


def matches(fields: Mapping[str, str], requirements: Iterable[Requirement]) -> bool:
    return all((fields.get(k, "") == v) == (op == "=") for k, op, v in requirements)


# --- the store ----------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventStore:
    """Events by (namespace, name); ``next_rv`` hands out the cluster-wide resourceVersion."""

    def __init__(self, *, next_rv: Callable[[], int], rand: random.Random | None = None) -> None:
        self.next_rv = next_rv
        self.items: dict[tuple[str, str], Obj] = {}
        self.rand = rand or random.Random(7)

    def create(self, namespace: str, body: Obj, *, dry_run: bool = False) -> Obj:
        event = copy.deepcopy(body)
        meta = event.setdefault("metadata", {})
        if meta.get("namespace") not in (None, "", namespace):
            raise EventError(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                             "sent on the request")  # fmt: skip
        meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(self.rand.choice(_GENERATE_CHARS) for _ in range(5))
        validate_event(event)
        key = (namespace, meta["name"])
        if key in self.items:
            raise EventError(409, "AlreadyExists", f'events "{meta["name"]}" already exists',
                             {"name": meta["name"], "kind": "events"})  # fmt: skip
        event.setdefault("kind", "Event")
        event.setdefault("apiVersion", "v1")
        if meta.get("resourceVersion"):
            raise EventError(400, "BadRequest", "resourceVersion should not be set on objects to be created")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        if dry_run:
            return event
        return self._store(key, event)

    def get(self, namespace: str, name: str) -> Obj:
        found = self.items.get((namespace, name))
        if found is None:
            raise not_found(name)
        return copy.deepcopy(found)

    def update(
        self, namespace: str, name: str, mutate: Callable[[Obj], Obj], *, dry_run: bool = False, create: bool = True
    ) -> Obj:
        """PUT or PATCH: ``mutate`` gets a copy. When absent: a PUT (``create``) creates it (events
        allow create on update: kubernetes pkg/registry/core/event/strategy.go
        ``AllowCreateOnUpdate``); a JSON, merge or strategic merge PATCH is 404 (apiserver
        endpoints/handlers/patch.go: ``jsonPatcher``/``smpPatcher.createNewObject`` answer
        NotFound; only server-side apply creates), which client-go's recorder takes to mean
        "expired: create it again"."""
        current = self.items.get((namespace, name))
        if current is None and not create:
            raise not_found(name)
        if current is None:
            body = mutate({})
            return self.create(namespace, {**body, "metadata": {**(body.get("metadata") or {}), "name": name}},
                               dry_run=dry_run)  # fmt: skip
        new = mutate(copy.deepcopy(current))
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name or meta.get("namespace", namespace) != namespace:
            raise EventError(400, "BadRequest", "the name of the object and the name in the URL do not match")
        rv = meta.get("resourceVersion")
        if rv not in (None, "", current["metadata"]["resourceVersion"]):
            raise EventError(409, "Conflict", f'Operation cannot be fulfilled on events "{name}": the object has '
                             "been modified; please apply your changes to the latest version and try again",
                             {"name": name, "kind": "events"})  # fmt: skip
        for key in ("uid", "creationTimestamp", "name", "namespace", "resourceVersion"):
            meta[key] = current["metadata"][key]
        validate_event(new)
        if new == current or dry_run:
            return copy.deepcopy(new)
        return self._store((namespace, name), new)

    def delete(self, namespace: str, name: str) -> Obj:
        found = self.items.pop((namespace, name), None)
        if found is None:
            raise not_found(name)
        return found

    def list(
        self, namespace: str | None, fields: Iterable[Requirement] = (), labels: Callable[[Obj], bool] | None = None
    ) -> list[Obj]:
        """Events of ``namespace`` (None: all), matching the selectors, by namespace then name."""
        reqs = list(fields)
        out = []
        for (ns, _), event in sorted(self.items.items()):
            if namespace is not None and ns != namespace:
                continue
            if matches(event_fields(event), reqs) and (labels is None or labels(event)):
                out.append(copy.deepcopy(event))
        return out

    def _store(self, key: tuple[str, str], event: Obj) -> Obj:
        event["metadata"]["resourceVersion"] = str(self.next_rv())
        self.items[key] = event
        return copy.deepcopy(event)


def not_found(name: str) -> EventError:
    return EventError(404, "NotFound", f'events "{name}" not found', {"name": name, "kind": "events"})


def validate_event(event: Obj) -> None:
    """``legacyValidateEvent`` (all that a core/v1 create or update gets) and the generic name
    checks; a 422 with the API server's wording."""
    meta = event["metadata"]
    name, namespace = meta.get("name") or "", meta.get("namespace") or ""
    inv = event.get("involvedObject") or {}
    causes: list[tuple[str, str]] = []
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
    elif "/" in name or "%" in name or name in (".", ".."):
        causes.append(("metadata.name", f"Invalid value: \"{name}\": may not contain '/' or '%'"))
    inv_ns = str(inv.get("namespace") or "")
    if not event.get("eventTime"):
        if (not inv_ns and namespace not in ("", "default")) or (inv_ns and inv_ns != namespace):
            causes.append(("involvedObject.namespace", f'Invalid value: "{inv_ns}": does not match event.namespace'))
    elif not inv_ns and namespace not in ("default", "kube-system"):
        causes.append(("involvedObject.namespace", f'Invalid value: "{inv_ns}": does not match event.namespace'))
    if namespace and not _DNS1123_SUBDOMAIN.match(namespace):
        causes.append(("namespace", f'Invalid value: "{namespace}": a lowercase RFC 1123 subdomain must consist of '
                       "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                       "character"))  # fmt: skip
    if causes:
        raise EventError(
            422,
            "Invalid",
            f'Event "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes),
            {
                "name": name,
                "kind": "Event",
                "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
            },
        )


# --- the Table kubectl prints -------------------------------------------------------------------

_COLUMNS = [
    ("Last Seen", "", 0, "The time at which the most recent occurrence of this event was recorded."),
    ("Type", "", 0, "Type of this event (Normal, Warning), new types could be added in the future"),
    ("Reason", "", 0, "This should be a short, machine understandable string that gives the reason for the "
     "transition into the object's current status."),
    ("Object", "", 0, "The object that this event is about."),
    ("Subobject", "", 1, "If referring to a piece of an object instead of an entire object, this string should "
     "contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]."),
    ("Source", "", 1, "The component reporting this event. Should be a short machine understandable string."),
    ("Message", "", 0, "A human-readable description of the status of this operation."),
    ("First Seen", "", 1, "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)"),
    ("Count", "", 1, "The number of times this event has occurred."),
    ("Name", "name", 1, "Name must be unique within a namespace."),
]  # fmt: skip
"""kubernetes ``pkg/printers/internalversion/printers.go`` ``eventColumnDefinitions``."""


def table(events: list[Obj], *, rv: str, include: str, age: Callable[[str | None], str]) -> Obj:
    """The server-side Table (``printEvent``; the server always renders the wide columns,
    kubectl hides priority-1 ones without ``-o wide``)."""
    rows = []
    for event in events:
        row: Obj = {"cells": event_cells(event, age)}
        if include == "Object":
            row["object"] = event
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": event["metadata"]}  # fmt: skip
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv},
        "columnDefinitions": [
            {"name": n, "type": "string" if n != "Count" else "integer", "format": f, "description": d, "priority": p}
            for n, f, p, d in _COLUMNS
        ],
        "rows": rows,
    }


def event_cells(event: Obj, age: Callable[[str | None], str]) -> list[Any]:
    first = age(event.get("firstTimestamp")) if event.get("firstTimestamp") else age(event.get("eventTime"))
    last = age(event.get("lastTimestamp")) if event.get("lastTimestamp") else first
    count = int(event.get("count") or 0)
    series = event.get("series")
    if series:
        last = age(series.get("lastObservedTime"))
        count = int(series.get("count") or 0)
    elif count == 0:
        count = 1  # singleton events of the new API carry no count
    inv = event.get("involvedObject") or {}
    kind = str(inv.get("kind", "")).lower()
    target = f"{kind}/{inv['name']}" if inv.get("name") else kind
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    host = source.get("host") or event.get("reportingInstance") or ""
    return [last, event.get("type", ""), event.get("reason", ""), target, inv.get("fieldPath", ""),
            f"{component}, {host}" if host else component, str(event.get("message", "")).strip(), first, count,
            event["metadata"]["name"]]  # fmt: skip
