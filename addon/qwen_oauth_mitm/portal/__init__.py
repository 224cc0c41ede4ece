"""The stand-in Qwen portal for tests and demos (the real free tier has ended).

- :mod:`.chat`: :class:`FakePortal`, ``POST /v1/chat/completions`` on 127.0.0.1,
  accepting tokens issued by :class:`~qwen_oauth_mitm.oauth.fake_server.FakeQwenOAuth`
  (or fixed API keys), with faults injectable per token.
"""

from qwen_oauth_mitm.portal.chat import FakePortal, Fault, PortalRequest

__all__ = ["FakePortal", "Fault", "PortalRequest"]
