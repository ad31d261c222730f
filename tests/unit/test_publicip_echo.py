"""The echo body parser (named cases, fuzzed) and HttpEchoSource over a fake HttpClient."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Mapping
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.echo import ECHO_LIMIT, HttpEchoSource, parse_echo_body, parse_ip_body
from wgagent.publicip.sources import HttpReply

TRACE = (
    b"fl=465f4\nh=www.cloudflare.com\nip=203.0.113.7\nts=1700000000.123\nvisit_scheme=https\n"
    b"uag=wgagent/0.1.0\ncolo=FRA\nsliver=none\nhttp=http/2\nloc=DE\ntls=TLSv1.3\nsni=plaintext\nwarp=off\n"
    b"gateway=off\nrbi=off\nkex=X25519MLKEM768\n"
)

GOOD = {
    "plain IPv4 with newline (ipify, checkip)": (b"203.0.113.7\n", "203.0.113.7"),
    "plain IPv4 without newline": (b"203.0.113.7", "203.0.113.7"),
    "CRLF and spaces around": (b"  203.0.113.7\r\n", "203.0.113.7"),
    "plain IPv6 (icanhazip over v6)": (b"2001:db8::7\n", "2001:db8::7"),
    "IPv4-mapped IPv6 becomes IPv4": (b"::ffff:203.0.113.7\n", "203.0.113.7"),
    "Cloudflare trace": (TRACE, "203.0.113.7"),
    "Cloudflare trace with CRLF": (TRACE.replace(b"\n", b"\r\n"), "203.0.113.7"),
}


@pytest.mark.parametrize(("body", "ip"), GOOD.values(), ids=GOOD.keys())
def test_parse_echo_body(body: bytes, ip: str) -> None:
    assert parse_echo_body(body) == ip_address(ip)


BAD = {
    "empty": (b"", "not an IP address"),
    "HTML page": (b"<html><body>Your IP is 203.0.113.7</body></html>", "not an IP address"),
    "JSON": (b'{"ip":"203.0.113.7"}', "not an IP address"),
    "two addresses": (b"203.0.113.7\n198.51.100.1\n", "neither one address nor key=value"),
    "address and port": (b"203.0.113.7:443", "not an IP address"),
    "leading zeros": (b"203.000.113.7", "not an IP address"),
    "octal-looking": (b"010.1.1.1", "not an IP address"),
    "scope ID": (b"fe80::1%eth0", "not an IP address"),
    "a space inside": (b"203.0.113. 7", "not an IP address"),
    "a hostname": (b"example.com", "not an IP address"),
    "not ASCII": ("203.0.113.７".encode(), "not ASCII"),
    "NUL byte": (b"203.0.113.7\x00", "not an IP address"),
    "trace without ip=": (b"fl=1\nh=x\n", "0 'ip=' lines"),
    "trace with two ip= lines": (b"ip=203.0.113.7\nip=198.51.100.1\n", "2 'ip=' lines"),
    "trace with a broken line": (b"ip=203.0.113.7\nthis is not a pair\n", "neither one address"),
    "trace with a bad address": (b"h=x\nip=not-an-ip\n", "not an IP address"),
    "too large": (b"203.0.113.7\n" + b" " * ECHO_LIMIT, f"larger than {ECHO_LIMIT}"),
}


@pytest.mark.parametrize(("body", "message"), BAD.values(), ids=BAD.keys())
def test_parse_echo_body_rejects(body: bytes, message: str) -> None:
    with pytest.raises(MalformedReply, match=message):
        parse_echo_body(body)


def test_metadata_bodies_are_parsed_just_as_strictly() -> None:
    assert parse_ip_body(b"203.0.113.7\n") == ip_address("203.0.113.7")
    with pytest.raises(MalformedReply):
        parse_ip_body(b"<html>")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=ECHO_LIMIT + 16))
def test_fuzz_random_bytes_only_ever_raise_malformed_reply(body: bytes) -> None:
    with contextlib.suppress(MalformedReply):
        parse_echo_body(body)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="0123456789abcdefABCDEF:.=\n\r ipx%[]/", max_size=80))
def test_fuzz_address_like_text_only_ever_raises_malformed_reply(text: str) -> None:
    """Bytes that look almost like addresses or trace lines reach deeper into the parser."""
    with contextlib.suppress(MalformedReply):
        parse_echo_body(text.encode())


# --- HttpEchoSource over a fake client ----------------------------------------------------------


class FakeHttp:
    def __init__(self, replies: Mapping[int, HttpReply | Exception]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, str, int, dict[str, str]]] = []

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, limit: int, family: int = 0
    ) -> HttpReply:
        self.calls.append((method, url, family, dict(headers or {})))
        reply = self.replies[family]
        if isinstance(reply, Exception):
            raise reply
        return reply


async def test_a_literal_host_is_asked_over_its_family_only() -> None:
    http = FakeHttp({socket.AF_INET: HttpReply(200, b"203.0.113.7\n", ip_address("198.51.100.1"))})
    answers = await HttpEchoSource("http://198.51.100.1/", http, 2.0).observe()
    assert answers is not None and [(str(a.ip), str(a.server)) for a in answers] == [("203.0.113.7", "198.51.100.1")]
    assert [(c[0], c[2]) for c in http.calls] == [("GET", socket.AF_INET)]


async def test_a_name_is_asked_over_both_families() -> None:
    http = FakeHttp(
        {
            socket.AF_INET: HttpReply(200, b"203.0.113.7\n"),
            socket.AF_INET6: HttpReply(200, b"2001:db8::7\n"),
        }
    )
    answers = await HttpEchoSource("https://echo.example/", http, 2.0).observe()
    assert answers is not None and sorted(str(a.ip) for a in answers) == ["2001:db8::7", "203.0.113.7"]


async def test_one_family_failing_is_fine_when_the_other_answers() -> None:
    http = FakeHttp(
        {socket.AF_INET: HttpReply(200, b"203.0.113.7\n"), socket.AF_INET6: SourceError("Network is unreachable")}
    )
    answers = await HttpEchoSource("https://echo.example/", http, 2.0).observe()
    assert answers is not None and [str(a.ip) for a in answers] == ["203.0.113.7"]


async def test_both_families_failing_names_both() -> None:
    http = FakeHttp({socket.AF_INET: SourceError("refused"), socket.AF_INET6: SourceError("unreachable")})
    with pytest.raises(SourceError, match=r"ipv4: refused; ipv6: unreachable"):
        await HttpEchoSource("https://echo.example/", http, 2.0).observe()


STATUS = {
    "a redirect is not followed": (HttpReply(302, b"", headers={"location": "http://evil/"}), "302 to http://evil/"),
    "a server error": (HttpReply(503, b"203.0.113.7"), "HTTP status 503"),
    "no content": (HttpReply(204, b""), "HTTP status 204"),
}


@pytest.mark.parametrize(("reply", "message"), STATUS.values(), ids=STATUS.keys())
async def test_only_status_200_counts(reply: HttpReply, message: str) -> None:
    http = FakeHttp({socket.AF_INET: reply})
    with pytest.raises(SourceError, match=message):
        await HttpEchoSource("http://198.51.100.1/", http, 2.0).observe()


async def test_echo_requests_ask_for_plain_text_within_the_cap() -> None:
    http = FakeHttp({socket.AF_INET: HttpReply(200, b"203.0.113.7")})
    await HttpEchoSource("http://198.51.100.1/ip", http, 2.0).observe()
    (call,) = http.calls
    assert call[1] == "http://198.51.100.1/ip" and call[3] == {"Accept": "text/plain"}
