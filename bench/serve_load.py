"""Load on the Serve app: N requests at concurrency C to one route, a share of them streamed.

    python bench/serve_load.py --url http://127.0.0.1:8000 --route explain|chat|completions [--requests 2000]
                               [--concurrency 32] [--max-tokens 32] [--stream-share 0.5] [--token-env RLT_SERVE_TOKEN]
                               [--reward] [--model tiny-teacher]

Every request asks for exactly --max-tokens new tokens where the route allows it (ignore_eos on the OpenAI
routes), so tokens/s compare across routes and with the engine offline (bench/serve_vs_offline.py). Prints one line,
then a last JSON line: errors (goal 0), p50/p95/p99 seconds, requests/s, tokens/s, the machine. Exit code 1 when
any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine  # noqa: E402

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "The final answer is \\boxed{7}."),
    ("A train travels 60 km in 1.5 hours. What is its speed in km/h?", "The final answer is \\boxed{40}."),
    ("What is 12 times 11?", "The final answer is \\boxed{132}."),
    ("Solve 2x + 6 = 10.", "The final answer is \\boxed{2}."),
]


def body(route: str, i: int, max_tokens: int, stream: bool, model: str,
         prompt_ids: list[list[int]] | None = None) -> dict:
    """Request i: question i mod 4; ``prompt_ids`` (completions only): token ids to send instead of the text,
    e.g. the teacher prompts /v1/explain builds, so both routes do the same engine work."""
    q, s = QUESTIONS[i % len(QUESTIONS)]
    if route == "explain":
        return {"question": q, "solution": s, "max_tokens": max_tokens, "seed": i, "stream": stream}
    common = {"model": model, "max_tokens": max_tokens, "seed": i, "stream": stream, "ignore_eos": True}
    if route == "chat":
        return {**common, "messages": [{"role": "user", "content": q}]}
    return {**common, "prompt": prompt_ids[i % len(prompt_ids)] if prompt_ids else q}


def one(session: requests.Session, url: str, route: str, payload: dict) -> tuple[float, bool, int, float]:
    """(seconds, ok, completion tokens, start time) of one request, read to its end."""
    started = time.perf_counter()
    out = _one(session, url, route, payload)
    return out + (started,)


def _one(session: requests.Session, url: str, route: str, payload: dict) -> tuple[float, bool, int]:
    path = {"explain": "/v1/explain", "chat": "/v1/chat/completions", "completions": "/v1/completions"}[route]
    stream = payload["stream"]
    if stream and route != "explain":
        payload = {**payload, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    try:
        with session.post(url + path, json=payload, stream=stream, timeout=600) as r:
            if r.status_code != 200:
                return time.perf_counter() - t0, False, 0
            if not stream:
                out = r.json()
                tokens = out["completion_tokens"] if route == "explain" else out["usage"]["completion_tokens"]
            elif route == "explain":
                last = json.loads([ln for ln in r.iter_lines() if ln][-1])
                if not last.get("done") or "error" in last:
                    return time.perf_counter() - t0, False, 0
                tokens = last["completion_tokens"]
            else:
                tokens, done = 0, False
                for line in r.iter_lines():
                    if line.startswith(b"data: ") and line != b"data: [DONE]":
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
                    done = done or line == b"data: [DONE]"
                if not done:
                    return time.perf_counter() - t0, False, 0
    except (requests.RequestException, ValueError, KeyError):
        return time.perf_counter() - t0, False, 0
    return time.perf_counter() - t0, True, tokens


def run_load(url: str, route: str, requests_n: int, concurrency: int, max_tokens: int, stream_share: float,
             token: str | None, model: str, prompt_ids: list[list[int]] | None = None) -> dict:
    sessions = []
    for _ in range(concurrency):
        s = requests.Session()
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        sessions.append(s)
    every = round(1 / stream_share) if stream_share > 0 else 0
    payloads = [body(route, i, max_tokens, bool(every) and i % every == 0, model, prompt_ids) for i in range(requests_n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: one(sessions[i % concurrency], url, route, payloads[i]), range(requests_n)))
    wall = time.perf_counter() - t0
    latencies = sorted(r[0] for r in results if r[1])
    q = (lambda f: round(latencies[min(len(latencies) - 1, int(f * len(latencies)))], 3) if latencies else None)
    # the stragglers (over 5x the median): when they started, to tell a cold start from a stall
    slow = sorted((round(r[3] - t0, 1), round(r[0], 1)) for r in results if latencies and r[0] > 5 * q(0.5))
    return {"route": route, "requests": requests_n, "concurrency": concurrency, "max_tokens": max_tokens,
            "stream_share": stream_share, "errors": sum(1 for r in results if not r[1]),
            "p50_s": q(0.5), "p95_s": q(0.95), "p99_s": q(0.99), "requests_per_s": round(requests_n / wall, 2),
            "tokens": sum(r[2] for r in results), "tokens_per_s": round(sum(r[2] for r in results) / wall, 1),
            "wall_s": round(wall, 1),
            "stragglers": {"count": len(slow), "first_10_started_at_s_and_took_s": slow[:10]}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--route", choices=("explain", "chat", "completions"), default="explain")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream-share", type=float, default=0.5, help="share of the requests streamed (0 to 1)")
    p.add_argument("--token-env", default=None, help="environment variable holding the bearer token")
    p.add_argument("--model", default="tiny-teacher", help="the OpenAI routes' model id")
    p.add_argument("--reward", action="store_true", help="label only: the app was started with serve.student")
    a = p.parse_args(argv)
    token = os.environ.get(a.token_env) if a.token_env else None
    result = run_load(a.url, a.route, a.requests, a.concurrency, a.max_tokens, a.stream_share, token, a.model)
    result["reward"] = a.reward
    print(f"{a.route}: {a.requests} requests at concurrency {a.concurrency} ({a.stream_share:.0%} streamed): "
          f"p50 {result['p50_s']} s, p95 {result['p95_s']} s, p99 {result['p99_s']} s, "
          f"{result['requests_per_s']} req/s, {result['tokens_per_s']} tokens/s, {result['errors']} errors",
          file=sys.stderr)
    emit({"bench": "serve_load", **result, "machine": machine()})
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
