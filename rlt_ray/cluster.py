"""Connecting a job to Ray, and the jobs' command-line wrapper (clear errors, exit code 2, no traceback)."""

from __future__ import annotations

import os
import sys
from typing import Callable


class RunStopped(RuntimeError):
    """The run cannot go on (e.g. a learner rank died); the message says what to do next."""


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
    from rlt_ray.models import ModelNotFoundError
    from rlt_ray.weight_sync import WeightSyncError

    try:
        return main(argv)
    except (ConfigError, CheckpointError, DataError, FormatError, ModelNotFoundError, WeightSyncError,
            RunStopped) as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
