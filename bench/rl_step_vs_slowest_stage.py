"""P1: RL step time ÷ its slowest single stage (generate, score, learn), from real runs of jobs/train_rlt.py,
side by side in one run of this script:

- sequential: rollout.stream_groups=0 with one rollout worker — generate everything, then score, then learn
  (the reference's order of work, with our batched scoring and bucketed sync);
- streamed:   rollout.stream_groups=1 — each finished group is scored at once and learned as it arrives;
- off-policy: grpo.max_staleness=1 — the next step samples while this one learns (the optional mode).

    python bench/rl_step_vs_slowest_stage.py [--steps 12] [--config configs/tiny_cpu.yaml] [--modes sequential,streamed,off_policy]
                            [--rounds 2] [key=value ...]

A stage's time is its busy time in the step (a worker's generation, a scorer's and a learner rank's summed calls).
The first 2 steps of each run are skipped (warm-up); a run's figure is the median of its steps, and the modes run
in --rounds interleaved rounds (min and median over the runs; last stdout line: JSON with the machine). Target (issue 7): streamed step / slowest stage <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import emit

MODES = {
    "sequential": ["rollout.stream_groups=0", "rollout.num_workers=1"],
    "streamed": ["rollout.stream_groups=1"],
    "off_policy": ["rollout.stream_groups=1", "grpo.max_staleness=1", "grpo.clip_eps=0.2"],
}


def measure(mode: str, a: argparse.Namespace, overrides: list[str]) -> dict:
    from jobs.train_rlt import main as train

    out = Path(tempfile.mkdtemp(prefix=f"rlt-p1-{mode}-")) / "run"
    args = ["--config", a.config, f"run.steps={a.steps}", f"run.output_dir={out}", "logging.trackers=[]",
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
    p.add_argument("--rounds", type=int, default=2, help="runs of every mode, interleaved (each run: steps 3-12)")
    a, overrides = p.parse_known_args(argv)

    modes = a.modes.split(",")
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    for _ in range(a.rounds):  # interleaved: sequential, streamed, off-policy, sequential, ...
        for mode in modes:
            runs[mode].append(measure(mode, a, overrides))
    results = {}
    for mode, rs in runs.items():
        ratios = [r["ratio"] for r in rs]
        results[mode] = {"runs": rs, "ratio_min": min(ratios), "ratio_median": statistics.median(ratios),
                         "step_s_median": statistics.median(r["step_s"] for r in rs)}
        best = min(rs, key=lambda r: r["ratio"])
        s = best["stages_s"]
        print(f"P1 {mode:>10}: step / slowest stage min {results[mode]['ratio_min']:.2f}, median "
              f"{results[mode]['ratio_median']:.2f} over {a.rounds} run(s); best run: step {best['step_s']:.2f}s, "
              f"generate {s['generate']:.2f}s, score {s['score']:.2f}s, learn {s['learn']:.2f}s, sync {s['sync']:.2f}s",
              file=sys.stderr)
    summary = {"bench": "P1", "steps_measured": a.steps - 2, "rounds": a.rounds, "modes": results, "target": 1.15}
    if "streamed" in results:
        summary["ratio_min"] = results["streamed"]["ratio_min"]
        summary["met"] = results["streamed"]["ratio_min"] <= 1.15
    if "sequential" in results and "streamed" in results:
        summary["streamed_over_sequential_step"] = round(results["streamed"]["step_s_median"]
                                                         / results["sequential"]["step_s_median"], 3)
    emit(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
