"""Load for the explanation endpoint: N requests at concurrency C; prints p50/p99 latency, throughput and errors.

    python bench/serve_load.py --url http://127.0.0.1:8000 [--requests 200] [--concurrency 16] [--max-tokens 64]
                               [--token-env RLT_SERVE_TOKEN] [--stream]

The last line is JSON (for scripts and tests). Exit code 1 when any request failed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

QUESTIONS = [
    ("Tom has 3 apples and buys 4 more. How many apples does he have?", "The final answer is \\boxed{7}."),
    ("A train travels 60 km in 1.5 hours. What is its speed in km/h?", "The final answer is \\boxed{40}."),
    ("What is 12 times 11?", "The final answer is \\boxed{132}."),
    ("Solve 2x + 6 = 10.", "The final answer is \\boxed{2}."),
]


def one(url: str, token: str | None, i: int, max_tokens: int, stream: bool) -> tuple[float, bool, int]:
    q, s = QUESTIONS[i % len(QUESTIONS)]
    body = json.dumps({"question": q, "solution": s, "max_tokens": max_tokens, "seed": i, "stream": stream}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{url}/v1/explain", body, headers), timeout=300) as r:
            text = r.read().decode()
            ok = r.status == 200
        if stream:
            last = json.loads(text.strip().splitlines()[-1])
            tokens = last.get("completion_tokens", 0) if last.get("done") else 0
            ok = ok and bool(last.get("done"))
        else:
            tokens = json.loads(text)["completion_tokens"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return time.perf_counter() - t0, False, 0
    return time.perf_counter() - t0, ok, tokens


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--token-env", default=None, help="environment variable holding the bearer token")
    p.add_argument("--stream", action="store_true")
    a = p.parse_args(argv)
    token = os.environ.get(a.token_env) if a.token_env else None
    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.concurrency) as pool:
        results = list(pool.map(lambda i: one(a.url, token, i, a.max_tokens, a.stream), range(a.requests)))
    wall = time.perf_counter() - t0
    latencies = sorted(r[0] for r in results if r[1])
    errors = sum(1 for r in results if not r[1])
    q = (lambda f: latencies[min(len(latencies) - 1, int(f * len(latencies)))] if latencies else float("nan"))
    summary = {"requests": a.requests, "concurrency": a.concurrency, "errors": errors,
               "p50_s": q(0.5), "p99_s": q(0.99), "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
               "requests_per_s": a.requests / wall, "tokens_per_s": sum(r[2] for r in results) / wall,
               "wall_s": wall}
    print(f"{a.requests} requests at concurrency {a.concurrency}: p50 {summary['p50_s'] * 1000:.0f} ms, "
          f"p99 {summary['p99_s'] * 1000:.0f} ms, {summary['requests_per_s']:.1f} req/s, "
          f"{summary['tokens_per_s']:.0f} tokens/s, {errors} errors")
    print(json.dumps(summary))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
