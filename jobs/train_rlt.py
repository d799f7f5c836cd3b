"""Train a Reinforcement-Learned Teacher with GRPO on Ray: the RL loop, top to bottom.

    python jobs/train_rlt.py [--config PRESET] [key=value ...]          # starts a local Ray
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_rlt.py --config configs/paper_7b.yaml         # on a running cluster

One step: sync → generate → score → learn → log (→ checkpoint). Each stage is issued as a future whose
ObjectRefs go straight to the next stage's actors, so the controller never carries a batch between stages and a
later change can overlap them. Rollout workers sample only with the learner's current weights (on-policy GRPO).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def load_prompts(cfg: Any):
    """Rows and their tokenized teacher prompts; prompts over rollout.max_prompt_tokens are dropped (counted)."""
    from rlt_ray.config import ConfigError
    from rlt_ray.data import load_rows
    from rlt_ray.formats import RLTFormat
    from rlt_ray.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.tokenizer or cfg.model.teacher)
    fmt = RLTFormat(cfg.format, tokenizer)
    rows = load_rows(cfg.data.source, split=cfg.data.split, size=cfg.data.size, seed=cfg.data.seed,
                     max_rows=cfg.data.max_rows, fmt_cfg=cfg.format)
    kept, prompts = [], []
    for row in rows:
        ids = tokenizer(fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
        if len(ids) <= cfg.rollout.max_prompt_tokens:
            kept.append(row)
            prompts.append(ids)
    if len(kept) < cfg.run.questions_per_step:
        raise ConfigError(f"config key 'rollout.max_prompt_tokens': only {len(kept)} of {len(rows)} rows have a "
                          f"teacher prompt of at most {cfg.rollout.max_prompt_tokens} tokens, fewer than "
                          f"run.questions_per_step={cfg.run.questions_per_step}")
    return kept, prompts, len(rows) - len(kept)


def step_metrics(rollouts, scored, trained, sync_stats, t_step) -> dict[str, float]:
    from rlt_ray.metrics import summarize

    total = np.concatenate([s["total"] for s in scored])
    lengths = [len(c) for r in rollouts for c in r["completion_ids"]]
    finish = [f for r in rollouts for f in r["finish_reason"]]
    gen_s = max(r["seconds"] for r in rollouts)
    score_s = max(s["seconds"] for s in scored)
    learn_s = max(t["seconds"] for t in trained)
    m: dict[str, float] = {}
    m.update(summarize("reward", total))
    for key in ("r_ss", "r_kl", "match", "explanation_tokens", "solution_tokens"):
        m[f"{key}_mean"] = float(np.concatenate([s[key] for s in scored]).mean())
    m["closed_tag_fraction"] = float(np.mean(np.concatenate([s["match"] for s in scored]) == 0.0))
    m.update(summarize("completion_tokens", lengths))
    m["truncated_fraction"] = float(np.mean([f == "length" for f in finish]))
    m["loss"] = float(np.mean([t["loss"] for t in trained]))
    m["policy_kl"] = float(np.mean([t["kl"] for t in trained]))
    m["grad_norm"] = float(trained[0]["grad_norm"])
    m["lr"] = float(trained[0]["lr"])
    m["sync_seconds"] = sync_stats.seconds if sync_stats else 0.0
    m["sync_bytes"] = float(sync_stats.bytes) if sync_stats else 0.0
    m["generate_seconds"], m["score_seconds"], m["learn_seconds"] = gen_s, score_s, learn_s
    m["generate_tokens_per_s"] = sum(lengths) / max(gen_s, 1e-9)
    m["score_tokens_per_s"] = sum(s["tokens"] for s in scored) / max(score_s, 1e-9)
    m["learn_tokens_per_s"] = sum(t["tokens"] for t in trained) / max(learn_s, 1e-9)
    m["step_seconds"] = time.perf_counter() - t_step
    return m


def sample_records(rows, shards, scored, n: int) -> list[dict[str, Any]]:
    records = []
    for shard, part in zip(shards, scored):
        for j, (explanation, reward) in enumerate(zip(part["explanations"], part["total"])):
            records.append({"row": rows[int(shard[j // n])].id, "explanation": explanation, "reward": float(reward)})
    return records


def main(argv: list[str]) -> int:
    from rlt_ray.checkpoint import read_state, resolve_resume, step_dir, write_state
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import check_cluster, load_config, split_argv, temperatures, to_yaml

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides)
    out = Path(cfg.run.output_dir)
    resume = resolve_resume(cfg.run.resume_from, out)
    rows, prompts, dropped = load_prompts(cfg)
    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources())

    from actors import actor_options
    from actors.learner import LearnerGroup
    from actors.rollout import RolloutWorker
    from actors.student import StudentScorer
    from rlt_ray.batch import step_seeds
    from rlt_ray.data import DataOrder
    from rlt_ray.metrics import RunLog
    from rlt_ray.weight_sync import make_weight_sync

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    run_name = out.name
    log = RunLog(out, cfg.logging, run_name)
    print(f"train_rlt: {len(rows)} rows ({dropped} over rollout.max_prompt_tokens dropped); output {out}", flush=True)

    rollout_env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if cfg.rollout.in_process else {}
    learners = workers = scorers = sync = None
    try:
        # -- start the actors: learner group (placement group), rollout workers, student scorers
        learners = LearnerGroup(cfg)
        workers = [RolloutWorker.options(**actor_options(cfg, cfg.resources.gpus_per_actor *
                                                         cfg.rollout.tensor_parallel_size, rollout_env)).remote(cfg, i)
                   for i in range(cfg.rollout.num_workers)]
        scorers = [StudentScorer.options(**actor_options(cfg)).remote(cfg, i)
                   for i in range(cfg.resources.scorer_workers)]
        ray.get([a.ready.remote() for a in workers + scorers])
        sync = make_weight_sync(cfg.resources.weight_sync, learners, workers, cfg.resources.sync_bucket_mb << 20,
                                cfg.resources.backend, cfg.rollout.tensor_parallel_size)
        sync.init()  # checks the learner's names/shapes/dtypes against the engines' once, before any step

        start = 0
        if resume is not None:
            start = int(read_state(resume)["step"])
            ray.get(learners.call("load_checkpoint", str(resume)))
            print(f"train_rlt: resumed from {resume} (step {start})", flush=True)
        order = DataOrder(len(rows), cfg.run.questions_per_step, cfg.data.seed)
        teacher_temperature = temperatures(cfg)["teacher"]
        version = start  # the learner's weights version: one per completed RL step

        for step in range(start, cfg.run.steps):
            t_step = time.perf_counter()
            # 1. sync: workers must sample with the learner's current weights
            sync_stats = sync.sync(version) if sync.is_stale(version) else None

            # 2. generate: the step's questions split over the workers; a GRPO group never straddles two
            indices = order.step_indices(step)
            shards = [s for s in np.array_split(np.asarray(indices), len(workers)) if len(s)]
            rollout_refs = [w.generate.remote([prompts[i] for i in shard], step_seeds(cfg.run.seed, step, shard),
                                              version) for w, shard in zip(workers, shards)]

            # 3. teacher log-probs for r_KL: the rollout's own (default) or a forward of the learner's policy
            teacher_lp = None
            if cfg.reward.teacher_logprobs_from == "learner":
                teacher_lp = learners.call("completion_logprobs", rollout_refs, teacher_temperature)

            # 4. score each worker's groups with the student as soon as they exist
            scored_refs, offset = [], 0
            for k, (ref, shard) in enumerate(zip(rollout_refs, shards)):
                scorer = scorers[k % len(scorers)]
                scored_refs.append(scorer.score.remote([rows[i] for i in shard], ref, teacher_lp, offset))
                offset += len(shard) * cfg.rollout.n

            # 5. learn: advantages over the whole batch, one optimizer step per batch on every rank
            trained = ray.get(learners.call("train_step", rollout_refs, scored_refs))
            version = step + 1

            # 6. log
            rollouts, scored = ray.get(rollout_refs), ray.get(scored_refs)
            if any(r["version"] != version - 1 for r in rollouts):  # workers refuse this already; never log it
                raise RuntimeError(f"step {step}: samples from weights versions {[r['version'] for r in rollouts]}")
            metrics = step_metrics(rollouts, scored, trained, sync_stats, t_step)
            metrics["weights_version"] = float(version)
            log.log(step, metrics)
            log.samples(step, sample_records(rows, shards, scored, cfg.rollout.n))
            print(f"step {step + 1}/{cfg.run.steps}  reward {metrics['reward_mean']:+.3f}  "
                  f"closed {metrics['closed_tag_fraction']:.2f}  loss {metrics['loss']:+.3e}  "
                  f"sync {metrics['sync_seconds']:.2f}s  step {metrics['step_seconds']:.1f}s", flush=True)

            # 7. checkpoint: HF teacher + full training state; COMPLETE is written last
            every = cfg.run.checkpoint_every
            if (every and (step + 1) % every == 0) or step + 1 == cfg.run.steps:
                ckpt = step_dir(out, step + 1)
                ray.get(learners.call("save_checkpoint", str(ckpt)))
                write_state(ckpt, {"step": step + 1, "weights_version": version, "data_seed": cfg.data.seed,
                                   "questions_per_step": cfg.run.questions_per_step, "config": to_yaml(cfg)})
                print(f"train_rlt: checkpoint {ckpt}", flush=True)
    finally:
        log.close()
        if sync is not None:
            sync.shutdown()
        for actor in (workers or []) + (scorers or []):
            ray.kill(actor)
        if learners is not None:
            learners.shutdown()
    return 0


if __name__ == "__main__":
    from rlt_ray.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "train_rlt"))
