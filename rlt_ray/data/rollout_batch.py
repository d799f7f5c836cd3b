"""One RL step's data as it crosses actors, and how the learner cuts it: pure functions on lists and tensors.

A rollout (what ``RolloutWorker.generate`` returns) is a plain dict:
    version            weights version the worker sampled with
    prompt_ids         [P] lists of token ids
    completion_ids     [P * n] int32 arrays, completion j belongs to prompt j // n
    logprobs           [P * n] float32 arrays, vLLM's processed log-probs of the sampled tokens
    finish_reason      [P * n] "stop" | "length"
Several rollouts (one per worker) concatenate, in order, into the step's batch; GRPO groups never straddle two.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from rlt_ray.method.logprobs import pad_batch


def concat_rollouts(rollouts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    n = group_size(rollouts)
    out: dict[str, Any] = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "finish_reason": [],
                           "versions": sorted({int(r["version"]) for r in rollouts}), "n": n}
    for r in rollouts:
        for key in ("prompt_ids", "completion_ids", "logprobs", "finish_reason"):
            out[key].extend(r[key])
    return out


def group_size(rollouts: Sequence[dict[str, Any]]) -> int:
    sizes = {len(r["completion_ids"]) // max(1, len(r["prompt_ids"])) for r in rollouts if r["prompt_ids"]}
    if len(sizes) != 1:
        raise ValueError(f"rollouts disagree on the group size: {sorted(sizes)}")
    return sizes.pop()


def sequence(batch: dict[str, Any], i: int) -> tuple[list[int], int]:
    """(prompt + completion ids, prompt length) of completion i."""
    prompt = list(batch["prompt_ids"][i // batch["n"]])
    return prompt + [int(t) for t in batch["completion_ids"][i]], len(prompt)


def rank_shard(num: int, rank: int, world: int, start: int = 0) -> list[int]:
    """Contiguous, equal shards of range(start, start + num) (the config check guarantees ``num % world == 0``)."""
    if num % world:
        raise ValueError(f"{num} sequences do not split over {world} learner ranks")
    per = num // world
    return list(range(start + rank * per, start + (rank + 1) * per))


def learnable_stop(consumed: int, available: int, world: int, micro_batch_size: int) -> int:
    """Streaming: of the sequences [consumed, available) that have arrived, learn the longest prefix that gives
    every rank the same number of whole micro-batches; the rest waits for more. A batch that splits into
    world x micro_batch_size (the config check) is thus learned entirely, in the same number of micro-batches per
    rank as in one piece, so DeepSpeed's accumulation boundary still falls once per batch."""
    unit = world * micro_batch_size
    return consumed + (available - consumed) // unit * unit


def micro_batches(indices: Sequence[int], lengths: Sequence[int], size: int) -> list[list[int]]:
    """Fixed-size micro-batches of similar length (sorted, longest first, ties by index: deterministic)."""
    order = sorted(indices, key=lambda i: (-lengths[i], i))
    return [order[k:k + size] for k in range(0, len(order), size)]


def policy_tensors(batch: dict[str, Any], idx: Sequence[int], pad_id: int, device: str | torch.device = "cpu"):
    """ids, attention mask, completion-token mask, and the sampling-time log-probs at those positions."""
    seqs = [sequence(batch, i) for i in idx]
    ids, attn = pad_batch([s for s, _ in seqs], pad_id, device)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    old = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
    for row, (i, (s, p)) in enumerate(zip(idx, seqs)):
        mask[row, p:len(s)] = True
        old[row, p:len(s)] = torch.tensor(np.asarray(batch["logprobs"][i], dtype=np.float32), device=ids.device)
    return ids, attn, mask, old


def loss_denominator(aggregation: str, sequences: int, tokens: int, world: int) -> float:
    """Per-rank denominator such that DeepSpeed's mean of the ranks' gradients is the full-batch loss's:
    the batch's number of sequences (sequence_mean) or completion tokens (token_mean), over the ranks."""
    if aggregation == "sequence_mean":
        return sequences / world
    if aggregation == "token_mean":
        return max(1, int(tokens)) / world
    raise ValueError(f"unknown loss aggregation {aggregation!r}")


def step_seeds(run_seed: int, step: int, row_indices: Sequence[int]) -> list[int]:
    """One sampling seed per prompt from (run seed, step, row): the same whichever worker samples it."""
    return [int((run_seed * 1_000_003 + step * 10_007 + int(i) * 101) % (2**31 - 1)) for i in row_indices]


def sample_staleness(sample_versions: Sequence[int], learner_version: int, max_staleness: int) -> int:
    """How many versions behind the learner the oldest sample is; refuses samples from the future or older than
    ``max_staleness`` (grpo.max_staleness)."""
    behind = [int(learner_version) - int(v) for v in sample_versions]
    if not behind or min(behind) < 0 or max(behind) > max_staleness:
        raise RuntimeError(f"samples from weights versions {sorted(set(map(int, sample_versions)))} cannot be "
                           f"learned at version {learner_version} (grpo.max_staleness={max_staleness})")
    return max(behind)
