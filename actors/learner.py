"""The learner: N Ray actors (one per rank) in a placement group, forming their own torch.distributed group
(gloo on CPU, nccl on GPU) and one DeepSpeed engine (ZeRO stage and dtype from config).

A rank owns the policy (DeepSpeed, built by rlt_ray.models.deepspeed_engine as Ray Train's SFT workers build it),
the reference model and its mixup; it runs the GRPO loss over its share of the step's batch as the batch arrives
(begin_step / accumulate / finish_step: gradient accumulation, one optimizer step per batch; train_step does all
three for a batch at hand), exports HF-named weights for the weight sync (under ZeRO-3 every rank joins the gather)
and writes/reads checkpoints. ``LearnerGroup`` starts the ranks and fans calls out to all of them. One idea, in more
than 400 lines: the learner group.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import ray
import torch

from actors import actor_options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


# "probe": the driver's ping (LearnerGroup.who_is_alive) runs on a thread of its own, so a rank answers while its
# main calls wait in a collective; every other method runs, one at a time, in the default group
@ray.remote(concurrency_groups={"probe": 1})
class LearnerRank:
    def __init__(self, cfg: Any, rank: int, world: int):
        self.cfg, self.rank, self.world = cfg, rank, world
        # learner.max_tokens_per_micro_batch: packed micro-batches by a token budget (0/None: learner.micro_batch_size)
        self.budget = int(cfg.learner.max_tokens_per_micro_batch or 0)
        self.optimizer_steps = 0
        self.sync_group = None
        self.sync_buffer: torch.Tensor | None = None  # rank 0's packing buffer, kept from sync to sync
        self.sync_host_buffer: torch.Tensor | None = None  # its pinned host copy (object-store sync from a GPU)

    @ray.method(concurrency_group="probe")
    def ping(self) -> int:
        return os.getpid()

    def free_address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """The teacher as a DeepSpeed engine (rlt_ray.models.deepspeed_engine, the builder SFT shares) and its reference."""
        from rlt_ray.config import temperatures, trained_model
        from rlt_ray.models.deepspeed_engine import build_engine, build_reference, init_distributed, learner_device
        from rlt_ray.models.registry import load_tokenizer, pad_token_id

        cfg = self.cfg
        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world), LOCAL_RANK="0",
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        self.device = learner_device(cfg)
        init_distributed(cfg, self.rank, self.world, master_addr, master_port)
        torch.manual_seed(cfg.run.seed + self.rank)
        self.temperatures = temperatures(cfg)
        self.model_name = trained_model(cfg)  # the teacher (reward.kind=rlt) or the student (verifier)
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or self.model_name)
        self.pad_id = pad_token_id(self.tokenizer)
        self.engine, self._zero3_init = build_engine(cfg, self.model_name, self.world)
        self.ref = build_reference(cfg, cfg.model.reference or self.model_name, self.world, self.device)
        return {"rank": self.rank, "pid": os.getpid(), "node": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), **self.local_parameter_bytes()}

    def local_parameter_bytes(self) -> dict[str, int]:
        """Bytes of the policy's and the reference's parameters this rank holds (a ZeRO-3 shard, or all)."""
        def held(module) -> int:
            if module is None:
                return 0
            return sum(int(getattr(p, "ds_tensor", p).numel()) * p.element_size() for p in module.parameters())
        full = sum(int(getattr(p, "ds_numel", p.numel())) * p.element_size() for p in self.hf_model.parameters())
        return {"policy_bytes": held(self.hf_model), "reference_bytes": held(self.ref), "model_bytes": full}

    # -- parameters ---------------------------------------------------------------------------------------

    @property
    def hf_model(self) -> torch.nn.Module:
        return self.engine.module.model

    def _gathered(self, params: Sequence[torch.nn.Parameter]):
        from rlt_ray.models.deepspeed_engine import gathered

        return gathered(params, self.cfg.learner.zero_stage)

    def weight_spec(self) -> dict:
        dtype = self.cfg.model.dtype
        return {n: (tuple(getattr(p, "ds_shape", p.shape)), dtype) for n, p in self.hf_model.named_parameters()}

    def _send_buckets(self, layout: list, device, send, to_host: bool = False) -> int:
        """Gather (ZeRO-3), pack and ``send`` each bucket of ``layout``, one at a time: every rank must call this
        (the gathers are collective); only rank 0 packs and sends. Returns the peak bytes of packed buckets alive
        at once (rank 0)."""
        from rlt_ray.infra.weight_sync import BufferMeter, bucket_nbytes, pack_to_host

        params = dict(self.hf_model.named_parameters())
        meter = BufferMeter()
        host = None
        if self.rank == 0:
            # one buffer of the largest bucket, kept from sync to sync: ``send`` is done with a bucket's bytes
            # when it returns (ray.put copies them; a broadcast is waited on, or stream-ordered on GPU)
            size = max(bucket_nbytes(m) for m in layout)
            buffer = self.sync_buffer
            if buffer is None or buffer.numel() < size or buffer.device.type != torch.device(device).type:
                buffer = self.sync_buffer = torch.empty(size, dtype=torch.uint8, device=device)
            meter.track(buffer)
            if to_host and buffer.device.type != "cpu":  # the object store's bytes are on the host: one pinned
                host = self.sync_host_buffer  # staging buffer, one transfer per bucket (pack_to_host)
                if host is None or host.numel() < size:
                    host = self.sync_host_buffer = torch.empty(size, dtype=torch.uint8, pin_memory=True)
                meter.track(host)
        for metas in layout:
            with self._gathered([params[name] for name, *_ in metas]):
                if self.rank == 0:
                    send(pack_to_host(params, metas, buffer, host))
        return meter.peak

    def export_weights(self, layout: list) -> tuple[list, int] | None:
        """Object-store sync: rank 0 gathers, packs (on its device) and puts each bucket in the object store, one
        at a time; returns (bucket refs, peak bytes of packed buckets alive at once)."""
        refs: list = []
        peak = self._send_buckets(layout, self.device, lambda flat: refs.append(ray.put(flat.numpy())), to_host=True)
        return (refs, peak) if self.rank == 0 else None

    def join_sync_group(self, backend: str, host: str, port: int, rank: int, world: int, timeout_s: float):
        from rlt_ray.infra.weight_sync import open_group

        self.sync_group = open_group(backend, host, port, rank, world, timeout_s)

    def broadcast_weights(self, layout: list) -> int | None:
        """Collective sync: rank 0 gathers, packs and broadcasts each bucket to the engines (gloo here, nccl on
        GPU), one at a time; returns the peak bytes of packed buckets alive at once."""
        from rlt_ray.infra.weight_sync import broadcast

        device = self.device if self.cfg.resources.backend == "nccl" else "cpu"
        peak = self._send_buckets(layout, device, lambda flat: broadcast(self.sync_group, flat))
        return peak if self.rank == 0 else None

    def leave_sync_group(self) -> None:
        from rlt_ray.infra.weight_sync import close_group

        group, self.sync_group = self.sync_group, None
        close_group(group, self.cfg.resources.backend)

    # -- the step -----------------------------------------------------------------------------------------

    def completion_logprobs(self, rollout_refs: Sequence[ray.ObjectRef], temperature: float,
                            prompt_tail: int = 0) -> dict[int, np.ndarray]:
        """Policy log-probs of this rank's shard (index over the whole step → array): the teacher term of the
        reward when reward.teacher_logprobs_from=learner. Each array holds the log-probs of the prompt's last
        ``prompt_tail`` tokens (the padding the reference's explanation span starts with), then the completion's."""
        from rlt_ray.data.rollout_batch import concat_rollouts

        batch = concat_rollouts(ray.get(list(rollout_refs)))
        micro, chunks = self._micro_batches(batch, [(0, len(batch["completion_ids"]))], prompt_tail)
        out = {}
        self.engine.eval()
        with torch.no_grad():
            for idx, c in zip(micro, chunks):
                # an empty micro-batch is a forward all the same: ZeRO-3 gathers parameters in every rank's together
                ids, attn, mask, _ = self._tensors(batch, idx)
                for row, i in enumerate(idx):
                    p = len(batch["prompt_ids"][i // batch["n"]])
                    mask[row, max(1, p - prompt_tail):p] = True
                lp = self.engine(ids, attn, mask, float(temperature), packed=bool(self.budget), chunks=c).cpu()
                for row, i in enumerate(idx):
                    out[i] = lp[row][mask[row].cpu()].numpy()
        self.engine.train()
        return out

    def prompt_tail_logprobs(self, prompts: Sequence[Sequence[int]], tail: int,
                             temperature: float) -> dict[bytes, np.ndarray]:
        """{prompt key: policy log-probs of its last ``tail`` tokens} for this rank's share of ``prompts`` (the
        teacher side of the padding that ends the RL prompt, with reward.teacher_logprobs_from=rollout: vLLM gives
        prompt log-probs only at temperature 1). One forward per prompt, the same count on every rank (ZeRO-3)."""
        from rlt_ray.method.logprobs import pad_batch
        from rlt_ray.method.scoring import prompt_key

        per = -(-len(prompts) // self.world)
        mine = [(self.rank + self.world * j) % len(prompts) for j in range(per)]
        out = {}
        self.engine.eval()
        with torch.no_grad():
            for i in mine:
                ids, attn = pad_batch([list(prompts[i])], self.pad_id, self.device)
                mask = torch.zeros_like(ids, dtype=torch.bool)
                mask[0, max(1, len(prompts[i]) - tail):] = True
                lp = self.engine(ids, attn, mask, float(temperature)).cpu()
                out[prompt_key(prompts[i])] = lp[0][mask[0].cpu()].numpy()
        self.engine.train()
        return out

    def train_step(self, rollout_refs: Sequence[ray.ObjectRef], scored_refs: Sequence[ray.ObjectRef]) -> dict[str, float]:
        """One whole batch in one call: begin_step, accumulate everything, finish_step."""
        from rlt_ray.data.rollout_batch import loss_denominator

        self.begin_step()
        rollouts = ray.get(list(rollout_refs))
        lengths = [len(c) for r in rollouts for c in r["completion_ids"]]
        parts, offset = [], 0
        for rollout, r, s in zip(rollouts, rollout_refs, scored_refs):
            parts.append((offset, r, s))
            offset += len(rollout["completion_ids"])
        denominator = loss_denominator(self.cfg.grpo.loss_aggregation, offset, sum(lengths), self.world)
        self.accumulate(parts, 0, offset, denominator, final=True)
        return self.finish_step()

    def begin_step(self) -> None:
        """Start a batch that arrives in parts (accumulate); the optimizer steps once, at its end."""
        self.batch = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "finish_reason": [], "n": None}
        self.advantages: list[torch.Tensor] = []
        self.ranges: list[tuple[int, int]] = []  # the [start, stop) of each accumulate call: the passes replan them
        self.sums = {"loss": 0.0, "kl_sum": 0.0, "tokens": 0.0, "clip_fraction": 0.0, "micro_batches": 0,
                     "seconds": 0.0, "denominator": None, "update_ratio": float("nan"), "stepped": False}

    def accumulate(self, parts: Sequence[tuple[int, ray.ObjectRef, ray.ObjectRef]], start: int, stop: int,
                   denominator: float, final: bool = False) -> int:
        """Forward/backward for this rank's share of the batch's sequences [start, stop) (_micro_batches: equal
        counts, or packed and balanced by tokens), with gradient accumulation. ``parts``: the (offset, rollout,
        scored) parts not sent before, appended at their offsets (whole GRPO groups, so advantages need nothing
        else). Every rank gets the same calls in the same order, and the same number of micro-batches per call
        (rlt_ray.data.rollout_batch.learnable_stop, or the packed plan's): ZeRO's collectives stay in lockstep.
        ``denominator``: the whole batch's (rlt_ray.data.rollout_batch.loss_denominator), the same in every call. ``final``: the
        batch's last part, whose last micro-batch steps the optimizer."""
        from rlt_ray.data.rollout_batch import group_size
        from rlt_ray.method.grpo import group_advantages

        t0 = time.perf_counter()
        for offset, rollout_ref, scored_ref in parts:
            rollout, scored = ray.get([rollout_ref, scored_ref])
            if offset != len(self.batch["completion_ids"]):
                raise RuntimeError(f"learner rank {self.rank}: batch part at offset {offset} arrived after "
                                   f"{len(self.batch['completion_ids'])} sequences (parts must come in order)")
            n = group_size([rollout])
            if self.batch["n"] not in (None, n):
                raise RuntimeError(f"learner rank {self.rank}: parts disagree on the group size ({n} vs "
                                   f"{self.batch['n']})")
            self.batch["n"] = n
            for key in ("prompt_ids", "completion_ids", "logprobs", "finish_reason"):
                self.batch[key].extend(rollout[key])
            rewards = torch.tensor(np.asarray(scored["total"]))  # a copy: the object store's array is read-only
            self.advantages.append(group_advantages(rewards, n, self.cfg.grpo.advantage_eps))
        if self.sums["denominator"] not in (None, denominator):
            raise RuntimeError(f"learner rank {self.rank}: the loss denominator changed within a batch")
        self.sums["denominator"] = denominator
        # checked on counts alone, so every rank refuses the same way before touching anything
        planned = -(-((stop - start) // self.world) // self.cfg.learner.micro_batch_size)
        if not self.budget and self.sums["micro_batches"] + planned > self.engine.gradient_accumulation_steps():
            raise RuntimeError(f"learner rank {self.rank}: sequences [{start}, {stop}) go past the batch this "
                               f"group was set up for ({self.engine.gradient_accumulation_steps()} micro-batches "
                               f"per rank): the optimizer would step mid-batch")
        if stop > len(self.batch["completion_ids"]):
            raise RuntimeError(f"learner rank {self.rank}: sequences [{start}, {stop}) asked for, but only "
                               f"{len(self.batch['completion_ids'])} have arrived")
        advantages = torch.cat(self.advantages)
        plan, chunks = self._micro_batches(self.batch, [(start, stop)])
        self.ranges.append((start, stop))
        self._hold_before_collective()
        if self.cfg.run.fault_injection == f"collective_error@{self.optimizer_steps}" and self.rank == 0:
            # tests only (rlt_ray.config): gloo's error text from a rank whose peers are all alive
            raise RuntimeError("injected fault: [gloo/transport/tcp/pair.cc:553] Connection closed by peer")
        for k, (idx, c) in enumerate(zip(plan, chunks)):
            # packed plans set the optimizer's boundary themselves (their micro-batch count varies); else DeepSpeed
            # counts learner.micro_batch_size micro-batches
            boundary = (final and k == len(plan) - 1) if self.budget else None
            self._learn_micro_batch(idx, advantages, denominator, boundary, c)
        self.sums["seconds"] += time.perf_counter() - t0
        return sum(len(idx) for idx in plan)

    def finish_step(self) -> dict[str, float]:
        """End the batch: the further passes of grpo.updates_per_batch over the whole batch, the reference
        mixup when due; this rank's metrics."""
        t0 = time.perf_counter()
        g, sums = self.cfg.grpo, self.sums
        if self.budget and not sums["stepped"]:
            raise RuntimeError(f"learner rank {self.rank}: the batch ended without its final part "
                               f"(accumulate(final=True)): the optimizer did not step")
        expected = self.engine.gradient_accumulation_steps()
        if not self.budget and sums["micro_batches"] != expected:
            raise RuntimeError(f"learner rank {self.rank}: {sums['micro_batches']} micro-batches in this batch, "
                               f"{expected} expected per optimizer step: the optimizer did not step")
        grad_norms = [self._optimizer_stepped()]
        advantages = torch.cat(self.advantages)
        for _ in range(g.updates_per_batch - 1):
            plan, chunks = self._micro_batches(self.batch, self.ranges)
            for k, (idx, c) in enumerate(zip(plan, chunks)):
                boundary = k == len(plan) - 1 if self.budget else None
                self._learn_micro_batch(idx, advantages, sums["denominator"], boundary, c)
            grad_norms.append(self._optimizer_stepped())
        sums["seconds"] += time.perf_counter() - t0
        passes = g.updates_per_batch
        return {
            "loss": sums["loss"] / passes,  # this rank's part; the group mean is the batch loss
            "kl": sums["kl_sum"] / max(1.0, sums["tokens"]),
            "clip_fraction": sums["clip_fraction"] / max(1.0, sums["tokens"]),
            "tokens": sums["tokens"],
            "grad_norm": grad_norms[-1],
            "update_ratio": sums["update_ratio"],  # the last optimizer step's ||Δθ|| / ||θ||
            "lr": float(self.engine.get_lr()[0]),
            "optimizer_steps": self.optimizer_steps,
            "seconds": sums["seconds"],
        }

    def _micro_batches(self, batch: dict, ranges: Sequence[tuple[int, int]],
                       prompt_tail: int = 0) -> tuple[list[list[int]], list[int | None]]:
        """This rank's micro-batches of the rows in ``ranges``, and how many output-projection calls each makes.
        Packed (learner.max_tokens_per_micro_batch): rlt_ray.method.packing.plan, balanced over the ranks by tokens, some
        maybe empty. Else equal contiguous shards of each range in learner.micro_batch_size rows. Every rank plans
        every rank's micro-batches (the same data, the same plan), so under ZeRO-3 each makes as many projection
        calls as the rank with the most targets at that micro-batch (rlt_ray.method.packing.head_chunks)."""
        from rlt_ray.data.rollout_batch import micro_batches, rank_shard
        from rlt_ray.method.packing import head_chunks, plan

        rows = [i for a, b in ranges for i in range(a, b)]
        completion = {i: len(batch["completion_ids"][i]) for i in rows}
        if self.budget:
            full = {i: len(batch["prompt_ids"][i // batch["n"]]) + completion[i] for i in rows}
            plans = plan(rows, full, self.world, self.budget, balance=bool(self.cfg.learner.balance_ranks))
        else:
            plans = [micro_batches([i for a, b in ranges for i in rank_shard(b - a, r, self.world, a)], completion,
                                   self.cfg.learner.micro_batch_size) for r in range(self.world)]
        if self.cfg.learner.zero_stage != 3:
            return plans[self.rank], [None] * len(plans[self.rank])
        return plans[self.rank], head_chunks(plans, {i: completion[i] + prompt_tail for i in rows})

    def _tensors(self, batch: dict, idx: list[int]):
        """policy_tensors of the rows ``idx``; for an empty micro-batch (a rank with fewer rows than the plan's
        micro-batches), the batch's shortest row with one target token, which its caller weights 0."""
        from rlt_ray.data.rollout_batch import policy_tensors

        if idx:
            return policy_tensors(batch, idx, self.pad_id, self.device)
        shortest = min(range(len(batch["completion_ids"])), key=lambda i: len(batch["completion_ids"][i]))
        ids, attn, mask, old = policy_tensors(batch, [shortest], self.pad_id, self.device)
        first = int(mask[0].nonzero()[0])
        mask[0, first + 1:] = False
        return ids, attn, mask, old

    def _learn_micro_batch(self, idx: list[int], advantages: torch.Tensor, denominator: float,
                           boundary: bool | None = None, chunks: int | None = None) -> None:
        """Forward and backward of the rows ``idx``. ``boundary`` (packed plans, whose micro-batch count varies):
        whether this is the batch's last micro-batch, the one whose step() steps the optimizer; None: DeepSpeed
        counts (learner.micro_batch_size). An empty ``idx`` (a rank with fewer rows than the plan's micro-batches)
        runs the batch's shortest row at weight 0, so that every rank joins every ZeRO collective."""
        from rlt_ray.method.grpo import policy_loss
        from rlt_ray.method.logprobs import token_logprobs

        g = self.cfg.grpo
        packed = bool(self.budget)
        if boundary is not None:
            self.engine.set_gradient_accumulation_boundary(boundary)
            self.sums["stepped"] |= boundary
        weight = 1.0 if idx else 0.0
        temperature = self.temperatures["policy"]
        ids, attn, mask, old = self._tensors(self.batch, idx)
        if not idx:  # the stand-in row's advantage (weighted 0 below)
            idx = [min(range(len(self.batch["completion_ids"])), key=lambda i: len(self.batch["completion_ids"][i]))]
        logp = self.engine(ids, attn, mask, temperature, packed=packed, chunks=chunks)
        ref_logp = None
        if g.beta:
            with torch.no_grad():
                ref_logp = token_logprobs(self.ref, ids, attn, mask, temperature, packed=packed, chunks=chunks)
        loss, m = policy_loss(logp, mask, advantages[idx].to(self.device), ref_logp, g.beta, g.loss_aggregation,
                              old if g.clip_eps is not None else None, g.clip_eps, denominator)
        if not weight:
            loss, m = loss * 0.0, {"tokens": 0.0}
        if self.cfg.run.fault_injection == f"nan_loss@{self.optimizer_steps}":  # tests only (rlt_ray.config)
            loss = loss * float("nan")
        self.engine.backward(loss, scale_wrt_gas=False)  # the denominator already scales
        before = self._held_parameters_copy() if self.engine.is_gradient_accumulation_boundary() else None
        self.engine.step()  # steps the optimizer at the accumulation boundary only
        if before is not None:
            self.sums["update_ratio"] = self._update_ratio(before)
        self.sums["loss"] += float(loss.detach())
        self.sums["kl_sum"] += m.get("kl_sum", 0.0)
        self.sums["tokens"] += m["tokens"]
        self.sums["clip_fraction"] += m.get("clip_fraction", 0.0) * m["tokens"]
        self.sums["micro_batches"] += 1

    def _held_parameters(self) -> list[torch.Tensor]:
        """This rank's share of the policy's parameters, for ||Δθ|| / ||θ||: its ZeRO-3 partitions, or (ZeRO 0-2,
        where every rank holds every parameter) every world-th parameter, so the copy costs 1/world of the model."""
        params = list(self.hf_model.parameters())
        if self.cfg.learner.zero_stage == 3:
            return [p.ds_tensor for p in params]
        return [p for i, p in enumerate(params) if i % self.world == self.rank]

    def _held_parameters_copy(self) -> list[torch.Tensor]:
        return [t.detach().clone() for t in self._held_parameters()]

    def _update_ratio(self, before: list[torch.Tensor]) -> float:
        """||θ_after − θ_before|| / ||θ_after|| over the whole policy (the ranks' sums added): the relative size of
        the optimizer step, which a learning rate too high for RL (every weight moved by about lr at once) shows."""
        sums = torch.zeros(2, dtype=torch.float64, device=before[0].device if before else self.device)
        for old, new in zip(before, self._held_parameters()):
            sums[0] += (new.detach().double() - old.double()).pow(2).sum()
            sums[1] += new.detach().double().pow(2).sum()
        if self.world > 1:
            torch.distributed.all_reduce(sums)
        return float(sums[0].sqrt() / sums[1].sqrt().clamp(min=1e-30))

    def _hold_before_collective(self) -> None:
        """Tests only (run.fault_injection=learner_hold@<step>): the last rank stops before its first gradient
        collective of that step and waits to be killed, while the other ranks wait in the collective for it. It
        writes <run.output_dir>/fault_hold (its node id) so that a test knows when, and which node, to remove; a
        restarted run finds the file and does not hold again."""
        if self.cfg.run.fault_injection != f"learner_hold@{self.optimizer_steps}" or self.rank != self.world - 1:
            return
        marker = Path(self.cfg.run.output_dir) / "fault_hold"
        if self.sums["micro_batches"] or marker.exists():  # before the step's first micro-batch, once per run
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(ray.get_runtime_context().get_node_id())
        time.sleep(3600)

    def _optimizer_stepped(self) -> float:
        """Bookkeeping after a pass whose last micro-batch stepped the optimizer: the count, the mixup when due;
        returns the pass's gradient norm."""
        self.optimizer_steps += 1
        norm = self.engine.get_global_grad_norm()
        if self.cfg.grpo.ref_mixup_every and self.optimizer_steps % self.cfg.grpo.ref_mixup_every == 0:
            self._mixup()
        return float(norm) if norm is not None else float("nan")

    def save_hf(self, path: str) -> None:
        from rlt_ray.models.deepspeed_engine import save_hf

        save_hf(self.cfg, self.hf_model, self.tokenizer, path, self.rank)

    def _mixup(self) -> None:
        policy = dict(self.hf_model.named_parameters())
        ref = dict(self.ref.named_parameters())
        if policy.keys() != ref.keys():
            raise RuntimeError("reference and policy models have different parameter names; cannot mix them up")
        from rlt_ray.method.grpo import mixup_

        if self.cfg.learner.zero_stage == 3:
            # both models are ZeRO-3 partitioned the same way: the mixup shard by shard is the whole-model
            # mixup, with no gather
            mixup_([ref[n].ds_tensor for n in policy], [policy[n].ds_tensor for n in policy],
                   self.cfg.grpo.ref_mixup_alpha)
            return
        mixup_([ref[n] for n in policy], [policy[n] for n in policy], self.cfg.grpo.ref_mixup_alpha)

    def _load_reference_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.cfg.learner.zero_stage != 3:
            self.ref.load_state_dict({k: v.to(self.device) for k, v in state.items()}, strict=True)
            return
        import deepspeed

        for name, p in self.ref.named_parameters(remove_duplicate=False):
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):  # rank 0's values are re-partitioned
                if self.rank == 0:
                    p.data.copy_(state[name].to(p.device, p.dtype))

    # -- checkpoints --------------------------------------------------------------------------------------

    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its DeepSpeed shard and RNG state; rank 0 the HF teacher and the reference."""
        from safetensors.torch import save_file

        from rlt_ray.models.deepspeed_engine import full_state, save_rng

        ckpt = Path(path)
        ckpt.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(ckpt / "deepspeed"), tag="state",
                                    client_state={"optimizer_steps": self.optimizer_steps})
        save_rng(ckpt, self.rank)
        self.save_hf(str(ckpt / "hf"))
        ref_state = full_state(self.ref, self.rank, self.cfg.learner.zero_stage)
        if self.rank == 0:
            save_file({k: v.contiguous() for k, v in ref_state.items()}, str(ckpt / "reference.safetensors"))
        torch.distributed.barrier()

    def load_checkpoint(self, path: str) -> int:
        from safetensors.torch import load_file

        from rlt_ray.models.deepspeed_engine import load_rng

        ckpt = Path(path)
        _, client = self.engine.load_checkpoint(str(ckpt / "deepspeed"), tag="state")
        self.optimizer_steps = int((client or {}).get("optimizer_steps", 0))
        self._load_reference_state(load_file(str(ckpt / "reference.safetensors")))
        load_rng(ckpt, self.rank)
        return self.optimizer_steps


class LearnerGroup:
    """Starts ``resources.learner_ranks`` LearnerRank actors in one placement group and calls them together."""

    def __init__(self, cfg: Any, name: str | None = None):
        """``name``: the ranks are named actors ``<name>:learner:<rank>`` (found by operators and tests)."""
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlt_ray.config.placement import placement

        r = cfg.resources
        self.world = int(r.learner_ranks)
        labels, custom = placement(cfg, "learner")  # resources.learner_placement (rlt_ray.config.placement)
        bundle = {"CPU": float(r.cpus_per_actor), **custom}
        if r.gpus_per_actor:
            bundle["GPU"] = float(r.gpus_per_actor)
        self.pg = placement_group([dict(bundle) for _ in range(self.world)], strategy=str(r.learner_strategy),
                                  bundle_label_selector=[dict(labels) for _ in range(self.world)] if labels else None)
        try:
            ray.get(self.pg.ready(), timeout=float(r.placement_timeout_s))
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.pg)
            raise RuntimeError(
                f"config section 'resources': could not place {self.world} learner ranks of {bundle} within "
                f"{r.placement_timeout_s:g}s (cluster: {ray.cluster_resources()}); lower resources.learner_ranks "
                f"or resources.*_per_actor, or add nodes") from None
        self.ranks = [
            LearnerRank.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
                name=f"{name}:learner:{i}" if name else None, **actor_options(cfg)).remote(cfg, i, self.world)
            for i in range(self.world)
        ]
        host, port = ray.get(self.rank0.free_address.remote())
        self.info = ray.get([rank.setup.remote(host, port) for rank in self.ranks])

    @property
    def rank0(self):
        return self.ranks[0]

    def who_is_alive(self, timeout_s: float) -> list[str]:
        """Each rank's state after a failure (rlt_ray.infra.cluster.who_is_alive): its ping, answered on the rank's probe
        thread, and its node in Ray's node table."""
        from rlt_ray.infra.cluster import who_is_alive

        return who_is_alive(ray, [rank.ping.remote() for rank in self.ranks],
                            [info["node_id"] for info in self.info], timeout_s)

    def call(self, method: str, *args, **kwargs) -> list[ray.ObjectRef]:
        return [getattr(rank, method).remote(*args, **kwargs) for rank in self.ranks]

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for rank in self.ranks:
            ray.kill(rank)
        remove_placement_group(self.pg)
