"""Names vulture cannot see used: called by a framework, not by our code.

The lint step runs ``vulture wgagent tests bench tests/vulture_whitelist.py --min-confidence 60
--ignore-decorators @pytest.fixture --ignore-names 'pytest_*'`` (scripts/test): product code,
tests and benchmarks together, so code used only by tests counts as used (fakes, the reference
generators the docs are checked against). Autouse fixtures and pytest hooks are called by
pytest; everything here is called by asyncio. Add a name here only with the caller that makes
it live; anything else vulture reports is dead and goes.
"""

from wgagent.publicip.stun import _Endpoint

_called_by_asyncio = (
    _Endpoint.error_received,  # asyncio.DatagramProtocol: the loop calls it on an ICMP error
)
