"""The mitmproxy shell: the only package that imports mitmproxy.

- :mod:`.addon`: :class:`QwenAddon`, the hooks and commands;
- :mod:`.options`: the ``qwen_*`` options;
- :mod:`.scope`: which flows are ours and where tokens may go;
- :mod:`.relay`: the in-process HTTP/1.1 relay;
- :mod:`.forward`: rotation, token swap, failover and translation per request;
- :mod:`.jobs`: the per-request record shared by the hooks and the relay.
"""
