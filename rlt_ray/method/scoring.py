"""From RewardSequences and models to reward parts: packed into micro-batches of at most ``max_batch_tokens`` real
tokens (rlt_ray.method.packing.budget_bins; one packed forward each, no padding: token_logprobs(packed=True)).

The student scorer actor and the best-of-N distillation call ``score_sequences``; the teacher's explanation
log-probs come either from the rollout (vLLM processed log-probs, already at τ_T) or from ``teacher_logprobs``.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlt_ray.method.logprobs import pad_batch, token_logprobs
from rlt_ray.method.packing import budget_bins
from rlt_ray.method.rewards import RewardSpec, left_align, rlt_reward
from rlt_ray.method.spans import RewardSequence


@torch.no_grad()
def range_logprobs(
    model: torch.nn.Module,
    sequences: Sequence[Sequence[int]],
    ranges: Sequence[Sequence[tuple[int, int]]],
    pad_id: int,
    temperature: float,
    max_batch_tokens: int = 8192,
    device: str | torch.device = "cpu",
) -> list[list[torch.Tensor]]:
    """For each sequence i and each of its ranges (a, b): the fp32 log-probs of tokens a..b-1, one packed forward
    per micro-batch of at most ``max_batch_tokens`` tokens (all ranges of a sequence in the same forward; a
    sequence longer than that gets a forward of its own: scoring never cuts a row)."""
    out: list[list[torch.Tensor]] = [[] for _ in sequences]
    lengths = {i: len(s) for i, s in enumerate(sequences)}
    fits = [i for i in lengths if lengths[i] <= max_batch_tokens]
    batches = budget_bins(fits, lengths, max_batch_tokens) + [[i] for i in lengths if lengths[i] > max_batch_tokens]
    for batch in batches:
        ids, attn = pad_batch([sequences[i] for i in batch], pad_id, device)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(batch):
            for a, b in ranges[i]:
                mask[row, a:b] = True
        lp = token_logprobs(model, ids, attn, mask, temperature, packed=True).cpu()
        for row, i in enumerate(batch):
            out[i] = [lp[row, a:b] for a, b in ranges[i]]
    return out


def prompt_key(prompt_ids: Sequence[int]) -> bytes:
    """A prompt's identity in the prompt-tail log-prob tables (the exact token ids)."""
    import numpy as np

    return np.asarray(prompt_ids, dtype=np.int64).tobytes()


def score_sequences(
    student: torch.nn.Module,
    seqs: Sequence[RewardSequence],
    teacher_expl_lp: Sequence[torch.Tensor],
    spec: RewardSpec,
    pad_id: int,
    student_temperature: float,
    max_batch_tokens: int = 8192,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """All reward parts ([B] fp32 each) for a batch of sequences, given the teacher's explanation log-probs."""
    student_lp = range_logprobs(
        student, [s.student_ids for s in seqs], [[s.student_solution, s.student_explanation] for s in seqs],
        pad_id, student_temperature, max_batch_tokens, device)
    for s, t in zip(seqs, teacher_expl_lp, strict=True):
        n = s.teacher_explanation[1] - s.teacher_explanation[0]
        if t.numel() != n:
            raise ValueError(f"teacher log-probs cover {t.numel()} explanation tokens, expected {n}")
    sol, sol_mask = left_align([lp[0] for lp in student_lp])
    st_expl, expl_mask = left_align([lp[1] for lp in student_lp])
    te_expl, _ = left_align(list(teacher_expl_lp))  # same widths: both sides hold the same explanation tokens
    matched = torch.tensor([s.matched for s in seqs])
    return rlt_reward(spec, sol, sol_mask, te_expl, st_expl, expl_mask, matched)
