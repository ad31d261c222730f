"""The Kubernetes side: credentials, a small API client, the node watch, the annotation.

    kubeconfig.py  which kubeconfig (by role) and what is in it            (pure)
    backoff.py     capped, jittered exponential backoff                     (pure)
    protocol.py    NodeAPI: what the parts need of the API                  (Protocol)
    request.py     the requests, headers, TLS, retries, errors: stated once (shared)
    client.py      KubeClient: NodeAPI over aiohttp, for the daemon         (adapter)
    oneshot.py     OneShotClient: the node list on http.client, for commands (adapter)
    watch.py       NodeWatch: LIST + WATCH of Node metadata -> ClusterView  (StreamPart)
    annotation.py  AnnotationPart: public-ip-overwrite on the own Node      (Part)

``wiring.kube_clients()`` makes the two clients the parts and commands use: one with the
node's own credential (get/patch its Node), one with a credential that may list and watch
all Nodes, both chosen by the role decided once at start (``wiring.decide_identity``).

``wiring.list_nodes_once()`` (``wgagent gc``) lists with ``oneshot.py`` through
``Seams.kube_lister``: the same request, credential and errors, without aiohttp.

This package imports nothing itself: reading a kubeconfig (``wgagent gc``, ``doctor``) must
not pull in aiohttp, which only ``client.py`` imports.
"""
