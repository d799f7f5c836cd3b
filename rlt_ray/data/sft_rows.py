"""Supervised fine-tuning data and loss: the teacher warm-up and the student's SFT on distilled explanations.

Loss masks come from character spans (never a token template: the reference's template masking silently drops
examples on a BPE merge, the reference implementation (SakanaAI/RLT)):
- teacher: the explanation, its close tag and the end-of-turn token; the question and the solution are context;
- student: the whole assistant turn (thought + solution blocks) and the end-of-turn token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Sequence

import torch

from rlt_ray.errors import FormatError
from rlt_ray.method.formats import RLTFormat, Row
from rlt_ray.method.spans import encode_with_offsets, sft_example, span_token_mask


@dataclass
class SFTExamples:
    ids: list[list[int]] = field(default_factory=list)
    masks: list[list[bool]] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # reason → count
    solution_as_trace: int = 0  # rows without a reasoning trace, trained with the solution as the trace

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def trace_explanation(fmt: RLTFormat, row: Row) -> tuple[str, bool]:
    """The explanation a row teaches, and whether it had to fall back to the solution: a row without a reasoning
    trace uses its solution as the trace, as the reference does for custom rows."""
    explanation = fmt.reference_explanation(row)
    if explanation is None:
        return fmt.explanation_from_trace(row.solution), True
    return explanation, False


def student_sft_example(fmt: RLTFormat, row: Row, explanation: str) -> tuple[list[int], list[bool]]:
    """Student SFT ids and mask: the assistant turn (``explanation`` as the thought) + end of turn."""
    chat = fmt.student_chat(row, explanation)
    a, b = chat.spans["assistant"]
    if fmt.eos_text and chat.text.startswith(fmt.eos_text, b):
        b += len(fmt.eos_text)
    ids, offsets = encode_with_offsets(fmt.tokenizer, chat.text)
    return ids, span_token_mask(offsets, [(a, b)])


def build_examples(fmt: RLTFormat, rows: Sequence[Row], role: str, max_tokens: int) -> SFTExamples:
    """Examples for ``role`` 'teacher' or 'student'; rows over ``max_tokens`` or with nothing to learn are
    skipped and counted, never fatal; rows without a trace use the solution as the trace (counted)."""
    out = SFTExamples()
    for row in rows:
        explanation, fallback = trace_explanation(fmt, row)
        try:
            if role == "teacher":
                ids, mask = sft_example(fmt, row, explanation)
            else:
                ids, mask = student_sft_example(fmt, row, explanation)
        except FormatError as exc:
            out.skip(str(exc))
            continue
        out.solution_as_trace += fallback
        if len(ids) > max_tokens:
            out.skip(f"longer than sft.max_seq_tokens={max_tokens}")
            continue
        if not any(mask[1:]):
            out.skip("empty target")
            continue
        out.ids.append(ids)
        out.masks.append(mask)
    return out


def epoch_batches(num: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """A seeded shuffle per epoch, cut into full batches (the remainder waits for the next epoch's shuffle)."""
    order = list(range(num))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[k:k + batch_size] for k in range(0, num - batch_size + 1, batch_size)]


def sft_loss(logp: torch.Tensor, mask: torch.Tensor, denominator: float) -> torch.Tensor:
    """Summed NLL of the masked tokens over ``denominator`` (the batch's target tokens / ranks, so that
    DeepSpeed's mean over ranks gives the token mean of the whole batch)."""
    return -(logp * mask.float()).sum() / float(denominator)


def step_position(step: int, steps_per_epoch: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of global optimizer step ``step``: where a resumed run picks up."""
    return divmod(step, steps_per_epoch)


def checkpoint_due(step: int, steps_per_epoch: int, every: int) -> bool:
    """Whether the end of global step ``step`` (0-based) writes a checkpoint: each epoch's end, and every
    ``every`` steps (0: epoch ends only)."""
    done = step + 1
    return done % steps_per_epoch == 0 or (every > 0 and done % every == 0)


def sft_step(engine, examples: SFTExamples, batch: Sequence[int], rank: int, world: int, pad_id: int,
             micro_batch_size: int, device) -> dict[str, float]:
    """One optimizer step of SFT on ``batch`` (indices into ``examples``) for this rank: its equal share in
    micro-batches, gradient accumulation, token-mean NLL over the whole batch. Returns this rank's sums."""
    import time

    from rlt_ray.data.rollout_batch import micro_batches, rank_shard
    from rlt_ray.method.logprobs import pad_batch

    t0 = time.perf_counter()
    targets = sum(sum(examples.masks[i][1:]) for i in batch)
    mine = [batch[j] for j in rank_shard(len(batch), rank, world)]
    lengths = {i: len(examples.ids[i]) for i in mine}
    total_nll, tokens = 0.0, 0
    for idx in micro_batches(mine, lengths, micro_batch_size):
        ids, attn = pad_batch([examples.ids[i] for i in idx], pad_id, device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(idx):
            m = torch.tensor(examples.masks[i], dtype=torch.bool)
            m[0] = False  # the first token has no context
            mask[row, : len(m)] = m
        logp = engine(ids, attn, mask, 1.0)
        loss = sft_loss(logp, mask, max(1, targets) / world)
        engine.backward(loss, scale_wrt_gas=False)
        engine.step()  # steps the optimizer at the accumulation boundary only
        total_nll += float(-(logp.detach() * mask).sum())
        tokens += int(mask.sum())
    norm = engine.get_global_grad_norm()
    return {"nll_sum": total_nll, "tokens": tokens, "grad_norm": float(norm) if norm is not None else float("nan"),
            "lr": float(engine.get_lr()[0]), "seconds": time.perf_counter() - t0}
