"""One Ray actor per file: learner.py (DeepSpeed rank + LearnerGroup), rollout.py (vLLM), student.py (scorer)."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

# Forwarded from the driver to every actor: caches (no recompiles, no downloads) and offline switches.
FORWARDED_ENV = ("RLT_CACHE", "TORCH_EXTENSIONS_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")
FORWARDED_PREFIXES = ("NCCL_", "TORCH_NCCL_", "GLOO_")


def actor_options(cfg: Any, gpus: float | None = None, extra_env: dict[str, str] | None = None,
                  role: str | None = None) -> dict[str, Any]:
    """num_cpus / num_gpus / runtime_env for one actor of the run (merged with a submitted job's runtime_env);
    with ``role`` (rollout, scorer) also where it may run (resources.<role>_placement: rlt_ray.config.placement)."""
    from rlt_ray.config.placement import role_options

    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    # NCCL's and torch's NCCL settings (NCCL_SOCKET_IFNAME, NCCL_DEBUG, TORCH_NCCL_...): the operator's, everywhere
    env.update({k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra_env or {})
    return {
        "num_cpus": float(cfg.resources.cpus_per_actor),
        "num_gpus": float(cfg.resources.gpus_per_actor if gpus is None else gpus),
        "runtime_env": {"env_vars": env},
        **(role_options(cfg, role) if role else {}),
    }


class ActorSlots:
    """A fixed number of actor slots. A dead actor is replaced in its slot by a new one (a new name, since a
    named actor's name stays taken until it is gone); ``generation`` counts the replacements."""

    def __init__(self, make: Callable[[int, int], Any], count: int, kind: str = "actor",
                 ready_timeout_s: float = 900.0, wait: bool = True):
        """``wait=False``: the actors are created (they start loading at once) and ``wait_ready`` waits for them,
        so that the caller can start something else meanwhile."""
        self.make, self.kind, self.ready_timeout_s = make, kind, ready_timeout_s
        self.generation = [0] * count
        self.actors = [make(i, 0) for i in range(count)]
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        for i in range(len(self.actors)):
            self._wait_ready(i)

    def _wait_ready(self, i: int) -> None:
        """Wait for slot i's actor to start, at most ready_timeout_s (a model that never loads, a GPU that never
        frees, a placement that cannot be met), naming it. An actor that dies before it is ready is made again
        (a new generation) while time is left: after a node is lost, Ray can place the replacement on that node
        before it is declared dead, and cancels it there ("the actor never ran")."""
        import time

        import ray

        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                ray.get(self.actors[i].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except ray.exceptions.RayActorError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
                self.generation[i] += 1
                self.actors[i] = self.make(i, self.generation[i])
            except ray.exceptions.GetTimeoutError:
                from rlt_ray.errors import RunStopped

                raise RunStopped(f"{self.kind} {i} (generation {self.generation[i]}) was not ready after "
                                 f"{self.ready_timeout_s:.0f} s: its resources may be missing, or its model may "
                                 f"not load (see its log in the Ray dashboard)") from None

    def __len__(self) -> int:
        return len(self.actors)

    def __getitem__(self, i: int) -> Any:
        return self.actors[i]

    def replace(self, i: int) -> Any:
        import ray

        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.generation[i] += 1
        self.actors[i] = self.make(i, self.generation[i])
        self._wait_ready(i)
        return self.actors[i]

    def who_is_alive(self, indices: list[int], timeout_s: float) -> list[str]:
        """The state of these slots' actors after a failure (rlt_ray.infra.cluster.who_is_alive): a ping, queued behind
        the actor's own calls, answered or failed, or silent past ``timeout_s``."""
        import ray

        from rlt_ray.infra.cluster import ping, who_is_alive

        return who_is_alive(ray, [ping(self.actors[i]) for i in indices], None, timeout_s)

    def kill_all(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass


def stage_trace(stage: str, batch: dict[str, Any]) -> None:
    """One line per batch in the actor's log file (Ray's worker-*.err; on the console with --verbose): which
    rows a replica started on. What a stop cost is read from these lines (the rows started and never written)."""
    if "index" in batch:
        print(f"{stage}: rows {[int(i) for i in batch['index']]}", file=sys.stderr, flush=True)
