"""P1: RL step time ÷ its slowest single stage (generate, score, learn), from real runs of jobs/train_rlt.py,
side by side in one run of this script:

- sequential: rollout.stream_groups=0 with one rollout worker — generate everything, then score, then learn
  (the reference's order of work, with our batched scoring and bucketed sync);
- streamed:   rollout.stream_groups=1 — each finished group is scored at once and learned as it arrives;
- off-policy: grpo.max_staleness=1 — the next step samples while this one learns (the optional mode).

    python bench/p1_step.py [--steps 12] [--config configs/tiny_cpu.yaml] [--modes sequential,streamed,off_policy]
                            [key=value ...]

A stage's time is its busy time in the step (a worker's generation, a scorer's and a learner rank's summed calls).
The first 2 steps of each run are skipped (warm-up). Target (issue 7): streamed step / slowest stage <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

MODES = {
    "sequential": ["rollout.stream_groups=0", "rollout.num_workers=1"],
    "streamed": ["rollout.stream_groups=1"],
    "off_policy": ["rollout.stream_groups=1", "grpo.max_staleness=1", "grpo.clip_eps=0.2"],
}


def measure(mode: str, a: argparse.Namespace, overrides: list[str]) -> dict:
    from jobs.train_rlt import main as train

    out = Path(tempfile.mkdtemp(prefix=f"rlt-p1-{mode}-")) / "run"
    args = ["--config", a.config, f"run.steps={a.steps}", f"run.output_dir={out}", "logging.tensorboard=false",
            "rollout.n=8", "rollout.max_new_tokens=192", "run.questions_per_step=4"] + MODES[mode] + overrides
    if train(args):
        raise SystemExit(f"p1_step: the {mode} run failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][2:]
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    stages = {k: round(med(f"{k}_seconds"), 3) for k in ("generate", "score", "learn", "sync")}
    step = med("step_seconds")
    slowest = max(stages["generate"], stages["score"], stages["learn"])
    return {"step_s": round(step, 3), "stages_s": stages, "slowest_stage_s": slowest,
            "sum_of_stages_s": round(sum(stages.values()), 3), "ratio": round(step / slowest, 3)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    p.add_argument("--modes", default=",".join(MODES))
    a, overrides = p.parse_known_args(argv)

    results = {mode: measure(mode, a, overrides) for mode in a.modes.split(",")}
    for mode, r in results.items():
        s = r["stages_s"]
        print(f"P1 {mode:>10}: step {r['step_s']:.2f}s; generate {s['generate']:.2f}s, score {s['score']:.2f}s, "
              f"learn {s['learn']:.2f}s, sync {s['sync']:.2f}s -> step / slowest stage = {r['ratio']:.2f}")
    summary = {"bench": "P1", "steps_measured": a.steps - 2, "modes": results, "target": 1.15}
    if "streamed" in results:
        summary["ratio"] = results["streamed"]["ratio"]
        summary["met"] = results["streamed"]["ratio"] <= 1.15
    if "sequential" in results and "streamed" in results:
        summary["streamed_over_sequential_step"] = round(results["streamed"]["step_s"]
                                                         / results["sequential"]["step_s"], 3)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
