"""The stand-in Qwen portal for tests and demos (the real free tier has ended).

- :mod:`.chat`: :class:`FakePortal`, ``POST /v1/chat/completions`` on 127.0.0.1,
  accepting tokens issued by :class:`~qwen_oauth_mitm.oauth.fake_server.FakeQwenOAuth`
  (or fixed API keys), with faults injectable per token and scripted replies
  (:class:`ToolCall`, :class:`Text`) for requests that offer tools.
- :mod:`.standin`: :class:`StandIn`, the whole portal on one port (OAuth + chat +
  an admin API for faults and counters); ``python -m qwen_oauth_mitm.portal`` runs
  one and prints its URL.
"""

from qwen_oauth_mitm.portal.chat import (
    FakePortal,
    Fault,
    PortalRequest,
    Reply,
    Text,
    ToolCall,
)
from qwen_oauth_mitm.portal.standin import StandIn

__all__ = [
    "FakePortal",
    "Fault",
    "PortalRequest",
    "Reply",
    "StandIn",
    "Text",
    "ToolCall",
]
