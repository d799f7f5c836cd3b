"""Train a Reinforcement-Learned Teacher with GRPO on Ray: the RL loop, top to bottom.

    python jobs/train_rlt.py [--config PRESET] [key=value ...]          # starts a local Ray
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_rlt.py --config configs/paper_7b.yaml         # on a running cluster

One step: sync → generate → score → learn → log (→ checkpoint). Each stage is issued as a future whose
ObjectRefs go straight to the next stage's actors, so the controller never carries a batch between stages and a
later change can overlap them. Rollout workers sample only with the learner's current weights (on-policy GRPO).
"""

from __future__ import annotations

import signal
import sys
import threading
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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def learner_get(ray, refs, step: int, out: Path):
    """The learners' results; a dead rank stops the run with the checkpoint to resume from."""
    from rlt_ray.checkpoint import latest
    from rlt_ray.cluster import RunStopped

    try:
        # one at a time: the survivors of a dead rank may hang in a collective, so never wait for all first
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return ray.get(list(refs))
    except ray.exceptions.RayActorError as exc:
        last = latest(out)
        where = (f"resume from {last} (run.resume_from={last} or run.resume_from=latest)" if last
                 else "no checkpoint was written yet: start again")
        raise RunStopped(f"a learner rank died during step {step + 1} ({type(exc).__name__}); the run stops "
                         f"because DeepSpeed ranks cannot be replaced one by one: {where}") from None


def sample_records(rows, shards, scored, n: int) -> list[dict[str, Any]]:
    records = []
    for shard, part in zip(shards, scored):
        for j, (explanation, reward) in enumerate(zip(part["explanations"], part["total"])):
            records.append({"row": rows[int(shard[j // n])].id, "explanation": explanation, "reward": float(reward)})
    return records


def generate_and_score(ray, step, version, shards, prompts, rows, cfg, workers, scorers, sync, learners, log):
    """Stages 2-4 of a step: generate on every worker, then score each worker's groups as soon as they exist.
    A worker or scorer that dies is replaced; a new rollout worker is brought to the current weights version
    BEFORE it samples (a fresh engine holds the weights on disk), and the lost work is issued again."""
    from rlt_ray.batch import step_seeds
    from rlt_ray.config import temperatures

    def generate(k):
        return workers[k].generate.remote([prompts[i] for i in shards[k]], step_seeds(cfg.run.seed, step, shards[k]),
                                          version)

    offsets = np.cumsum([0] + [len(s) * cfg.rollout.n for s in shards])
    teacher_lp = None

    def score(k):
        return scorers[k % len(scorers)].score.remote([rows[i] for i in shards[k]], rollout_refs[k], teacher_lp,
                                                      int(offsets[k]))

    rollout_refs = [generate(k) for k in range(len(shards))]
    # the learner's teacher log-probs need the whole batch: then scoring starts once every rollout is in
    stream_scoring = cfg.reward.teacher_logprobs_from == "rollout"
    scored_refs: list = [None] * len(shards)
    pending = {ref: ("generate", k) for k, ref in enumerate(rollout_refs)}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        stage, k = pending.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            if stage == "generate":
                new = workers.replace(k)
                sync.replace_worker(k, new)
                stats = sync.sync(version)
                log.event(step, "rollout_worker_replaced", worker=k, generation=workers.generation[k],
                          synced_to_version=stats.version, error=type(exc).__name__)
                rollout_refs[k] = generate(k)
                pending[rollout_refs[k]] = ("generate", k)
            else:
                scorers.replace(k % len(scorers))
                log.event(step, "scorer_replaced", scorer=k % len(scorers),
                          generation=scorers.generation[k % len(scorers)], error=type(exc).__name__)
                scored_refs[k] = score(k)
                pending[scored_refs[k]] = ("score", k)
            continue
        if stage == "generate" and stream_scoring:
            scored_refs[k] = score(k)
            pending[scored_refs[k]] = ("score", k)
        elif stage == "generate" and not any(st == "generate" for st, _ in pending.values()):
            # 3. teacher log-probs from a forward of the learner's policy, on the complete batch
            teacher_lp = learners.call("completion_logprobs", rollout_refs, temperatures(cfg)["teacher"])
            for j in range(len(shards)):
                scored_refs[j] = score(j)
                pending[scored_refs[j]] = ("score", j)
    return rollout_refs, scored_refs


def main(argv: list[str]) -> int:
    from rlt_ray.checkpoint import check_resume_compatible, read_state, resolve_resume, step_dir, write_state
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import check_cluster, load_config, split_argv, to_yaml

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides)
    out = Path(cfg.run.output_dir)
    resume = resolve_resume(cfg.run.resume_from, out)
    rows, prompts, dropped = load_prompts(cfg)
    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources())

    from actors import ActorSlots, actor_options
    from actors.learner import LearnerGroup
    from actors.rollout import RolloutWorker, worker_options
    from actors.student import StudentScorer
    from rlt_ray.data import DataOrder
    from rlt_ray.metrics import RunLog
    from rlt_ray.weight_sync import make_weight_sync

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    run_name = out.name
    log = RunLog(out, cfg.logging, run_name)
    print(f"train_rlt: {len(rows)} rows ({dropped} over rollout.max_prompt_tokens dropped); output {out}", flush=True)

    learners = workers = scorers = sync = in_flight = None
    start = version = step = 0

    def checkpoint(steps_done: int) -> None:
        """HF teacher + full training state after ``steps_done`` steps; COMPLETE is written last."""
        ckpt = step_dir(out, steps_done)
        ray.get(learners.call("save_checkpoint", str(ckpt)))
        write_state(ckpt, {"step": steps_done, "weights_version": steps_done, "data_seed": cfg.data.seed,
                           "questions_per_step": cfg.run.questions_per_step, "config": to_yaml(cfg)})
        print(f"train_rlt: checkpoint {ckpt}", flush=True)

    # `ray job stop` sends SIGTERM: handle it like Ctrl-C (checkpoint, then stop every actor)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        # -- start the actors: learner group (placement group), rollout workers, student scorers
        learners = LearnerGroup(cfg, name=f"rlt:{run_name}")
        # named, so that operators (and the fault-injection tests) can find them: rlt:<run>:rollout:<i>[:r<n>]
        workers = ActorSlots(lambda i, g: RolloutWorker.options(
            name=f"rlt:{run_name}:rollout:{i}" + (f":r{g}" if g else ""), **worker_options(cfg),
        ).remote(cfg, i), cfg.rollout.num_workers)
        scorers = ActorSlots(lambda i, g: StudentScorer.options(
            name=f"rlt:{run_name}:scorer:{i}" + (f":r{g}" if g else ""), **actor_options(cfg)).remote(cfg, i),
            cfg.resources.scorer_workers)
        sync = make_weight_sync(cfg.resources.weight_sync, learners, workers.actors, cfg.resources.sync_bucket_mb << 20,
                                cfg.resources.backend, cfg.rollout.tensor_parallel_size)
        sync.init()  # checks the learner's names/shapes/dtypes against the engines' once, before any step

        if resume is not None:
            state = read_state(resume)
            check_resume_compatible(state, cfg.data.seed, cfg.run.questions_per_step)
            start = int(state["step"])
            ray.get(learners.call("load_checkpoint", str(resume)))
            print(f"train_rlt: resumed from {resume} (step {start})", flush=True)
        order = DataOrder(len(rows), cfg.run.questions_per_step, cfg.data.seed)
        version = start  # the learner's weights version: one per completed RL step

        for step in range(start, cfg.run.steps):
            t_step = time.perf_counter()
            # 1. sync: workers must sample with the learner's current weights
            sync_stats = sync.sync(version) if sync.is_stale(version) else None

            # 2-4. generate, (teacher log-probs,) score: see generate_and_score; groups never straddle workers
            indices = order.step_indices(step)
            shards = [s for s in np.array_split(np.asarray(indices), len(workers)) if len(s)]
            rollout_refs, scored_refs = generate_and_score(ray, step, version, shards, prompts, rows, cfg, workers,
                                                           scorers, sync, learners, log)

            # 5. learn: advantages over the whole batch, one optimizer step per batch on every rank
            in_flight = learners.call("train_step", rollout_refs, scored_refs)
            trained = learner_get(ray, in_flight, step, out)
            in_flight = None
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
                checkpoint(step + 1)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from `ray job stop`
        if in_flight is not None:  # the learners are mid-step: let them finish it, so the state is a whole step
            learner_get(ray, in_flight, step, out)
            version = step + 1
        log.event(version, "interrupted", completed_steps=version)
        if cfg.run.checkpoint_on_interrupt and learners is not None and version > start:
            checkpoint(version)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.close()
        if sync is not None:
            sync.shutdown()
        for slots in (workers, scorers):
            if slots is not None:
                slots.kill_all()
        if learners is not None:
            learners.shutdown()
    return 0


if __name__ == "__main__":
    from rlt_ray.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "train_rlt"))
