"""Connecting a job to Ray, and the jobs' command-line wrapper (clear errors, exit code 2, no traceback)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional
from rlt_ray.errors import LearnerLost


# vLLM's errors when its engine core process is gone: the actor lives on, but its engine never works again
ENGINE_DEAD_ERRORS = ("EngineDeadError",)


def cause_chain(exc: BaseException, context: bool = True, limit: int = 10):
    """``exc`` and what caused it: a RayTaskError's ``cause`` (the actor's own exception), ``__cause__`` and,
    with ``context``, ``__context__`` (an exception raised while handling another), at most ``limit`` deep."""
    cause, seen = exc, 0
    while cause is not None and seen < limit:
        yield cause
        cause = getattr(cause, "cause", None) or cause.__cause__ or (cause.__context__ if context else None)
        seen += 1


def worker_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the worker must be replaced: its actor died, or its vLLM engine core did (Ray
    reports that as a RayTaskError wrapping vLLM's EngineDeadError). Any other error is the caller's."""
    import ray

    if isinstance(exc, ray.exceptions.RayActorError):
        return True
    if any(type(cause).__name__ in ENGINE_DEAD_ERRORS for cause in cause_chain(exc)):
        return True
    return isinstance(exc, ray.exceptions.RayTaskError) and any(name in str(exc) for name in ENGINE_DEAD_ERRORS)


# The errors a surviving rank sees when a peer of its collective is gone: gloo's and NCCL's, as torch.distributed
# raises them (types by name: torch.distributed's DistError family; texts: gloo's TCP transport and NCCL's own).
# Seeing one does not decide anything: who died does (who_is_alive). It only words the message of a collective
# error while every rank is alive, which is a real error and not a lost node.
COLLECTIVE_ERROR_TYPES = ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")
COLLECTIVE_ERROR_TEXTS = (
    "gloo/transport",  # gloo's TCP pairs: "Connection closed by peer", "Connection reset by peer", timeouts
    "Connection closed by peer", "Connection reset by peer", "Broken pipe",
    "NCCL error", "ncclRemoteError", "ncclSystemError", "ncclInternalError", "ncclUnhandledCudaError",
    "Watchdog caught collective operation timeout", "NCCL communicator was aborted", "ProcessGroupNCCL",
    "remote process exited or there was a network error",
)

# What who_is_alive says of each actor
ALIVE, DEAD, NODE_LOST, UNRESPONSIVE = "alive", "dead", "node lost", "unresponsive"


def collective_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a torch.distributed collective failing: gloo or NCCL."""
    for cause in cause_chain(exc):
        if type(cause).__name__ in COLLECTIVE_ERROR_TYPES:
            return True
        if any(text in str(cause) for text in COLLECTIVE_ERROR_TEXTS):
            return True
    return False


def _pid(_actor) -> int:
    return os.getpid()


def ping(actor):
    """An ObjectRef that resolves once ``actor`` runs a trivial call (after the calls queued before it), or fails
    with Ray's actor error when it is gone: any actor, no method of its own needed."""
    return actor.__ray_call__.remote(_pid)


def who_is_alive(ray, pings: list, node_ids: Optional[list] = None, timeout_s: float = 60.0,
                 poll_s: float = 0.5) -> list[str]:
    """Ask who died: ``pings`` holds one ObjectRef per actor, of a call that returns at once (the learner ranks
    answer on a thread of their own, even while they wait in a collective). Each actor is ALIVE when its ping
    returns, DEAD when the ping fails (Ray's actor error), NODE_LOST when Ray's node table says its node
    (``node_ids[i]``) is gone, UNRESPONSIVE when none of these is known after ``timeout_s``. Polled every
    ``poll_s``: when a node crashes, the survivors' collective errors arrive seconds before Ray declares it dead."""
    status: list[Optional[str]] = [None] * len(pings)
    pending = {ref: i for i, ref in enumerate(pings)}
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_s)
        for ref in ready:
            i = pending.pop(ref)
            try:
                ray.get(ref)
                status[i] = ALIVE
            except Exception:  # RayActorError (dead, or unavailable for good), ObjectLostError: it cannot answer
                status[i] = DEAD
        if pending and node_ids:
            alive_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            for ref, i in list(pending.items()):
                if node_ids[i] is not None and node_ids[i] not in alive_nodes:
                    status[i] = NODE_LOST
                    del pending[ref]
        if pending and time.monotonic() >= deadline:
            for i in pending.values():
                status[i] = UNRESPONSIVE
            break
    return [s or UNRESPONSIVE for s in status]


def lost(status: list[str]) -> list[int]:
    """The members who_is_alive did not find alive: dead, on a lost node, or silent past its timeout."""
    return [i for i, s in enumerate(status) if s != ALIVE]


def describe_lost(status: list[str], what: str) -> str:
    """'learner rank 1 (node lost)', 'learner ranks 0 (dead), 1 (node lost)'."""
    gone = [f"{i} ({status[i]})" for i in lost(status)]
    return f"{what}{'s' if len(gone) > 1 else ''} {', '.join(gone)}"


def restartable(exc: BaseException) -> bool:
    """Whether a stopped run may start again from its checkpoint (run.max_restarts): it lost learners, or an
    actor or an object with a node (Ray's own errors), not a bug, a bad input or a stop it asked for."""
    import ray

    if isinstance(exc, LearnerLost):
        return True
    lost = (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)
    return any(isinstance(cause, lost) for cause in cause_chain(exc, context=False))


def verbose() -> bool:
    """``--verbose`` on a job's command line (run_cli) or RLT_VERBOSE=1: the libraries' logs on the console."""
    return os.environ.get("RLT_VERBOSE", "0") not in ("0", "", "false", "False")


def quiet_library_bars() -> None:
    """Unless verbose(): no progress bars from datasets and transformers (dataset splits, checkpoint shards, a first
    model build's 'Writing model shards') in this process; the console's lines are the job's own stages."""
    if verbose():
        return
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def use_project_root(entrypoint: str) -> Path:
    """Put the project's root (the folder above ``entrypoint``'s) on the import path. actors/, serve/ and jobs/
    are folders of the repo, not installed packages: generic names like these would collide in site-packages.
    An entrypoint run as a script (python jobs/train_rlt.py, from any folder) calls this first. The root goes on
    this process's sys.path and, through PYTHONPATH, on the path of what it starts: a local Ray and its workers,
    vLLM's processes, subprocesses. On a running cluster, `ray job submit --working-dir .` does the same."""
    root = Path(entrypoint).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(root) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *[p for p in paths if p]])
    return root


def connect_ray():
    """Inside `ray job submit` (RAY_ADDRESS set): the job's cluster. Otherwise a local Ray of our own, never
    someone else's cluster by accident. A caller that already called ray.init (tests, notebooks) keeps its own.
    The actors' output (vLLM, DeepSpeed, Ray's own) stays in Ray's log files unless verbose(): the console shows
    the job's own lines; library_log_dir() says where the rest is."""
    import logging

    import ray

    if ray.is_initialized():
        return ray
    quiet = {} if verbose() else {"log_to_driver": False, "logging_level": logging.ERROR}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(**quiet)
    else:
        ray.init(address="local", **quiet)
    return ray


def library_log_dir(copy_to: Optional[Path] = None) -> Optional[Path]:
    """The folder of this (local) Ray session's logs: every actor's stdout/stderr, hence vLLM's and DeepSpeed's.
    With ``copy_to``: copy the actors' logs there (they outlive `ray stop`) and return that folder instead."""
    import shutil

    import ray

    try:
        logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    except Exception:  # not connected, or a remote cluster: its logs are in the dashboard
        return None
    if copy_to is None:
        return logs
    copy_to.mkdir(parents=True, exist_ok=True)
    for f in logs.iterdir():
        if f.is_file() and f.suffix in (".out", ".err", ".log"):
            shutil.copy2(f, copy_to / f.name)
    return copy_to


def job_help(main: Callable, name: str) -> str:
    """A job's --help: what it does (its module's docstring), the presets, the flags, and where the keys are."""
    from rlt_ray.config import REPO_ROOT

    doc = (sys.modules[main.__module__].__doc__ or "").strip()
    presets = []
    for path in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        presets.append(f"  {path.relative_to(REPO_ROOT)!s:36} {first[:80]}")
    return "\n".join([
        f"usage: {name} [--config PRESET] [key=value ...] [--allow-cpu-preset] [--verbose]", "", doc, "",
        "presets (--config; without it the CPU toy configs/tiny_cpu.yaml, and a line says so):", *presets, "",
        "  --allow-cpu-preset   run a resources.device=cpu config on a cluster that has GPUs",
        "  --verbose            Ray's, vLLM's and DeepSpeed's own logs on the console too", "",
        "every key, its default and what it does: python -m rlt_ray.config [SECTION] (or docs/config.md)"])


def run_cli(main: Callable[[list[str]], int], argv: list[str], name: str) -> int:
    """Run a job's main; errors of the user's making (config, data, models, checkpoints, weights) print one
    line naming the problem and exit 2."""
    from rlt_ray.errors import USER_ERRORS

    if "--help" in argv or "-h" in argv:
        print(job_help(main, name))
        return 0
    if "--verbose" in argv:  # the libraries' logs back on the console (connect_ray)
        os.environ["RLT_VERBOSE"] = "1"
        argv = [a for a in argv if a != "--verbose"]
    try:
        return main(argv)
    except USER_ERRORS as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
