"""P7's guard lever: what the Serve app's own checks cost per request, measured apart from Ray and the engine.

    python bench/serve_guard_cost.py [--model tiny-teacher] [--requests 2000] [--rounds 5] [--prompt-chars 900]

Sides, each over the same ``--requests`` chat-completion requests (a ~200-token prompt, the headers P7's load
sends), in interleaved rounds:
  bare      a minimal ASGI app that reads and parses the body and answers (what any JSON route costs at least)
  guarded   the same app behind serve.guard.RequestGuard (bearer token, body read under a limit and a deadline,
            content type, JSON depth and surrogates) plus the chat route's escaping of special-token strings in
            each message (rlt_ray.method.formats.escape_special_tokens with the model's specials)
The guard's cost per request is guarded - bare, in microseconds of one core; P7's figure to hold it against is
the CPU per request of the Ray processes (29-46 ms, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from common import emit, interleaved


def chat_request(prompt_chars: int) -> tuple[dict, bytes]:
    words = ("What is 7+7+1+5? Explain each step of the sum, then give the total. " * 64)[:prompt_chars]
    body = json.dumps({"model": "teacher", "max_tokens": 32, "stream": False, "temperature": 0.7,
                       "messages": [{"role": "system", "content": "You are a helpful teacher."},
                                    {"role": "user", "content": words}]}).encode()
    headers = [(b"host", b"127.0.0.1:8000"), (b"authorization", b"Bearer p7-token"),
               (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"accept", b"*/*"), (b"user-agent", b"p7-load")]
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}
    return scope, body


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-teacher", help="whose special tokens the chat route escapes")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prompt-chars", type=int, default=900)
    a = p.parse_args(argv)

    from transformers import AutoTokenizer

    from rlt_ray.method.formats import escape_special_tokens, special_token_strings
    from rlt_ray.models.registry import resolve_model
    from serve.guard import RequestGuard
    from serve.schema import Limits

    specials = special_token_strings(AutoTokenizer.from_pretrained(resolve_model(a.model)))
    os.environ["P7_GUARD_TOKEN"] = "p7-token"
    scope, body = chat_request(a.prompt_chars)
    answer = json.dumps({"id": "x", "choices": []}).encode()

    async def bare_app(scope, receive, send, escape=False):
        message = await receive()
        request = json.loads(message["body"])  # the route parses the body in both sides (FastAPI does)
        if escape:  # the chat route's part of the guard: each message's text, as TeacherIngress.chat does it
            for m in request["messages"]:
                m["content"] = escape_special_tokens(m["content"], specials)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    async def escaping_app(scope, receive, send):
        await bare_app(scope, receive, send, escape=True)

    guarded = RequestGuard(escaping_app, "P7_GUARD_TOKEN", Limits(), body_timeout_s=30.0)
    statuses: list[int] = []

    async def serve_all(app) -> None:
        for _ in range(a.requests):
            async def receive():
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message):
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
            await app(dict(scope), receive, send)

    loop = asyncio.new_event_loop()
    sides = {"bare": lambda: loop.run_until_complete(serve_all(bare_app)),
             "guarded": lambda: loop.run_until_complete(serve_all(guarded))}
    times = interleaved(sides, a.rounds)
    loop.close()
    if set(statuses) != {200}:
        raise SystemExit(f"p7_guard: a request was refused: statuses {sorted(set(statuses))}")
    per = {name: {k: t[k] / a.requests * 1e6 for k in ("min_s", "median_s")} for name, t in times.items()}
    cost = {k: per["guarded"][k] - per["bare"][k] for k in ("min_s", "median_s")}
    print(f"P7 guard: {a.requests} requests of {len(body)} bytes x {a.rounds} rounds; per request (us, min / "
          f"median): bare {per['bare']['min_s']:.1f} / {per['bare']['median_s']:.1f}, guarded "
          f"{per['guarded']['min_s']:.1f} / {per['guarded']['median_s']:.1f}; the guard's cost "
          f"{cost['min_s']:.1f} / {cost['median_s']:.1f} us ({len(specials)} special-token strings escaped)")
    emit({"bench": "P7_guard", "requests": a.requests, "rounds": a.rounds, "body_bytes": len(body),
          "specials": len(specials), "us_per_request": per, "guard_cost_us": cost})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
