"""Train a Reinforcement-Learned Teacher with GRPO on Ray: the RL loop, top to bottom.

    python jobs/train_rlt.py [--config PRESET] [key=value ...]          # starts a local Ray
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_rlt.py --config configs/paper_7b.yaml         # on a running cluster
    python jobs/train_rlt.py --config configs/paper_7b.yaml --dry-run   # the config and the memory plan only

One step: sync → generate → score → learn → log (→ checkpoint), streamed: every worker hands over finished GRPO
groups as they complete (rollout.stream_groups), each chunk is scored at once, and scored chunks go straight into
the learners' gradient accumulation; the optimizer steps once per batch, so the update is the unstreamed one and
a step costs about its slowest stage. Stages pass ObjectRefs to each other's actors: the controller never carries
a batch. Rollout workers sample only with the learner's current weights (on-policy GRPO), unless
grpo.max_staleness=1: then the next step's samples are drawn while this step learns (one step off-policy, with
the clipped importance ratio in the loss). The streaming machinery and its failure handling: actors/rl_step.py.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)  # actors/, serve/, jobs/: the repo's folders, not installed packages


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    from actors.rl_prompts import load_prompts
    from rlt_ray.infra.checkpoint import latest, resolve_resume
    from rlt_ray.errors import RunStopped
    from rlt_ray.infra.cluster import connect_ray, restartable
    from rlt_ray.config import check_cluster, load_config, split_argv, to_yaml, trained_model, trained_model_key
    from rlt_ray.memory import check_memory

    dry_run = "--dry-run" in argv  # check the config and the memory plan, start nothing
    preset, overrides = split_argv([a for a in argv if a != "--dry-run"])
    cfg = load_config(preset, overrides)
    out = Path(cfg.run.output_dir)
    resume = resolve_resume(cfg.run.resume_from, out) if not dry_run else None
    check_memory(cfg)  # GPU layouts: refuse one whose peak does not fit (rlt_ray.memory), before any start-up
    if dry_run:
        r = cfg.resources
        print(f"train_rlt: dry run: the config loads and the memory plan fits; reward {cfg.reward.kind}, trains "
              f"{trained_model_key(cfg)}={trained_model(cfg)}, {cfg.run.steps} steps of "
              f"{cfg.run.questions_per_step} x {cfg.rollout.n} completions on {r.learner_ranks} learner ranks, "
              f"{cfg.rollout.num_workers} rollout workers and {r.scorer_workers} scorers ({r.device}); "
              f"output {out}. Nothing was started.", flush=True)
        return 0
    data = load_prompts(cfg)  # the training rows and prompts, and the held-out ones of run.eval_every
    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources(), nodes=ray.nodes())  # placement by role (rlt_ray.config.placement)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    skipped = ", ".join(f"{n} {why}" for why, n in data.dropped.items()) or "none"
    held_out = f"; {len(data.eval_rows)} held out for validation" if data.eval_rows else ""
    print(f"train_rlt: {len(data.rows)} rows{held_out} (dropped: {skipped}); reward {cfg.reward.kind}; trains "
          f"{trained_model_key(cfg)}={trained_model(cfg)}; output {out}", flush=True)
    # A lost node (its learners, or objects only it held) ends a run with a checkpoint; run.max_restarts > 0
    # starts every actor again on the nodes that remain and continues from the newest complete checkpoint
    for attempt in range(cfg.run.max_restarts + 1):
        try:
            train(ray, cfg, data, out, resume, attempt)
            return summarize_run(cfg, out)
        except RunStopped as exc:
            if attempt == cfg.run.max_restarts or not restartable(exc):
                raise
            resume = latest(out)
            print(f"train_rlt: restart {attempt + 1}/{cfg.run.max_restarts} from "
                  f"{resume or 'the start (no checkpoint yet)'}: {exc}", flush=True)
    return 0


SUMMARY_KEYS = ("reward_mean", "accuracy", "format_rate", "r_ss_mean", "r_kl_mean", "closed_tag_fraction",
                "completion_tokens_mean", "signal_fraction", "update_ratio")


def summarize_run(cfg, out: Path) -> int:
    """The console's closing lines and <output_dir>/summary.json: each curve at step 1, over the first and the last
    steps (rlt_ray.infra.metrics.run_summary)."""
    import json

    from rlt_ray.infra.metrics import run_summary

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    summary = run_summary(metrics, SUMMARY_KEYS)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    k = summary["window"]
    print(f"train_rlt: {summary['steps']} steps; step 1 / mean of the first {k} / of the last {k}:", flush=True)
    for key in summary["step1"]:
        print(f"  {key:24} {summary['step1'][key]:+10.4f} {summary['first'][key]:+10.4f} {summary['last'][key]:+10.4f}",
              flush=True)
    if "validation" in summary:
        v = summary["validation"]
        print(f"train_rlt: {v['count']} validations; first / last:", flush=True)
        for key in v["first"]:
            if key != "val/seconds":
                print(f"  {key:24} {v['first'][key]:+10.4f} {v['last'][key]:+10.4f}", flush=True)
    print(f"train_rlt: summary {out / 'summary.json'}", flush=True)
    return 0


def train(ray, cfg, data, out: Path, resume: Path | None, attempt: int = 0) -> int:
    """One attempt of the run: start the actors, (resume,) step to run.steps, checkpoint; any failure ends in
    RLStep.stop_with_checkpoint."""
    from actors.rl_checkpoints import Checkpoints
    from actors.rl_step import inject_fault, RLStep
    from rlt_ray.infra.metrics import RunLog

    log = RunLog(out, cfg, out.name, "train_rlt")
    rl = RLStep(ray, cfg, data, out, log)
    checkpoints = Checkpoints(ray, cfg, out, rl)
    start = version = step = 0
    # `ray job stop` sends SIGTERM: handle it like Ctrl-C (checkpoint, then stop every actor)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        rl.start()  # the learner group, the rollout workers, the student scorers, the weight sync
        start = version = rl.resume(resume)  # the learner's weights version: one per completed RL step
        log.resume_at(start)  # a restart redoes the steps after its checkpoint: each is logged once
        if attempt:
            log.event(start, "restarted", attempt=attempt, checkpoint=str(resume) if resume else None)
        for step in range(start, cfg.run.steps):
            t_step = time.perf_counter()
            inject_fault(cfg, "controller_error", step)
            # 1. sync: the workers sample with the learner's current weights
            sync_stats = rl.sync_if_stale(step, version)
            # (validation: run.eval_every) the held-out rows, answered greedily with the weights this step samples with
            validation = rl.validate(step, version) if rl.validation_due(step) else None
            # 2-5. generate → (teacher log-probs →) score → learn, streamed: chunks of finished groups are scored as
            # they arrive and go straight into gradient accumulation; one optimizer step per batch
            chunks, trained = rl.learn(step, version)
            version = step + 1
            # 6. log: metrics, events, the console line (non-finite steps were skipped by DeepSpeed)
            rl.log_step(step, version, chunks, trained, sync_stats, t_step, validation)
            # 7. checkpoint (every run.checkpoint_every steps or run.checkpoint_every_minutes, and at the end)
            if checkpoints.due(version):
                checkpoints.save(version)
        if rl.validation_due(cfg.run.steps) and version == cfg.run.steps:  # the trained policy: a record of its own
            rl.sync_if_stale(version, version)
            log.log(version, rl.validate(version, version))
    except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C, SIGTERM from `ray job stop`, or any failure
        rl.stop_with_checkpoint(exc, step, version, start, checkpoints)  # raises, after saving what it can
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.close()
        rl.shutdown()
    return 0


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "train_rlt"))
