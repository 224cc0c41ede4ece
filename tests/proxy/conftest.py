"""Proxy tests: import mitmproxy's test helpers once, past a third-party warning.

mitmproxy imports ldap3, which touches names pyasn1 deprecated; under
``filterwarnings=error`` that import would fail collection. The warning is not
ours and not about our use, so it is silenced for that one import only.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.addons  # noqa: F401
