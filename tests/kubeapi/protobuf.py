"""Just enough of Kubernetes' protobuf encoding to read what kubectl's typed clients send.

kubectl posts built-in objects (e.g. ``kubectl auth can-i``'s SelfSubjectAccessReview) as
``application/vnd.kubernetes.protobuf``: the 4-byte magic ``k8s\\0``, then a
``runtime.Unknown`` (apimachinery ``pkg/runtime/generated.proto``: typeMeta=1, raw=2,
contentEncoding=3, contentType=4) whose ``raw`` is the object's message
(k8s.io/api ``authorization/v1/generated.proto``).

    >>> raw = bytes.fromhex(  # what kubectl 1.32 sends for ``auth can-i create events``
    ...     "6b3873000a320a17617574686f72697a6174696f6e2e6b38732e696f2f7631121753656c665375626a65637441636365"
    ...     "737352657669657712410a100a0012001a0022002a0032003800420012230a210a0764656661756c7412066372656174"
    ...     "651a0022002a066576656e747332003a001a08080012001a0020001a002200"
    ... )
    >>> self_subject_access_review(raw)["spec"]["resourceAttributes"]
    {'namespace': 'default', 'verb': 'create', 'resource': 'events'}
"""

from __future__ import annotations

from typing import Any

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"


def fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of one message: varints as ints, length-delimited as bytes;
    fixed-width values are skipped (none of the fields read here use them)."""
    out: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.append((number, value))
        elif wire == 2:
            size, i = _varint(data, i)
            out.append((number, data[i : i + size]))
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf: unsupported wire type {wire}")
    return out


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if i >= len(data):
            raise ValueError("protobuf: truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def unwrap(body: bytes) -> bytes:
    """The object's message inside the ``k8s\\0`` + ``runtime.Unknown`` envelope."""
    if not body.startswith(MAGIC):
        raise ValueError("protobuf: no k8s envelope")
    for number, value in fields(body[len(MAGIC) :]):
        if number == 2 and isinstance(value, bytes):
            return value
    raise ValueError("protobuf: the envelope has no object")


def _strings(message: bytes, names: dict[int, str]) -> dict[str, str]:
    out = {}
    for number, value in fields(message):
        if number in names and isinstance(value, bytes) and value:
            out[names[number]] = value.decode()
    return out


_RESOURCE_ATTRIBUTES = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource", 6: "subresource",
                        7: "name"}  # fmt: skip
_NON_RESOURCE_ATTRIBUTES = {1: "path", 2: "verb"}


def self_subject_access_review(body: bytes) -> dict[str, Any]:
    """A SelfSubjectAccessReview (metadata=1, spec=2; spec: resourceAttributes=1,
    nonResourceAttributes=2) as the JSON object it stands for (empty strings left out)."""
    spec: dict[str, Any] = {}
    for number, value in fields(unwrap(body)):
        if number != 2 or not isinstance(value, bytes):
            continue
        for sub, sub_value in fields(value):
            if sub == 1 and isinstance(sub_value, bytes):
                spec["resourceAttributes"] = _strings(sub_value, _RESOURCE_ATTRIBUTES)
            elif sub == 2 and isinstance(sub_value, bytes):
                spec["nonResourceAttributes"] = _strings(sub_value, _NON_RESOURCE_ATTRIBUTES)
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": spec}
