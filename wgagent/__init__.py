"""wgagent: keeps a k3s node's flannel-over-WireGuard networking right, by itself."""

__version__ = "0.1.0"
