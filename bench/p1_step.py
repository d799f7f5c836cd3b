"""P1: RL step time ÷ its slowest single stage (generate, score, learn), from a real run of jobs/train_rlt.py.

    python bench/p1_step.py [--steps 12] [--config configs/tiny_cpu.yaml] [key=value ...]

Today's step is sequential with per-worker streaming of scoring (generate → score → learn → sync), so P1 shows
what overlapping the stages (issue 7's streaming step) can win. The first 2 steps are skipped (warm-up).
Target (issue 7): <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--config", default="configs/tiny_cpu.yaml")
    a, overrides = p.parse_known_args(argv)

    from jobs.train_rlt import main as train

    out = Path(tempfile.mkdtemp(prefix="rlt-p1-")) / "run"
    rc = train(["--config", a.config, f"run.steps={a.steps}", f"run.output_dir={out}", "logging.tensorboard=false",
                "rollout.n=8", "rollout.max_new_tokens=192"] + overrides)
    if rc:
        return rc
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][2:]
    med = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    stages = {k: med(f"{k}_seconds") for k in ("generate", "score", "learn", "sync")}
    step = med("step_seconds")
    slowest = max(stages["generate"], stages["score"], stages["learn"])
    result = {"bench": "P1", "steps_measured": len(rows), "step_s": step, "stages_s": stages,
              "sum_of_stages_s": sum(stages.values()), "slowest_stage_s": slowest, "ratio": step / slowest,
              "target": 1.15, "met": step / slowest <= 1.15}
    print(f"P1 step {step:.2f}s; generate {stages['generate']:.2f}s, score {stages['score']:.2f}s, learn "
          f"{stages['learn']:.2f}s, sync {stages['sync']:.2f}s -> step / slowest stage = {step / slowest:.2f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
