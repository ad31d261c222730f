"""The userspace UAPI socket of wireguard-go and boringtun: ``<uapi_dir>/<ifname>.sock``.

The protocol (wireguard.com/xplatform) is lines of ``key=value``; a blank line ends a
request and a reply. Keys travel as hex. A ``get=1`` reply lists the device, then each
peer from its ``public_key=`` line on, and ends with ``errno=0``::

    >>> reply = b"listen_port=51820\\npublic_key=" + b"ab" * 32 + b"\\nallowed_ip=10.42.1.0/24\\n"
    >>> reply += b"last_handshake_time_sec=0\\nlast_handshake_time_nsec=0\\nerrno=0\\n\\n"
    >>> dev = parse_get(reply, "wg0")
    >>> dev.listen_port, dev.peers[0].allowed_ips, dev.peers[0].last_handshake
    (51820, ('10.42.1.0/24',), None)

``set=1`` with many ``public_key=<hex>`` / ``remove=true`` pairs removes them all in one
transaction; removing an absent peer answers ``errno=0``, a malformed key ``errno=-22``.

This module is the pure codec (:class:`GetParser`, :func:`encode_remove`,
:func:`parse_errno`), tested without sockets, plus :class:`UapiBackend`, a thin asyncio
adapter (asyncio is imported when it is first used: ``wgagent gc`` sends its get with
:meth:`UapiBackend.send_get` before it loads asyncio). The device's private key is read
only to derive its public key (X25519, RFC 7748) and is then dropped; the preshared keys
are skipped; neither is ever in a message.
"""

from __future__ import annotations

import binascii
import os
import re
import socket
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from wgagent.errors import DeviceNotFound, WireGuardError
from wgagent.wireguard.model import KEY_LEN, Device, Peer, key_from_bytes

if TYPE_CHECKING:
    import asyncio

MAX_REPLY_BYTES = 256 << 20
"""A get reply is ~400 bytes per peer: this is room for over half a million peers, and a
bound on what a broken or hostile socket can make us buffer."""

T = TypeVar("T")
_READ_SIZE = 4 << 20
_INT_FIELDS = frozenset({"last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes"})


class GetParser:
    """Incremental reader of a ``get=1`` reply: ``feed()`` chunks until it returns True, then
    ``result()``.

    The reply is gathered until the blank line that ends it and parsed once: first by
    :func:`_parse_fast`, a few regular expressions for the layout wireguard-go writes
    (10,000 peers in well under a tenth of the line-by-line time), and when anything differs
    from that layout (another implementation's order, unknown keys, a malformed line) by
    :class:`_LineParser`, which skips unknown keys and names the line of an error.

    A line without ``=``, a bad number or a bad key raises WireGuardError naming the line
    number and the key, never a secret value; a non-zero ``errno=`` raises WireGuardError
    with that errno.
    """

    def __init__(self, ifname: str, source: str = "UAPI", *, max_bytes: int = MAX_REPLY_BYTES) -> None:
        self.ifname = ifname
        self.source = source
        self.max_bytes = max_bytes
        self._chunks: list[bytes] = []
        self._size = 0
        self._last = b"\n"  # a reply that starts with a blank line is empty
        self._device: Device | None = None

    def feed(self, data: bytes) -> bool:
        if self._device is not None:
            return True
        self._size += len(data)
        if self._size > self.max_bytes:
            raise WireGuardError(f"{self.source}: get reply is larger than {self.max_bytes} bytes; giving up")
        self._chunks.append(data)
        if (self._last + data).find(b"\n\n") < 0:
            if data:
                self._last = data[-1:]
            return False
        whole = b"".join(self._chunks)
        end = 0 if whole.startswith(b"\n") else whole.index(b"\n\n") + 1
        if whole[end + 1 :]:
            line = whole.count(b"\n", 0, end) + 2
            raise WireGuardError(f"{self.source}: malformed get reply: line {line} follows the blank line that ends it")
        content = whole[:end]
        device = _parse_fast(content, self.ifname, self.source)
        if device is None:
            device = _LineParser(self.ifname, self.source).parse(content)
        self._device = device
        return True

    def result(self) -> Device:
        if self._device is None:
            lines = sum(chunk.count(b"\n") for chunk in self._chunks)
            raise WireGuardError(f"{self.source}: get reply ended early, after {lines} lines")
        return self._device


_HEAD_RE = re.compile(r"(?:private_key=([0-9a-f]{64})\n)?(?:listen_port=(\d{1,20})\n)?(?:fwmark=\d{1,20}\n)?")
_PEER_RE = re.compile(
    # wireguard-go's order; every line but endpoint and allowed_ip is always there. The
    # preshared key and protocol version are skipped, as the line parser skips them.
    r"public_key=([0-9a-f]{64})\n"
    r"preshared_key=[^\n]*\n"
    r"protocol_version=[^\n]*\n"
    r"(?:endpoint=([^\n]*)\n)?"
    r"last_handshake_time_sec=(\d{1,20})\n"
    r"last_handshake_time_nsec=(\d{1,20})\n"
    r"tx_bytes=(\d{1,20})\n"
    r"rx_bytes=(\d{1,20})\n"
    r"persistent_keepalive_interval=(\d{1,20})\n"
    r"((?:allowed_ip=[^\n/]*/[^\n]*\n)*)"
)
_ERRNO_RE = re.compile(r"errno=(-?\d{1,20})\n")


def _parse_fast(content: bytes, ifname: str, source: str) -> Device | None:
    """The reply in wireguard-go's exact layout, or None for anything else (then the line
    parser decides, and explains an error)."""
    try:
        text = content.decode("ascii")
    except UnicodeDecodeError:
        return None
    head = _HEAD_RE.match(text)
    assert head is not None  # every part is optional
    peers, pos = _fast_peers(text, head.end())
    tail = _ERRNO_RE.fullmatch(text, pos)
    if tail is None:
        return None
    code = int(tail.group(1))
    if code != 0:
        raise WireGuardError(f"{source}: get on {ifname} failed: {errno_text(code)}")
    private_hex, port = head.groups()
    public = None
    if private_hex is not None and private_hex != "0" * 64:
        public = key_from_bytes(x25519_public(bytes.fromhex(private_hex)))
    return Device(ifname, int(port) or None if port else None, public, tuple(peers))


def _fast_peers(text: str, pos: int) -> tuple[list[Peer], int]:
    """The peers from ``pos`` on, in wireguard-go's layout, up to where that layout stops.

    The loop is the hot path of a big device (10,000 peers): each peer is built inline,
    without a helper call, and most values of a dead peer are "0", for which ``int()`` is
    skipped. Whatever follows the last peer must then be the ``errno=`` line.
    """
    peers: list[Peer] = []
    append = peers.append
    b64, fromhex = binascii.b2a_base64, bytes.fromhex
    new = tuple.__new__  # Peer(...) without its Python-level __new__: a fifth of the parse
    for m in _PEER_RE.finditer(text, pos):
        if m.start() != pos:
            break  # a gap: not wireguard-go's layout, and the errno match at ``pos`` fails
        pos = m.end()
        key, endpoint, sec, nsec, tx, rx, keepalive, ips = m.groups()
        append(
            new(
                Peer,
                (
                    b64(fromhex(key), newline=False).decode(),
                    endpoint or None,
                    tuple(ips[11:-1].split("\nallowed_ip=")) if ips else (),
                    None if sec == "0" and nsec == "0" else (int(sec) + int(nsec) / 1e9 or None),
                    0 if rx == "0" else int(rx),
                    0 if tx == "0" else int(tx),
                    None if keepalive == "0" else (int(keepalive) or None),
                ),
            )
        )
    return peers, pos


class _LineParser:
    """The careful parser: any order, unknown keys skipped, errors name their line."""

    def __init__(self, ifname: str, source: str) -> None:
        self.ifname = ifname
        self.source = source
        self._line_no = 0
        self._errno: int | None = None
        self._listen_port: int | None = None
        self._public_key: str | None = None
        self._peers: list[Peer] = []
        self._peer: dict[str, Any] | None = None

    def parse(self, content: bytes) -> Device:
        for raw in content.split(b"\n")[:-1]:
            self._line_no += 1
            self._line(raw)
        self._end_peer()
        if self._errno is None:
            raise WireGuardError(f"{self.source}: get reply has no errno= line")
        if self._errno != 0:
            raise WireGuardError(f"{self.source}: get on {self.ifname} failed: {errno_text(self._errno)}")
        return Device(self.ifname, self._listen_port, self._public_key, tuple(self._peers))

    def _line(self, raw: bytes) -> None:
        key, sep, value_b = raw.partition(b"=")
        if not sep:
            raise self._error("has no '='")
        try:
            name = key.decode("ascii")
            value = value_b.decode("ascii")
        except UnicodeDecodeError:
            raise self._error("is not ASCII") from None
        if self._errno is not None:
            raise self._error(f"'{name}' follows errno=")
        if name == "public_key":
            self._end_peer()
            self._peer = {"public_key": self._key(name, value), "allowed_ips": []}
            return
        if name == "errno":
            self._end_peer()
            self._errno = self._int(name, value, signed=True)
            return
        peer = self._peer
        if peer is None:
            if name == "private_key":
                raw_key = self._raw_key(name, value)
                self._public_key = None if raw_key == bytes(KEY_LEN) else key_from_bytes(x25519_public(raw_key))
            elif name == "listen_port":
                port = self._int(name, value)
                self._listen_port = port if port else None
            return  # fwmark and anything new: not in the model
        if name == "allowed_ip":
            if "/" not in value:
                raise self._error(f"'{name}' is not a CIDR: {value[:60]!r}")
            peer["allowed_ips"].append(value)
        elif name == "endpoint":
            peer["endpoint"] = value or None
        elif name == "persistent_keepalive_interval":
            peer["keepalive"] = self._int(name, value) or None
        elif name in _INT_FIELDS:
            peer[name] = self._int(name, value)
        # preshared_key, protocol_version and unknown keys are skipped

    def _end_peer(self) -> None:
        p = self._peer
        if p is None:
            return
        sec, nsec = p.get("last_handshake_time_sec", 0), p.get("last_handshake_time_nsec", 0)
        self._peers.append(
            Peer(
                public_key=p["public_key"],
                endpoint=p.get("endpoint"),
                allowed_ips=tuple(p["allowed_ips"]),
                last_handshake=None if sec == 0 and nsec == 0 else sec + nsec / 1e9,
                rx_bytes=p.get("rx_bytes", 0),
                tx_bytes=p.get("tx_bytes", 0),
                keepalive=p.get("keepalive"),
            )
        )
        self._peer = None

    def _int(self, name: str, value: str, *, signed: bool = False) -> int:
        text = value[1:] if signed and value.startswith("-") else value
        if not text.isdigit() or len(text) > 20:
            raise self._error(f"'{name}' is not a number: {value[:60]!r}")
        return int(value)

    def _raw_key(self, name: str, value: str) -> bytes:
        if len(value) != 2 * KEY_LEN:
            raise self._error(f"'{name}' is not a {KEY_LEN}-byte hex key")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise self._error(f"'{name}' is not a {KEY_LEN}-byte hex key") from None

    def _key(self, name: str, value: str) -> str:
        return key_from_bytes(self._raw_key(name, value))

    def _error(self, what: str) -> WireGuardError:
        return WireGuardError(f"{self.source}: malformed get reply: line {self._line_no} {what}")


def parse_get(data: bytes, ifname: str, source: str = "UAPI") -> Device:
    """A whole ``get=1`` reply (ending in a blank line) as a Device."""
    parser = GetParser(ifname, source)
    parser.feed(data)
    return parser.result()


GET_REQUEST = b"get=1\n\n"


def encode_remove(keys: Iterable[str]) -> bytes:
    """One ``set=1`` transaction removing every peer in ``keys`` (base64).

    >>> encode_remove(["q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="]).decode().splitlines()[:3]
    ['set=1', 'public_key=abcdef1234567890abcdef1234567890abcdef1234567890abcdef1234567890', 'remove=true']
    """
    parts = ["set=1\n"]
    for key in keys:
        try:
            raw = binascii.a2b_base64(key, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("not a base64 WireGuard key") from exc
        if len(raw) != KEY_LEN:
            raise ValueError("not a base64 WireGuard key")
        parts.append(f"public_key={raw.hex()}\nremove=true\n")
    parts.append("\n")
    return "".join(parts).encode("ascii")


def parse_errno(data: bytes, source: str = "UAPI") -> int:
    """The errno of a ``set=1`` reply (``errno=0\\n\\n``); WireGuardError if it is not one."""
    text = data.decode("ascii", "replace")
    lines = text.split("\n")
    if len(lines) != 3 or lines[1:] != ["", ""] or not lines[0].startswith("errno="):
        raise WireGuardError(f"{source}: malformed set reply: {text[:80]!r}")
    value = lines[0][len("errno=") :]
    digits = value[1:] if value.startswith("-") else value
    if not digits.isdigit() or len(digits) > 20:
        raise WireGuardError(f"{source}: malformed set reply: {text[:80]!r}")
    return int(value)


def errno_text(code: int) -> str:
    """``errno=-22`` -> ``"errno -22 (Invalid argument)"``."""
    try:
        name = os.strerror(abs(code))
    except ValueError:
        name = "unknown error"
    return f"errno {code} ({name})"


# --- X25519 (RFC 7748), only to derive the device's public key from its private key ----------

_P = 2**255 - 19
_A24 = 121665


def x25519_public(private: bytes) -> bytes:
    """The X25519 public key of a 32-byte private key: scalar multiplication of the base point.

    >>> x25519_public(bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")).hex()
    '8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a'
    """
    if len(private) != KEY_LEN:
        raise ValueError("an X25519 private key is 32 bytes")
    k = bytearray(private)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    scalar = int.from_bytes(k, "little")
    x1, x2, z2, x3, z3 = 9, 1, 0, 9, 1
    swap = 0
    for t in range(254, -1, -1):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_LEN, "little")


# --- the asyncio adapter ----------------------------------------------------------------------


class UapiBackend:
    """Talks to ``<uapi_dir>/<ifname>.sock``; one connection per request."""

    kind = "uapi"

    def __init__(self, uapi_dir: str, *, timeout_s: float = 10.0) -> None:
        self.uapi_dir = uapi_dir
        self.timeout_s = timeout_s
        self._sent: dict[str, socket.socket] = {}

    def socket_path(self, ifname: str) -> str:
        return os.path.join(self.uapi_dir, f"{ifname}.sock")

    def send_get(self, ifname: str) -> None:
        """Send ``ifname``'s get now, blocking only to connect, and leave the reply to the next
        :meth:`get`: the implementation builds it meanwhile (wireguard-go takes ~50 ms for
        10,000 peers, then holds its UAPI lock for reading until the reply is read). A socket
        that cannot be reached is left to :meth:`get`, which says why."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout_s)
            sock.connect(self.socket_path(ifname))
            sock.sendall(GET_REQUEST)
        except OSError:
            sock.close()
            return
        self._sent[ifname] = sock

    async def get(self, ifname: str) -> Device:
        import asyncio

        path = self.socket_path(ifname)
        parser = GetParser(ifname, source=path)
        sent = self._sent.pop(ifname, None)

        async def exchange() -> Device:
            if sent is not None:
                reader, writer = await asyncio.open_unix_connection(sock=sent, limit=_READ_SIZE)
            else:
                reader, writer = await self._connect(ifname)
            try:
                if sent is None:
                    writer.write(GET_REQUEST)
                    await writer.drain()
                while True:
                    chunk = await reader.read(_READ_SIZE)
                    if not chunk:
                        return parser.result()  # raises: the reply ended early
                    if parser.feed(chunk):
                        return parser.result()
            finally:
                writer.close()

        return await self._bounded(exchange(), path, "get")

    async def remove_peers(self, ifname: str, keys: Iterable[str]) -> None:
        """Remove every key in one ``set=1`` transaction (absent keys are not an error)."""
        request = encode_remove(keys)
        if request == b"set=1\n\n":
            return
        path = self.socket_path(ifname)

        async def exchange() -> None:
            reader, writer = await self._connect(ifname)
            try:
                writer.write(request)
                await writer.drain()
                reply = b""
                while not reply.endswith(b"\n\n"):
                    chunk = await reader.read(4096)
                    if not chunk or len(reply) > 4096:
                        break
                    reply += chunk
            finally:
                writer.close()
            code = parse_errno(reply, path)
            if code != 0:
                raise WireGuardError(f"{path}: removing peers from {ifname} failed: {errno_text(code)}")

        await self._bounded(exchange(), path, "set")

    async def _connect(self, ifname: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import asyncio

        path = self.socket_path(ifname)
        try:
            # A big buffer: with the default 64 KiB the transport pauses and resumes reading
            # dozens of times for a large device (a 10,000-peer reply is ~3 MB).
            return await asyncio.open_unix_connection(path, limit=_READ_SIZE)
        except FileNotFoundError as exc:
            raise DeviceNotFound(f"{ifname}: no UAPI socket {path}") from exc
        except ConnectionRefusedError as exc:
            raise DeviceNotFound(
                f"{ifname}: nothing listens on {path} (a stale socket of a stopped wireguard-go or boringtun?)"
            ) from exc
        except PermissionError as exc:
            raise WireGuardError(f"{ifname}: permission denied on {path}; wgagent must run as root") from exc
        except OSError as exc:
            raise WireGuardError(f"{ifname}: cannot connect to {path}: {exc.strerror or exc}") from exc

    async def _bounded(self, coro: Coroutine[Any, Any, T], path: str, op: str) -> T:
        import asyncio

        try:
            return await asyncio.wait_for(coro, self.timeout_s)
        except TimeoutError as exc:
            raise WireGuardError(f"{path}: no complete {op} reply within {self.timeout_s:g} s") from exc
        except ConnectionError as exc:
            raise WireGuardError(f"{path}: connection lost during {op}: {exc.strerror or exc}") from exc
