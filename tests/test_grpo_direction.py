"""One GRPO update on the real learner (Ray actors, DeepSpeed ZeRO-2 over gloo, 2 ranks) moves the policy the way
the rewards say: the log-probs of the rewarded completions rise and those of the unrewarded ones fall, for every
loss aggregation and both reward kinds (the learner sees only rewards, but each kind has its own config checks and
prompt format). The check a mature recipe passes before any learning curve is read."""

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def _batch(n: int, groups: int, seed: int = 0):
    """``groups`` GRPO groups of ``n`` completions of uneven lengths (3-40 tokens); in each group half the
    completions are rewarded (1) and half not (0)."""
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(20, 200, size=int(rng.integers(4, 12)))) for _ in range(groups)]
    completions = [rng.integers(20, 200, size=int(rng.integers(3, 41))).astype(np.int32) for _ in range(groups * n)]
    rewards = np.tile(np.array([1.0, 0.0] * (n // 2)), groups)
    rollout = {"version": 0, "n": n, "prompt_ids": prompts, "completion_ids": completions,
               "finish_reason": ["stop"] * len(completions),
               "logprobs": [np.full(len(c), -5.0, dtype=np.float32) for c in completions]}
    return rollout, {"total": rewards}


def _mean_logprobs(ray, learners, ref) -> np.ndarray:
    merged = {}
    for part in ray.get(learners.call("completion_logprobs", [ref], 1.0)):
        merged.update(part)
    return np.array([merged[i].mean() for i in range(len(merged))])


@pytest.mark.parametrize("aggregation,kind", [
    ("sequence_mean", "rlt"), ("token_mean", "verifier"),
    # the learner sees only rewards: the other two pairs add little, so they run in the slow suite
    pytest.param("token_mean", "rlt", marks=pytest.mark.slow),
    pytest.param("sequence_mean", "verifier", marks=pytest.mark.slow)])
def test_one_update_raises_the_rewarded_completions_and_lowers_the_others(ray_local, kind, aggregation):
    from actors.learner import LearnerGroup
    from rlt_ray.config import load_config

    cfg = load_config("configs/tiny_cpu.yaml", [f"reward.kind={kind}", f"grpo.loss_aggregation={aggregation}",
                                                "learner.lr=1e-4", "rollout.temperature=1.0"])
    learners = LearnerGroup(cfg)
    try:
        rollout, scored = _batch(cfg.rollout.n, cfg.run.questions_per_step)
        ref = ray_local.put(rollout)
        before = _mean_logprobs(ray_local, learners, ref)
        ray_local.get(learners.call("train_step", [ref], [ray_local.put(scored)]))
        change = _mean_logprobs(ray_local, learners, ref) - before
    finally:
        learners.shutdown()
    rewarded = scored["total"] == 1.0
    assert (change[rewarded] > 0).all(), change
    assert (change[~rewarded] < 0).all(), change
