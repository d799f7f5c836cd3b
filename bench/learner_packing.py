"""P9: the learner on uneven lengths. Learner tokens/s packed (learner.max_tokens_per_micro_batch) ÷ padded
(learner.micro_batch_size rows a forward), and, packed, the ranks balanced by tokens ÷ equal contiguous counts, on
the same batch in one run (real Ray actors, DeepSpeed ZeRO-2 over gloo, 2 ranks, the tiny preset).

    python bench/learner_packing.py [--rounds 5] [--questions 8] [--n 8] [--budget 2048] [--micro-batch 4]

The batch's completion lengths come from a long tail like the paper's data set (a few long reasoning traces, many
short ones; lognormal, median 64 tokens, cut at 1,000), scaled to the tiny models. Each side runs one optimizer step
(train_step) per round, in interleaved rounds (bench/common.py). Per-rank token loads are reported too
(slowest ÷ mean). Targets (issue 48): packed ÷ padded >= 1.5x; balanced ranks' slowest ÷ mean <= 1.15.
"""

from __future__ import annotations

import argparse
import sys

from common import emit, interleaved, ratios


def long_tail_batch(questions: int, n: int, seed: int = 0, max_new: int = 1000):
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=np.log(64), sigma=1.0, size=questions * n), 4, max_new).astype(int)
    prompts = [list(rng.integers(20, 1500, size=int(rng.integers(30, 60)))) for _ in range(questions)]
    completions = [rng.integers(20, 1500, size=int(s)).astype(np.int32) for s in lengths]
    rollout = {"version": 0, "n": n, "prompt_ids": prompts, "completion_ids": completions,
               "finish_reason": ["stop"] * len(completions),
               "logprobs": [np.full(len(c), -3.0, dtype=np.float32) for c in completions]}
    return rollout, {"total": rng.normal(size=questions * n)}


def rank_loads(rollout, world: int, budget: int, balance: bool) -> list[int]:
    from rlt_ray.method.packing import plan

    n = rollout["n"]
    full = {i: len(rollout["prompt_ids"][i // n]) + len(c) for i, c in enumerate(rollout["completion_ids"])}
    return [sum(full[i] for m in micro for i in m) for micro in plan(list(full), full, world, budget, balance)]


def main(argv: list[str]) -> int:
    import ray

    from actors.learner import LearnerGroup
    from rlt_ray.config import load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--budget", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    args = p.parse_args(argv)
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    rollout, scored = long_tail_batch(args.questions, args.n, max_new=min(1000, args.budget - 100))
    tokens = sum(len(rollout["prompt_ids"][i // args.n]) + len(c) for i, c in enumerate(rollout["completion_ids"]))
    refs = [ray.put(rollout)], [ray.put(scored)]
    base = ["learner.lr=1e-5", f"rollout.n={args.n}", f"run.questions_per_step={args.questions}",
            f"rollout.max_new_tokens={min(1000, args.budget - 100)}", "rollout.max_prompt_tokens=100"]
    sides = {"padded": [f"learner.micro_batch_size={args.micro_batch}"],
             "packed_contiguous": ["learner.micro_batch_size=1", f"learner.max_tokens_per_micro_batch={args.budget}",
                                   "learner.balance_ranks=false"],
             "packed_balanced": ["learner.micro_batch_size=1", f"learner.max_tokens_per_micro_batch={args.budget}"]}
    groups = {name: LearnerGroup(load_config("configs/tiny_cpu.yaml", base + extra)) for name, extra in sides.items()}
    try:
        for group in groups.values():  # a first step each: DeepSpeed's lazy set-up is not the learner's speed
            ray.get(group.call("train_step", *refs))
        times = interleaved({name: (lambda g=g: ray.get(g.call("train_step", *refs))) for name, g in groups.items()},
                            args.rounds)
    finally:
        for group in groups.values():
            group.shutdown()
    world = 2
    loads = {b: rank_loads(rollout, world, args.budget, b) for b in (True, False)}
    result = {"bench": "P9 learner packing", "tokens": tokens, "rounds": args.rounds, "budget": args.budget,
              "micro_batch": args.micro_batch,
              "tokens_per_s": {name: tokens / t["median_s"] for name, t in times.items()},
              "packed_vs_padded": ratios(times, "padded", "packed_balanced"),
              "balanced_vs_contiguous": ratios(times, "packed_contiguous", "packed_balanced"),
              "rank_tokens": {"balanced": loads[True], "contiguous": loads[False]},
              "slowest_over_mean": {"balanced": max(loads[True]) / (sum(loads[True]) / world),
                                    "contiguous": max(loads[False]) / (sum(loads[False]) / world)},
              "seconds": times}
    for name, t in times.items():
        print(f"{name:18} median {t['median_s']:.3f} s  {tokens / t['median_s']:8.0f} tokens/s", file=sys.stderr)
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
