"""The demo's client side (run by ``scripts/demo``).

- ``ask PROXY_PORT CA PROMPT``: a streamed Responses request with the ``openai`` SDK
  to ``https://portal.qwen.ai/v1`` through the proxy, trusting its CA; prints the
  answer as it streams, then the usage line.
- ``fault STAND_IN_URL JSON``: ``POST /admin/faults`` on the stand-in.
- ``seen STAND_IN_URL [N]``: the last N requests the stand-in received, one a line.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

import openai


def ask(port: str, ca: str, prompt: str) -> int:
    http = openai.DefaultHttpxClient(
        proxy=f"http://127.0.0.1:{port}", verify=ca, timeout=30, trust_env=False
    )
    client = openai.OpenAI(
        base_url="https://portal.qwen.ai/v1",
        api_key="not-used-the-proxy-puts-in-the-account-token",
        http_client=http,
        max_retries=0,
    )
    out = sys.stdout
    with client, client.responses.stream(model="coder-model", input=prompt) as stream:
        out.write("   answer: ")
        for event in stream:
            if event.type == "response.output_text.delta":
                out.write(event.delta)
                out.flush()
        final = stream.get_final_response()
    out.write("\n")
    usage = final.usage
    if usage is not None:
        out.write(
            f"   usage: {usage.input_tokens} input tokens "
            f"({usage.input_tokens_details.cached_tokens} cached), "
            f"{usage.output_tokens} output tokens; status {final.status}\n"
        )
    return 0 if final.status == "completed" else 1


def _call(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as answer:
        return json.loads(answer.read())


def fault(base: str, spec: str) -> int:
    answer = _call("POST", f"{base}/admin/faults", json.loads(spec))
    sys.stdout.write(
        f"   stand-in: {answer['queued']['kind']} queued for {answer['for']} "
        f"(x{answer['count']})\n"
    )
    return 0


def seen(base: str, last: int) -> int:
    stats = _call("GET", f"{base}/admin/stats")
    for r in stats["recent"][-last:]:
        fault = f" (injected {r['fault']})" if r["fault"] else ""
        sys.stdout.write(
            f"   stand-in saw: {r['account']} -> HTTP {r['status']}{fault}\n"
        )
    return 0


def main(argv: list[str]) -> int:
    match argv:
        case ["ask", port, ca, prompt]:
            return ask(port, ca, prompt)
        case ["fault", base, spec]:
            return fault(base, spec)
        case ["seen", base]:
            return seen(base, 10)
        case ["seen", base, n]:
            return seen(base, int(n))
    sys.stderr.write(__doc__ or "")
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
