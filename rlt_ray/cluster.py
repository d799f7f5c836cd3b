"""Connecting a job to Ray, and the jobs' command-line wrapper (clear errors, exit code 2, no traceback)."""

from __future__ import annotations

import os
import sys
from typing import Callable


class RunStopped(RuntimeError):
    """The run cannot go on; the message says what to do next (which checkpoint resumes it)."""


class LearnerLost(RunStopped):
    """A learner rank died: its state is gone, so the last checkpoint is where the run resumes."""


# vLLM's errors when its engine core process is gone: the actor lives on, but its engine never works again
ENGINE_DEAD_ERRORS = ("EngineDeadError",)


def worker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the worker must be replaced: its actor died, or its vLLM engine core did (Ray
    reports that as a RayTaskError wrapping vLLM's EngineDeadError). Any other error is the caller's."""
    import ray

    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    seen, cause = 0, exc
    while cause is not None and seen < 10:  # the cause chain: RayTaskError.cause, __cause__, __context__
        if type(cause).__name__ in ENGINE_DEAD_ERRORS:
            return True
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
        seen += 1
    return isinstance(exc, ray.exceptions.RayTaskError) and any(name in str(exc) for name in ENGINE_DEAD_ERRORS)


def connect_ray():
    """Inside `ray job submit` (RAY_ADDRESS set): the job's cluster. Otherwise a local Ray of our own, never
    someone else's cluster by accident. A caller that already called ray.init (tests, notebooks) keeps its own."""
    import ray

    if ray.is_initialized():
        return ray
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
    else:
        ray.init(address="local")
    return ray


def run_cli(main: Callable[[list[str]], int], argv: list[str], name: str) -> int:
    """Run a job's main; errors of the user's making (config, data, models, checkpoints, weights) print one
    line naming the problem and exit 2."""
    from rlt_ray.checkpoint import CheckpointError
    from rlt_ray.config import ConfigError
    from rlt_ray.data import DataError
    from rlt_ray.formats import FormatError
    from rlt_ray.memory import MemoryPlanError
    from rlt_ray.models import ModelNotFoundError
    from rlt_ray.weight_sync import WeightSyncError

    try:
        return main(argv)
    except (ConfigError, CheckpointError, DataError, FormatError, ModelNotFoundError, WeightSyncError,
            MemoryPlanError, RunStopped) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
