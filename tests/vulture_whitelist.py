"""Names vulture cannot see used: called by a framework, not by our code.

The lint step runs ``vulture`` with its settings in pyproject.toml ([tool.vulture]): product
code, tests and benchmarks together, so code used only by tests counts as used (fakes, the
reference generators the docs are checked against). Autouse fixtures, pytest hooks and
http.server's ``do_<METHOD>`` handlers are excluded there by rule; the names here are called
by asyncio or the standard library. Add a name here only with the caller that makes it live;
anything else vulture reports is dead and goes.
"""

import http.server

from wgagent.publicip.stun import _Endpoint

_called_by_the_framework = (
    _Endpoint.error_received,  # asyncio.DatagramProtocol: the loop calls it on an ICMP error
    http.server.BaseHTTPRequestHandler.log_message,  # overridden by test stand-ins to keep quiet
)
