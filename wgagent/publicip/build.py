"""The public IP sources a config enables, built with the clients they share.

Called from the composition root (``wiring.public_ip_sources``) only; the part and the
commands receive the resulting :class:`~wgagent.publicip.sources.SourceSet`.
"""

from __future__ import annotations

from collections.abc import Callable

from wgagent.config import PublicIPConfig
from wgagent.publicip.echo import HttpEchoSource
from wgagent.publicip.httpclient import AiohttpClient
from wgagent.publicip.interface import InterfaceSource
from wgagent.publicip.metadata import DmiData, MetadataSource, identify, read_dmi
from wgagent.publicip.sources import HttpClient, Source, SourceSet, StaticSource
from wgagent.publicip.stun import StunClient, StunSource


def build_source_set(cfg: PublicIPConfig, *, dmi_reader: Callable[[str], DmiData] = read_dmi) -> SourceSet:
    """The sources ``cfg`` enables and their HTTP and STUN clients (closed with the set)."""
    if cfg.static:
        return SourceSet([StaticSource(cfg.static)])
    http = AiohttpClient(cfg.timeout_s)
    stun = StunClient()
    return SourceSet(build_sources(cfg, http=http, stun=stun, dmi_reader=dmi_reader), per_round=[stun], shared=[http])


def build_sources(
    cfg: PublicIPConfig,
    *,
    http: HttpClient,
    stun: StunClient,
    dmi_reader: Callable[[str], DmiData] = read_dmi,
) -> list[Source]:
    """The sources ``cfg`` enables, in report order; only ``static`` when it is set."""
    if cfg.static:
        return [StaticSource(cfg.static)]
    enabled = set(cfg.sources)
    sources: list[Source] = []
    if "interface" in enabled:
        sources.append(InterfaceSource(cfg.timeout_s))
    if "metadata" in enabled and cfg.metadata_provider != "none":
        if cfg.metadata_provider == "auto":
            dmi = dmi_reader(cfg.dmi_dir)
            provider = identify(dmi)
            sources.append(MetadataSource(provider, cfg.metadata_endpoints, http, cfg.timeout_s, detected_from=dmi))
        else:
            sources.append(MetadataSource(cfg.metadata_provider, cfg.metadata_endpoints, http, cfg.timeout_s))
    if "stun" in enabled:
        sources.extend(StunSource(server, stun, cfg.timeout_s) for server in cfg.stun_servers)
    if "http" in enabled:
        sources.extend(HttpEchoSource(url, http, cfg.timeout_s) for url in cfg.http_echo_urls)
    return sources
