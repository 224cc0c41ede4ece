"""``scripts/bench``: what the proxy costs, measured side by side (issue 8).

- :mod:`.procs`: start ``mitmdump`` (with or without the addon) on 127.0.0.1, each
  in its own process group and temporary confdir, and read its memory;
- :mod:`.standin`: the stand-in portal (:class:`~qwen_oauth_mitm.portal.FakePortal`)
  plus a mode whose chunks carry the time they were sent;
- :mod:`.client`: one streamed request with httpx, timed (TTFB, total, per event);
- :mod:`.run`: the measurements, the table and where it is written
  (``python -m scripts.benchlib --help``).
"""
