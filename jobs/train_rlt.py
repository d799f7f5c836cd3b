"""Train a Reinforcement-Learned Teacher with GRPO on Ray: the RL loop, top to bottom.

    python jobs/train_rlt.py [--config PRESET] [key=value ...]          # starts a local Ray
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/train_rlt.py --config configs/paper_7b.yaml         # on a running cluster

One step: sync → generate → score → learn → log (→ checkpoint), streamed: every worker hands over finished GRPO
groups as they complete (rollout.stream_groups), each chunk is scored at once, and scored chunks go straight into
the learners' gradient accumulation; the optimizer steps once per batch, so the update is the unstreamed one and
a step costs about its slowest stage. Stages pass ObjectRefs to each other's actors: the controller never carries
a batch. Rollout workers sample only with the learner's current weights (on-policy GRPO), unless
grpo.max_staleness=1: then the next step's samples are drawn while this step learns (one step off-policy, with
the clipped importance ratio in the loss). The streaming machinery and its failure handling: jobs/rl_step.py.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    from jobs.rl_step import Checkpoints, RLStep, inject_fault, load_prompts
    from rlt_ray.checkpoint import resolve_resume
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import check_cluster, load_config, split_argv, to_yaml
    from rlt_ray.memory import check_memory
    from rlt_ray.metrics import RunLog

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides)
    out = Path(cfg.run.output_dir)
    resume = resolve_resume(cfg.run.resume_from, out)
    check_memory(cfg)  # GPU layouts: refuse one whose peak does not fit (rlt_ray.memory), before any start-up
    rows, prompts, dropped = load_prompts(cfg)
    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    log = RunLog(out, cfg.logging, out.name)
    print(f"train_rlt: {len(rows)} rows ({dropped} over rollout.max_prompt_tokens dropped); output {out}", flush=True)

    rl = RLStep(ray, cfg, rows, prompts, out, log)
    checkpoints = Checkpoints(ray, cfg, out, rl)
    start = version = step = 0
    # `ray job stop` sends SIGTERM: handle it like Ctrl-C (checkpoint, then stop every actor)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        rl.start()  # the learner group, the rollout workers, the student scorers, the weight sync
        start = version = rl.resume(resume)  # the learner's weights version: one per completed RL step
        for step in range(start, cfg.run.steps):
            t_step = time.perf_counter()
            inject_fault(cfg, "controller_error", step)
            # 1. sync: the workers sample with the learner's current weights
            sync_stats = rl.sync_if_stale(step, version)
            # 2-5. generate → (teacher log-probs →) score → learn, streamed: chunks of finished groups are scored as
            # they arrive and go straight into gradient accumulation; one optimizer step per batch
            chunks, trained = rl.learn(step, version)
            version = step + 1
            # 6. log: metrics, events, the console line (non-finite steps were skipped by DeepSpeed)
            rl.log_step(step, version, chunks, trained, sync_stats, t_step)
            # 7. checkpoint (every run.checkpoint_every steps or run.checkpoint_every_minutes, and at the end)
            if checkpoints.due(version):
                checkpoints.save(version)
    except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C, SIGTERM from `ray job stop`, or any failure
        rl.stop_with_checkpoint(exc, step, version, start, checkpoints)  # raises, after saving what it can
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.close()
        rl.shutdown()
    return 0


if __name__ == "__main__":
    from rlt_ray.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "train_rlt"))
