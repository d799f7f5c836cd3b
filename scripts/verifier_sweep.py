"""The verifier-mode sweep of docs/lab-notes/runs-30-31.md (run 31): outcome-reward GRPO from a demo student at
several learning rates and batch shapes, one seed, each arm reported as it comes out.

    python scripts/verifier_sweep.py --start runs/demo/student_b/final --task runs/demo/task/train.jsonl \\
        --out runs/verifier_sweep [--lrs 1e-5,3e-5,1e-4] [--shapes 8x8,16x8] [--steps 40]

Writes <out>/<lr>_<questions>x<samples>/ (each arm's RL run) and <out>/sweep.json; prints one line per arm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlt_ray.infra.cluster import use_project_root

ROOT = use_project_root(__file__)


def window(metrics: list[dict], key: str, first: bool, k: int = 10) -> float:
    values = [m[key] for m in metrics]
    part = values[:k] if first else values[-k:]
    return sum(part) / len(part)


def arm_result(metrics: list[dict]) -> dict:
    keys = ("accuracy", "format_rate", "overlong_fraction", "signal_fraction", "update_ratio")
    result = {f"{key}_{w}": window(metrics, key, w == "first10") for key in keys for w in ("first10", "last10")}
    result["rise"] = result["accuracy_last10"] - result["accuracy_first10"]
    result["collapsed"] = (result["format_rate_last10"] < result["format_rate_first10"] - 0.05
                           or result["overlong_fraction_last10"] > 0.10)
    return result


def main(argv: list[str]) -> int:
    from jobs import train_rlt
    from rlt_ray.infra.cluster import connect_ray
    from rlt_ray.infra.metrics import cpu_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--start", required=True)
    p.add_argument("--task", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--lrs", default="1e-5,3e-5,1e-4")
    p.add_argument("--shapes", default="8x8,16x8")
    p.add_argument("--steps", type=int, default=40)
    args = p.parse_args(argv)
    out = Path(args.out)
    connect_ray()
    results = {}
    for shape in args.shapes.split(","):
        questions, samples = (int(x) for x in shape.split("x"))
        for lr in args.lrs.split(","):
            name = f"{lr}_{shape}"
            folder = out / name
            if not (folder / "metrics.jsonl").exists() or len((folder / "metrics.jsonl").read_text().splitlines()) < args.steps:
                train_rlt.main(["--config", "configs/demo.yaml", f"data.source={args.task}", "reward.kind=verifier",
                                f"model.student={args.start}", f"run.steps={args.steps}", "run.checkpoint_every=0",
                                f"run.output_dir={folder}", f"learner.lr={lr}", "learner.lr_schedule=constant",
                                "learner.warmup_ratio=0.1", "grpo.ref_mixup_every=0", "rollout.max_new_tokens=128",
                                f"run.questions_per_step={questions}", f"rollout.n={samples}",
                                "logging.trackers=[]", "run.stop_on_hack=false"])
            metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
            results[name] = arm_result(metrics)
            r = results[name]
            print(f"sweep {name}: accuracy {r['accuracy_first10']:.3f} -> {r['accuracy_last10']:.3f} "
                  f"(rise {r['rise']:+.3f}); format {r['format_rate_first10']:.2f} -> {r['format_rate_last10']:.2f}; "
                  f"overlong {r['overlong_fraction_last10']:.2f}; signal {r['signal_fraction_first10']:.2f}; "
                  f"update ratio {r['update_ratio_first10']:.2e}; collapsed {r['collapsed']}", flush=True)
    name, avx512 = cpu_info()
    (out / "sweep.json").write_text(json.dumps({"cpu": f"{name} ({'AVX-512' if avx512 else 'no AVX-512'})",
                                                "arms": results}, indent=2))
    return 0


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "verifier_sweep"))
