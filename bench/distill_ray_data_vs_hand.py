"""P8: distillation throughput, the hand-made scheduler (actors split rows by hand) against the Ray Data pipeline,
on the same rows, model and machine, in interleaved rounds.

    python bench/distill_ray_data_vs_hand.py [--teacher tiny-teacher] [--student tiny-student] [--data reasoning_gym:gsm_symbolic]
                               [--rows 48] [--k 2] [--max-new 128] [--batch-rows 16] [--rounds 3]
                               [--baseline 4cf9b9a] [--config PRESET] [--extra key=value ...]

Each side is the job as a user runs it (``python jobs/distill.py``, its own local Ray, start-up included), with
fresh output each round: the baseline is the commit before Ray Data (a git worktree of ``--baseline``), the other
this working tree. Rows/s counts every input row (kept or reported); tokens/s counts the kept explanations'
tokens. Issue 31's bound: the Ray Data side no more than 10 % slower (ratio of medians <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import emit, interleaved, ratios

ROOT = Path(__file__).resolve().parent.parent


def run_side(tree: Path, args: list[str], out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "jobs/distill.py", *args, f"distill.output_dir={out}"], cwd=tree,
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"p8: distill in {tree} failed:\n{done.stderr[-3000:]}")


def outcome(out: Path) -> tuple[int, float]:
    """(input rows accounted for, kept explanation tokens)."""
    import pyarrow.parquet as pq

    tokens = sum(sum(pq.read_table(p, columns=["explanation_tokens"]).column(0).to_pylist())
                 for p in (out / "data").glob("*.parquet"))
    kept = sum(pq.read_metadata(p).num_rows for p in (out / "data").glob("*.parquet"))
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()] \
        if (out / "errors.jsonl").exists() else []
    reported = len({e.get("row") for e in errors if not e.get("completion_error") and "completion" not in e})
    return kept + reported, tokens


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="tiny-teacher")
    p.add_argument("--student", default="tiny-student")
    p.add_argument("--data", default="reasoning_gym:gsm_symbolic")
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--k", type=int, default=2)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--batch-rows", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline", default="4cf9b9a", help="the commit with the hand-made distill")
    p.add_argument("--config", default=None, help="a preset for both sides (e.g. a demo run's rl/config.yaml)")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for both sides")
    a = p.parse_args(argv)

    common = (["--config", a.config] if a.config else []) + [f"model.teacher={a.teacher}", f"model.student={a.student}", f"data.source={a.data}",
              f"data.size={a.rows}", f"data.max_rows={a.rows}", f"distill.k={a.k}",
              f"rollout.max_new_tokens={a.max_new}", *a.extra]
    work = Path(tempfile.mkdtemp(prefix="p8-"))
    baseline = work / "baseline"
    subprocess.run(["git", "worktree", "add", "--detach", str(baseline), a.baseline], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        sides = {
            "hand_made": lambda: run_side(baseline, common + [f"distill.shard_rows={a.batch_rows}"], work / "hand"),
            "ray_data": lambda: run_side(ROOT, common + [f"distill.batch_rows={a.batch_rows}"], work / "data"),
        }
        times = interleaved(sides, a.rounds)
        rows_hand, tokens_hand = outcome(work / "hand")
        rows_data, tokens_data = outcome(work / "data")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {"bench": "p8_distill", "rows": a.rows, "k": a.k, "max_new_tokens": a.max_new,
              "batch_rows": a.batch_rows, "config": a.config, "teacher": a.teacher, "data": a.data, "rounds": a.rounds,
              "rows_accounted": {"hand_made": rows_hand, "ray_data": rows_data},
              "kept_tokens": {"hand_made": tokens_hand, "ray_data": tokens_data}}
    for name, rows, tokens in (("hand_made", rows_hand, tokens_hand), ("ray_data", rows_data, tokens_data)):
        t = times[name]
        result[name] = {**t, "rows_per_s_median": rows / t["median_s"], "tokens_per_s_median": tokens / t["median_s"]}
    result["ray_data_seconds_over_hand_made"] = ratios(times, "ray_data", "hand_made")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
