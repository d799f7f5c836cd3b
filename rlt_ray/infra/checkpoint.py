"""Checkpoint layout and bookkeeping (the learner actors write the heavy parts).

    <run.output_dir>/checkpoints/step_000025/
        hf/                 the teacher in HF format (config, safetensors, tokenizer): loads in transformers and vLLM
        deepspeed/          DeepSpeed engine, optimizer and LR-scheduler state of every rank
        reference.safetensors   the (mixed-up) reference model
        rng_rank{r}.pt      each learner rank's torch RNG state
        trainer_state.json  step, weights version, data seed, optimizer steps, the run's config
        COMPLETE            written last: a checkpoint without it is never resumed from
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional
from rlt_ray.errors import CheckpointError

COMPLETE = "COMPLETE"
STATE = "trainer_state.json"


def step_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:06d}"


def write_state(ckpt: Path, state: dict[str, Any]) -> None:
    tmp = ckpt / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    os.replace(tmp, ckpt / STATE)
    (ckpt / COMPLETE).write_text("")


def read_state(ckpt: Path) -> dict[str, Any]:
    if not (ckpt / COMPLETE).exists():
        raise CheckpointError(f"checkpoint {ckpt} is incomplete (no {COMPLETE} marker): it was interrupted while "
                              "being written; resume from an earlier one")
    return json.loads((ckpt / STATE).read_text())


def latest(output_dir: str | Path) -> Optional[Path]:
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists()) if root.exists() else []
    return done[-1] if done else None


def prune(output_dir: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints (run.keep_checkpoints; 0 keeps all), and any
    incomplete one older than the newest complete one (an interrupted write). The newest complete checkpoint is
    never deleted. Returns what was deleted."""
    import shutil

    root = Path(output_dir) / "checkpoints"
    if keep <= 0 or not root.exists():
        return []
    dirs = sorted(root.glob("step_*"))
    complete = [p for p in dirs if (p / COMPLETE).exists()]
    if not complete:
        return []
    kept = set(complete[-max(1, keep):])
    newest = complete[-1]
    gone = [p for p in dirs if p not in kept and p < newest]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def resolve_resume(resume_from: Optional[str], output_dir: str | Path) -> Optional[Path]:
    """run.resume_from: null (fresh run), "latest" (newest complete checkpoint of run.output_dir, or a fresh run
    when there is none), or a checkpoint folder."""
    if not resume_from:
        return None
    if resume_from == "latest":
        return latest(output_dir)
    path = Path(resume_from)
    if not path.is_dir():
        raise CheckpointError(f"config key 'run.resume_from': {resume_from!r} is not a checkpoint folder")
    read_state(path)
    return path


def check_resume_compatible(state: dict[str, Any], data_seed: int, questions_per_step: int) -> None:
    """The data order is a function of (data.seed, run.questions_per_step, step): resuming with other values
    would replay some questions and skip others, so it is refused."""
    for key, saved, now in (("data.seed", state.get("data_seed"), data_seed),
                            ("run.questions_per_step", state.get("questions_per_step"), questions_per_step)):
        if saved is not None and saved != now:
            raise CheckpointError(f"config key '{key}': the checkpoint was trained with {saved}, this run asks for "
                                  f"{now}; resuming would replay or skip questions. Use {saved}, or start a new run")
