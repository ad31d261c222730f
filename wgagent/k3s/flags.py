"""The flags ``k3s agent`` defines: any other key in an agent's config files stops it.

Only ``k3s server`` and ``k3s etcd-snapshot`` drop config-file keys they do not define (k3s
``pkg/configfilearg/defaultparser.go`` ``ValidFlags``, ``parser.go`` ``stripInvalidFlags``);
``k3s agent`` given one exits ``flag provided but not defined: -<key>`` (urfave/cli over Go's
``flag`` package; k3s issues #3142 and #5999). So a server-only key such as
``flannel-backend`` in any file an agent reads is fatal, not skipped.

The list is ``k3s agent``'s flags and their aliases (k3s ``pkg/cli/cmds/agent.go``
``NewAgentCommand``, with the global flags of ``pkg/cli/cmds/root.go`` and ``log.go``), the
same on release-1.29, 1.32, 1.34 and main in 2026 (docs/UPSTREAM.md). Five are from 2024
(``bind-address``, ``enable-pprof``, ``nonroot-devices``, ``node-internal-dns``,
``node-external-dns``): an older agent refuses them too, which this list does not model.

    >>> agent_accepts("node-external-ip"), agent_accepts("flannel-backend")
    (True, False)
"""

from __future__ import annotations

AGENT_FLAGS = frozenset(
    {
        *("config", "c", "debug", "v", "vmodule", "log", "l", "alsologtostderr", "token", "t", "token-file"),
        *("server", "s", "data-dir", "d", "node-name", "with-node-id", "node-label", "node-taint"),
        *("image-credential-provider-bin-dir", "image-credential-provider-config", "selinux", "lb-server-port"),
        *("protect-kernel-defaults", "container-runtime-endpoint", "default-runtime", "image-service-endpoint"),
        *("pause-image", "snapshotter", "private-registry", "disable-default-registry-endpoint", "nonroot-devices"),
        *("airgap-extra-registry", "node-ip", "i", "bind-address", "node-external-ip", "node-internal-dns"),
        *("node-external-dns", "resolv-conf", "flannel-iface", "flannel-conf", "flannel-cni-conf", "kubelet-arg"),
        *("kube-proxy-arg", "enable-pprof", "rootless", "prefer-bundled-bin", "docker", "vpn-auth", "vpn-auth-file"),
        "disable-apiserver-lb",
    }
)


def agent_accepts(key: str) -> bool:
    """Whether ``k3s agent`` defines the flag ``key`` (a config key, without ``+`` or dashes)."""
    return key.removesuffix("+").lstrip("-") in AGENT_FLAGS
