"""qwen-oauth-mitm: Responses API clients on the Qwen portal, through your accounts.

Layers, imported one way only (pure core <- shell):

- pure core (no mitmproxy, no I/O, time passed in): ``config``, ``translate``,
  ``rotation``, ``oauth.protocol``;
- I/O around it: ``paths``, ``store`` (state files), ``oauth.client`` (HTTP);
- shells: ``cli`` (the ``qwen-oauth`` command) and ``proxy`` (the mitmproxy addon).
"""

__version__ = "0.1.0"
