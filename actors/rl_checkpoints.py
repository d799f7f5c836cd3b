"""The RL job's checkpoints: when they are due, and writing one (HF teacher + the full training state)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


class Checkpoints:
    """7. HF teacher + full training state, every run.checkpoint_every steps or run.checkpoint_every_minutes
    (whichever comes first) and at the end; COMPLETE is written last; then the oldest beyond
    run.keep_checkpoints are deleted (never the newest complete one)."""

    def __init__(self, ray: Any, cfg: Any, out: Path, step: Any):  # step: the run's RLStep
        self.ray, self.cfg, self.out, self.step = ray, cfg, out, step
        self.last = time.monotonic()

    def due(self, steps_done: int) -> bool:
        every, minutes = self.cfg.run.checkpoint_every, self.cfg.run.checkpoint_every_minutes
        return bool((every and steps_done % every == 0) or steps_done == self.cfg.run.steps
                    or (minutes and time.monotonic() - self.last >= 60 * minutes))

    def save(self, steps_done: int) -> None:
        from rlt_ray.infra.checkpoint import prune, step_dir, write_state
        from rlt_ray.config import to_yaml

        t0, cfg = time.perf_counter(), self.cfg
        ckpt = step_dir(self.out, steps_done)
        self.ray.get(self.step.learners.call("save_checkpoint", str(ckpt)))
        write_state(ckpt, {"step": steps_done, "weights_version": steps_done, "data_seed": cfg.data.seed,
                           "questions_per_step": cfg.run.questions_per_step, "config": to_yaml(cfg)})
        self.last = time.monotonic()
        self.step.log.trackers.artifact("checkpoint", ckpt)  # the newest one; the path, not an upload
        pruned = prune(self.out, cfg.run.keep_checkpoints)
        print(f"train_rlt: checkpoint {ckpt} ({time.perf_counter() - t0:.1f} s)"
              + (f"; deleted {', '.join(p.name for p in pruned)}" if pruned else ""), flush=True)
