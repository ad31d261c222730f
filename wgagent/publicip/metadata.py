"""Cloud metadata services: which cloud this is (from DMI), and its public address.

Detection follows cloud-init's way: read the DMI identity files once
(``read_dmi()``), then decide with a pure function::

    >>> identify(DmiData(product_name="Alibaba Cloud ECS"))
    'aliyun'
    >>> identify(DmiData(sys_vendor="QEMU")) is None
    True

Providers (``FETCHERS``), with the paths and headers their documentation gives; every
base URL comes from ``public_ip.metadata_endpoints``:

    aliyun        [PUT /latest/api/token, X-aliyun-ecs-metadata-token-ttl-seconds: optional]
                  GET /latest/meta-data/eipv4, then /latest/meta-data/public-ipv4
    aws           PUT /latest/api/token (X-aws-ec2-metadata-token-ttl-seconds; 403 = IMDS off)
                  GET /latest/meta-data/public-ipv4 with X-aws-ec2-metadata-token
    gcp           GET /computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip
                  with Metadata-Flavor: Google (and the answer must carry it too)
    azure         GET /metadata/instance/network?api-version=2021-02-01 with Metadata: true;
                  publicIpAddress is empty for Standard-SKU addresses: then not applicable
    digitalocean  GET /metadata/v1/interfaces/public/0/ipv4/address (and ipv6/address)
    hetzner       GET /hetzner/v1/metadata/public-ipv4
    vultr         GET /v1.json, the interface whose network-type is "public"
    tencent       GET /latest/meta-data/public-ipv4

A 404 means "no public address here" (not applicable); any other status, a connection
failure or a malformed body means the service is broken. Oracle Cloud is recognised but
publishes no public address. Requests bypass proxies and never follow redirects (see
``httpclient.py``); the tokens are short-lived, kept only in memory and never logged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wgagent import fsutil, logs
from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.echo import parse_ip, parse_ip_body
from wgagent.publicip.model import Answer, IPAddress
from wgagent.publicip.sources import HttpClient, HttpReply

TEXT_LIMIT = 4096
JSON_LIMIT = 1 << 20
"""Vultr's v1.json carries user-data too."""
TOKEN_TTL_S = 21600
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"


# --- detection -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DmiData:
    """The DMI identity strings (empty when absent or unreadable)."""

    sys_vendor: str = ""
    product_name: str = ""
    chassis_asset_tag: str = ""
    product_uuid: str = ""


def read_dmi(dmi_dir: str) -> DmiData:
    """Read the identity files under ``dmi_dir`` (``/sys/class/dmi/id``) once."""

    def read(name: str) -> str:
        # product_uuid is root-only; no DMI at all on some ARM boards: both read as ""
        return (fsutil.peek_text(os.path.join(dmi_dir, name), 256) or "").strip()

    return DmiData(*(read(name) for name in ("sys_vendor", "product_name", "chassis_asset_tag", "product_uuid")))


def identify(dmi: DmiData) -> str | None:
    """The cloud the DMI strings name, as a ``metadata_provider`` value (or "oracle")."""
    if dmi.product_name.startswith("Alibaba Cloud ECS"):
        return "aliyun"
    if dmi.product_name.startswith("Google Compute Engine") or dmi.product_name == "Google":
        return "gcp"
    if dmi.chassis_asset_tag == AZURE_ASSET_TAG:
        return "azure"
    if dmi.chassis_asset_tag == "OracleCloud.com":
        return "oracle"
    if dmi.sys_vendor == "Amazon EC2" or dmi.product_uuid.lower().startswith("ec2"):
        return "aws"
    vendors = {"DigitalOcean": "digitalocean", "Hetzner": "hetzner", "Vultr": "vultr", "Tencent Cloud": "tencent"}
    return vendors.get(dmi.sys_vendor)


# --- providers ---------------------------------------------------------------------------------


@dataclass
class Context:
    """What a provider's fetch needs: the client, the base URL, a token cache."""

    http: HttpClient
    base: str
    tokens: _Tokens
    why_not: str = ""


class _Tokens:
    """IMDSv2-style session tokens, reused until shortly before they expire."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._token: str | None = None
        self._expires = 0.0

    def get(self) -> str | None:
        return self._token if self._token is not None and self._monotonic() < self._expires else None

    def put(self, token: str) -> None:
        logs.add_secret(token)
        self._token = token
        self._expires = self._monotonic() + TOKEN_TTL_S * 0.9

    def drop(self) -> None:
        self._token = None


Fetcher = Callable[[Context], Awaitable[list[IPAddress] | None]]


async def _get(ctx: Context, path: str, headers: Mapping[str, str] | None = None, limit: int = TEXT_LIMIT) -> HttpReply:
    reply = await ctx.http.request("GET", ctx.base + path, headers=headers, limit=limit)
    _no_redirect(reply, path)
    return reply


def _no_redirect(reply: HttpReply, path: str) -> None:
    if 300 <= reply.status < 400:
        raise SourceError(f"{path}: redirect ({reply.status}) not followed")


def _ip_or_none(reply: HttpReply, path: str) -> IPAddress | None:
    """200 -> the address (an empty body: none); 404 -> none; else SourceError."""
    if reply.status == 404:
        return None
    if reply.status != 200:
        raise SourceError(f"{path}: HTTP status {reply.status}")
    if not reply.body.strip():
        return None
    try:
        return parse_ip_body(reply.body)
    except MalformedReply as exc:
        raise MalformedReply(f"{path}: {exc}") from None


def _token(reply: HttpReply) -> str:
    try:
        token = reply.body.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token or len(token) > 1024 or not token.isprintable() or " " in token:
        raise MalformedReply("the metadata token is not a printable string of at most 1024 bytes")
    return token


async def _token_flow(ctx: Context, ttl_header: str, *, required: bool) -> str | None:
    """PUT /latest/api/token; the token, or None when the service has tokens off (403) or none."""
    cached = ctx.tokens.get()
    if cached is not None:
        return cached
    headers = {ttl_header: str(TOKEN_TTL_S)}
    reply = await ctx.http.request("PUT", ctx.base + "/latest/api/token", headers=headers, limit=TEXT_LIMIT)
    _no_redirect(reply, "/latest/api/token")
    if reply.status == 200:
        token = _token(reply)
        ctx.tokens.put(token)
        return token
    if required and reply.status != 403:
        raise SourceError(f"/latest/api/token: HTTP status {reply.status}")
    return None


async def _get_with_token(ctx: Context, path: str, header: str, token: str | None, ttl_header: str) -> HttpReply:
    """GET with the token; a 401 on a cached token (the service restarted) gets one new try."""
    reply = await _get(ctx, path, {header: token} if token else None)
    if reply.status == 401 and token:
        ctx.tokens.drop()
        token = await _token_flow(ctx, ttl_header, required=False)
        if token:
            reply = await _get(ctx, path, {header: token})
    return reply


async def fetch_aws(ctx: Context) -> list[IPAddress] | None:
    token = await _token_flow(ctx, "X-aws-ec2-metadata-token-ttl-seconds", required=True)
    if token is None:
        ctx.why_not = "the instance metadata service is off (the token request was refused with 403)"
        return None
    path = "/latest/meta-data/public-ipv4"
    reply = await _get_with_token(ctx, path, "X-aws-ec2-metadata-token", token, "X-aws-ec2-metadata-token-ttl-seconds")
    return _found(ctx, _ip_or_none(reply, path))


async def fetch_aliyun(ctx: Context) -> list[IPAddress] | None:
    # The token is optional (required only in the "hardened" mode): ask, use one if given.
    ttl_header = "X-aliyun-ecs-metadata-token-ttl-seconds"
    token = await _token_flow(ctx, ttl_header, required=False)
    for path in ("/latest/meta-data/eipv4", "/latest/meta-data/public-ipv4"):
        reply = await _get_with_token(ctx, path, "X-aliyun-ecs-metadata-token", token, ttl_header)
        ip = _ip_or_none(reply, path)
        if ip is not None:
            return [ip]
    return _found(ctx, None)


async def fetch_gcp(ctx: Context) -> list[IPAddress] | None:
    path = "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip"
    reply = await _get(ctx, path, {"Metadata-Flavor": "Google"})
    if reply.status == 200 and reply.headers.get("metadata-flavor") != "Google":
        raise MalformedReply(f"{path}: the answer lacks 'Metadata-Flavor: Google'; not the GCP metadata server")
    return _found(ctx, _ip_or_none(reply, path))


async def fetch_azure(ctx: Context) -> list[IPAddress] | None:
    path = "/metadata/instance/network?api-version=2021-02-01"
    reply = await _get(ctx, path, {"Metadata": "true"}, limit=JSON_LIMIT)
    if reply.status != 200:
        raise SourceError(f"{path}: HTTP status {reply.status}")
    data = _json(reply, path)
    found: dict[int, IPAddress] = {}
    for interface in _list(data.get("interface")):
        for family in ("ipv4", "ipv6"):
            for entry in _list(_dict(_dict(interface).get(family)).get("ipAddress")):
                text = _dict(entry).get("publicIpAddress")
                if isinstance(text, str) and text.strip():
                    ip = parse_ip(text.strip())
                    found.setdefault(ip.version, ip)
    if not found:
        ctx.why_not = "publicIpAddress is empty (Standard-SKU public IPs are not listed by Azure IMDS)"
        return None
    return [found[v] for v in sorted(found)]


async def fetch_digitalocean(ctx: Context) -> list[IPAddress] | None:
    found = []
    for family in ("ipv4", "ipv6"):
        path = f"/metadata/v1/interfaces/public/0/{family}/address"
        ip = _ip_or_none(await _get(ctx, path), path)
        if ip is not None:
            found.append(ip)
    return found or _found(ctx, None)


async def fetch_hetzner(ctx: Context) -> list[IPAddress] | None:
    path = "/hetzner/v1/metadata/public-ipv4"
    return _found(ctx, _ip_or_none(await _get(ctx, path), path))


async def fetch_tencent(ctx: Context) -> list[IPAddress] | None:
    path = "/latest/meta-data/public-ipv4"
    return _found(ctx, _ip_or_none(await _get(ctx, path), path))


async def fetch_vultr(ctx: Context) -> list[IPAddress] | None:
    path = "/v1.json"
    reply = await _get(ctx, path, limit=JSON_LIMIT)
    if reply.status != 200:
        raise SourceError(f"{path}: HTTP status {reply.status}")
    found: dict[int, IPAddress] = {}
    for interface in _list(_json(reply, path).get("interfaces")):
        interface = _dict(interface)
        if interface.get("network-type") != "public":
            continue
        for family in ("ipv4", "ipv6"):
            text = _dict(interface.get(family)).get("address")
            if isinstance(text, str) and text.strip():
                ip = parse_ip(text.strip())
                found.setdefault(ip.version, ip)
    if not found:
        ctx.why_not = "no public interface address in v1.json"
        return None
    return [found[v] for v in sorted(found)]


def _found(ctx: Context, ip: IPAddress | None) -> list[IPAddress] | None:
    if ip is None:
        ctx.why_not = ctx.why_not or "the metadata service knows no public address for this instance"
        return None
    return [ip]


def _json(reply: HttpReply, path: str) -> dict[str, Any]:
    try:
        data = json.loads(reply.body)
    except ValueError:
        raise MalformedReply(f"{path}: the body is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedReply(f"{path}: the JSON is not an object")
    return data


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


FETCHERS: Mapping[str, Fetcher] = {
    "aliyun": fetch_aliyun,
    "aws": fetch_aws,
    "gcp": fetch_gcp,
    "azure": fetch_azure,
    "digitalocean": fetch_digitalocean,
    "hetzner": fetch_hetzner,
    "vultr": fetch_vultr,
    "tencent": fetch_tencent,
}


class MetadataSource:
    """The metadata service of one provider, detected from DMI or configured.

    ``provider`` None means no cloud was detected: the source is then not applicable,
    and says why (the DMI strings it saw).
    """

    kind = "metadata"

    def __init__(
        self,
        provider: str | None,
        endpoints: Mapping[str, str],
        http: HttpClient,
        timeout_s: float,
        *,
        detected_from: DmiData | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.name = f"metadata:{provider}" if provider else "metadata"
        self.timeout_s = timeout_s
        self.why_not = ""
        self._endpoints = endpoints
        self._http = http
        self._dmi = detected_from
        self._tokens = _Tokens(monotonic)

    async def observe(self) -> Sequence[Answer] | None:
        if self.provider is None:
            seen = self._dmi or DmiData()
            self.why_not = (
                f"no cloud recognised from DMI (sys_vendor {seen.sys_vendor!r}, product_name {seen.product_name!r}); "
                "set public_ip.metadata_provider to use one"
            )
            return None
        fetch = FETCHERS.get(self.provider)
        if fetch is None:
            self.why_not = f"{self.provider}: its metadata service publishes no public address"
            return None
        ctx = Context(self._http, self._endpoints[self.provider].rstrip("/"), self._tokens)
        ips = await fetch(ctx)
        self.why_not = ctx.why_not
        if not ips:
            return None
        return [Answer(ip, note=self.provider) for ip in ips]
