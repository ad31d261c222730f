"""Metadata: DMI detection (named cases), every provider against its stand-in, and failures."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.support import ipservices
from wgagent import logs
from wgagent.config import DEFAULT_METADATA_ENDPOINTS, METADATA_PROVIDERS
from wgagent.errors import MalformedReply, SourceError
from wgagent.publicip.httpclient import AiohttpClient
from wgagent.publicip.metadata import AZURE_ASSET_TAG, FETCHERS, DmiData, MetadataSource, identify, read_dmi
from wgagent.publicip.sources import HttpReply

IDENTIFY = {
    "Alibaba Cloud ECS": (DmiData(sys_vendor="Alibaba Cloud", product_name="Alibaba Cloud ECS"), "aliyun"),
    "AWS Nitro": (DmiData(sys_vendor="Amazon EC2", product_name="m5.large"), "aws"),
    "AWS Xen, by UUID": (DmiData(sys_vendor="Xen", product_uuid="EC2E1916-9099-7CAF-FD21-012345ABCDEF"), "aws"),
    "GCP": (DmiData(sys_vendor="Google", product_name="Google Compute Engine"), "gcp"),
    "Azure": (DmiData(sys_vendor="Microsoft Corporation", chassis_asset_tag=AZURE_ASSET_TAG), "azure"),
    "DigitalOcean": (DmiData(sys_vendor="DigitalOcean", product_name="Droplet"), "digitalocean"),
    "Hetzner": (DmiData(sys_vendor="Hetzner", product_name="vServer"), "hetzner"),
    "Vultr": (DmiData(sys_vendor="Vultr", product_name="VC2"), "vultr"),
    "Tencent": (DmiData(sys_vendor="Tencent Cloud", product_name="CVM"), "tencent"),
    "Oracle": (DmiData(sys_vendor="QEMU", chassis_asset_tag="OracleCloud.com"), "oracle"),
    "a plain KVM guest": (DmiData(sys_vendor="QEMU", product_name="Standard PC (Q35 + ICH9, 2009)"), None),
    "Hyper-V that is not Azure": (DmiData(sys_vendor="Microsoft Corporation", chassis_asset_tag="None"), None),
    "a UUID merely containing ec2": (DmiData(product_uuid="4c4c4544-ec20-0000"), None),
    "nothing readable": (DmiData(), None),
}


@pytest.mark.parametrize(("dmi", "provider"), IDENTIFY.values(), ids=IDENTIFY.keys())
def test_identify(dmi: DmiData, provider: str | None) -> None:
    assert identify(dmi) == provider


def test_read_dmi_reads_the_files_once_and_tolerates_missing_ones(tmp_path: Any) -> None:
    (tmp_path / "sys_vendor").write_text("Hetzner\n")
    (tmp_path / "product_name").write_text("vServer\n")
    dmi = read_dmi(str(tmp_path))
    assert dmi == DmiData(sys_vendor="Hetzner", product_name="vServer")
    assert identify(dmi) == "hetzner"
    assert read_dmi(str(tmp_path / "absent")) == DmiData()


def test_every_configurable_provider_has_a_fetcher() -> None:
    assert set(FETCHERS) == set(METADATA_PROVIDERS)


# --- every provider against its stand-in, over real HTTP on loopback -------------------------


async def fetch(provider: str, **spec: Any) -> tuple[MetadataSource, list[str] | None, ipservices.Services]:
    services = await ipservices.start([{"kind": "metadata", "provider": provider, "listen": "127.0.0.1:0", **spec}])
    endpoints = dict(DEFAULT_METADATA_ENDPOINTS)
    endpoints[provider] = f"http://127.0.0.1:{services.port(provider)}"
    http = AiohttpClient(2.0)
    source = MetadataSource(provider, endpoints, http, 2.0)
    try:
        answers = await source.observe()
    finally:
        await http.close()
        await services.close()
    return source, None if answers is None else [str(a.ip) for a in answers], services


PROVIDERS = {
    "aliyun, public-ipv4": ("aliyun", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
    "aliyun, an EIP first": ("aliyun", {"ipv4": "203.0.113.1", "eip": "203.0.113.50"}, ["203.0.113.50"]),
    "aliyun, hardened mode needs the token": ("aliyun", {"ipv4": "203.0.113.1", "hardened": True}, ["203.0.113.1"]),
    "aliyun without token support": ("aliyun", {"ipv4": "203.0.113.1", "imds": "off"}, ["203.0.113.1"]),
    "aws IMDSv2": ("aws", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
    "gcp": ("gcp", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
    "azure, basic SKU": ("azure", {"ipv4": "203.0.113.1", "ipv6": "2001:db8::1"}, ["203.0.113.1", "2001:db8::1"]),
    "digitalocean, both families": (
        "digitalocean",
        {"ipv4": "203.0.113.1", "ipv6": "2001:db8::1"},
        ["203.0.113.1", "2001:db8::1"],
    ),
    "digitalocean, no IPv6": ("digitalocean", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
    "hetzner": ("hetzner", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
    "vultr, the public interface": ("vultr", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
    "tencent": ("tencent", {"ipv4": "203.0.113.1"}, ["203.0.113.1"]),
}


@pytest.mark.parametrize(("provider", "spec", "expected"), PROVIDERS.values(), ids=PROVIDERS.keys())
async def test_provider_against_its_stand_in(provider: str, spec: dict[str, Any], expected: list[str]) -> None:
    source, answers, _ = await fetch(provider, **spec)
    assert answers == expected
    assert source.name == f"metadata:{provider}"


NOT_APPLICABLE = {
    "aws with IMDS switched off (403 on the token)": ("aws", {"imds": "off"}, "service is off"),
    "aws without a public IPv4": ("aws", {}, "no public address"),
    "azure Standard SKU (empty publicIpAddress)": ("azure", {"ipv4": ""}, "Standard-SKU"),
    "gcp without an access config": ("gcp", {}, "no public address"),
    "aliyun without EIP or public IP": ("aliyun", {}, "no public address"),
    "vultr without a public interface address": ("vultr", {}, "no public interface address"),
}


@pytest.mark.parametrize(("provider", "spec", "why"), NOT_APPLICABLE.values(), ids=NOT_APPLICABLE.keys())
async def test_provider_not_applicable(provider: str, spec: dict[str, Any], why: str) -> None:
    source, answers, _ = await fetch(provider, **spec)
    assert answers is None
    assert why in source.why_not


async def test_aws_sends_the_imdsv2_headers_in_order() -> None:
    _, answers, services = await fetch("aws", ipv4="203.0.113.1")
    assert answers == ["203.0.113.1"]
    reqs = services["aws"].requests
    assert [(r.method, r.path) for r in reqs] == [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/public-ipv4"),
    ]
    assert reqs[0].headers["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    assert reqs[1].headers["x-aws-ec2-metadata-token"] in services["aws"].tokens
    assert "x-forwarded-for" not in reqs[0].headers


async def test_the_aws_stand_in_refuses_a_request_without_token() -> None:
    """The lab relies on the stand-in enforcing IMDSv2, so that success proves the token flow."""
    services = await ipservices.start(
        [{"kind": "metadata", "provider": "aws", "listen": "127.0.0.1:0", "ipv4": "203.0.113.1"}]
    )
    http = AiohttpClient(2.0)
    try:
        base = f"http://127.0.0.1:{services.port('aws')}"
        reply = await http.request("GET", base + "/latest/meta-data/public-ipv4", limit=100)
    finally:
        await http.close()
        await services.close()
    assert reply.status == 401


async def test_gcp_and_azure_send_their_headers() -> None:
    _, _, gcp = await fetch("gcp", ipv4="203.0.113.1")
    _, _, azure = await fetch("azure", ipv4="203.0.113.1")
    assert gcp["gcp"].requests[0].headers["metadata-flavor"] == "Google"
    assert azure["azure"].requests[0].headers["metadata"] == "true"
    assert azure["azure"].requests[0].path == "/metadata/instance/network?api-version=2021-02-01"


async def test_a_token_is_reused_across_rounds_and_renewed_after_a_401() -> None:
    services = await ipservices.start(
        [{"kind": "metadata", "provider": "aws", "listen": "127.0.0.1:0", "ipv4": "203.0.113.1"}]
    )
    endpoints = {"aws": f"http://127.0.0.1:{services.port('aws')}"}
    http = AiohttpClient(2.0)
    source = MetadataSource("aws", endpoints, http, 2.0)
    try:
        await source.observe()
        await source.observe()
        services["aws"].tokens.clear()  # the service restarted: old tokens are invalid
        answers = await source.observe()
    finally:
        await http.close()
        await services.close()
    assert answers is not None and str(answers[0].ip) == "203.0.113.1"
    methods = [r.method for r in services["aws"].requests]
    assert methods == ["PUT", "GET", "GET", "GET", "PUT", "GET"]


async def test_tokens_never_reach_a_log_line() -> None:
    services = await ipservices.start(
        [{"kind": "metadata", "provider": "aws", "listen": "127.0.0.1:0", "ipv4": "203.0.113.1"}]
    )
    http = AiohttpClient(2.0)
    try:
        await MetadataSource("aws", {"aws": f"http://127.0.0.1:{services.port('aws')}"}, http, 2.0).observe()
    finally:
        await http.close()
        await services.close()
    (token,) = services["aws"].tokens
    assert logs.redact(f"token was {token}") == "token was <redacted>"


# --- failures, over a fake client -----------------------------------------------------------


class Scripted:
    """Answers by (method, path); records the calls."""

    def __init__(self, replies: Mapping[tuple[str, str], HttpReply]) -> None:
        self.replies = replies
        self.calls: list[tuple[str, str]] = []

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str] | None = None, limit: int, family: int = 0
    ) -> HttpReply:
        path = url.removeprefix("http://md")
        self.calls.append((method, path))
        return self.replies.get((method, path), HttpReply(404, b""))


def source(provider: str, replies: Mapping[tuple[str, str], HttpReply]) -> MetadataSource:
    return MetadataSource(provider, {provider: "http://md"}, Scripted(replies), 2.0)


HETZNER = ("GET", "/hetzner/v1/metadata/public-ipv4")
FAILURES = {
    "a server error": ("hetzner", {HETZNER: HttpReply(500, b"oops")}, SourceError, "HTTP status 500"),
    "a redirect is not followed": ("hetzner", {HETZNER: HttpReply(301, b"")}, SourceError, "redirect"),
    "an HTML body": ("hetzner", {HETZNER: HttpReply(200, b"<html>hi</html>")}, MalformedReply, "not an IP"),
    "an AWS token request failing otherwise than 403": (
        "aws",
        {("PUT", "/latest/api/token"): HttpReply(500, b"")},
        SourceError,
        "api/token: HTTP status 500",
    ),
    "an AWS token that is not printable": (
        "aws",
        {("PUT", "/latest/api/token"): HttpReply(200, b"tok\x00en")},
        MalformedReply,
        "token",
    ),
    "Azure answering something else than JSON": (
        "azure",
        {("GET", "/metadata/instance/network?api-version=2021-02-01"): HttpReply(200, b"<html>")},
        MalformedReply,
        "not JSON",
    ),
    "a GCP answer without Metadata-Flavor (not the real server)": (
        "gcp",
        {
            (
                "GET",
                "/computeMetadata/v1/instance/network-interfaces/0/access-configs/0/external-ip",
            ): HttpReply(200, b"203.0.113.1")
        },
        MalformedReply,
        "Metadata-Flavor",
    ),
}


@pytest.mark.parametrize(("provider", "replies", "error", "message"), FAILURES.values(), ids=FAILURES.keys())
async def test_provider_failures(
    provider: str, replies: Mapping[tuple[str, str], HttpReply], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await source(provider, replies).observe()


async def test_an_empty_200_means_no_public_address() -> None:
    src = source("hetzner", {HETZNER: HttpReply(200, b"\n")})
    assert await src.observe() is None


async def test_no_cloud_detected_says_what_dmi_showed() -> None:
    src = MetadataSource(None, DEFAULT_METADATA_ENDPOINTS, Scripted({}), 2.0, detected_from=DmiData(sys_vendor="QEMU"))
    assert await src.observe() is None
    assert "QEMU" in src.why_not and "metadata_provider" in src.why_not
    assert src.name == "metadata"


async def test_oracle_is_recognised_but_has_no_public_address() -> None:
    http = Scripted({})
    src = MetadataSource("oracle", DEFAULT_METADATA_ENDPOINTS, http, 2.0)
    assert await src.observe() is None
    assert "publishes no public address" in src.why_not
    assert http.calls == []
