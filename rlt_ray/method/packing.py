"""Sequences packed by a token budget, without padding: which rows go to which learner rank, and which rows share a
micro-batch. Pure functions on lengths; the packed forward itself is rlt_ray.method.logprobs.token_logprobs(packed=True).

- ``balance_over_ranks``: each rank gets about the same number of TOKENS (longest first, to the rank with the fewest
  tokens so far), not the same number of rows, so no rank carries most of the long rows while the others wait at the
  gradient all-reduce. Any split is exact: the loss's denominator is the whole batch's (rlt_ray.data.rollout_batch.loss_denominator).
- ``budget_bins``: one rank's rows in micro-batches of at most ``budget`` tokens, first-fit decreasing.
- ``plan``: both, with the same number of micro-batches on every rank (ZeRO's collectives run once per backward, so
  every rank must run as many): a rank with fewer bins splits its fullest ones, and a rank with fewer rows than
  micro-batches runs empty ones (the learner backs them with a zero-weight pass).
Deterministic: ties break by row index, so every rank computes the same plan from the same lengths.
"""

from __future__ import annotations

from typing import Mapping, Sequence
from rlt_ray.errors import BudgetError


def balance_over_ranks(indices: Sequence[int], lengths: Mapping[int, int], world: int) -> list[list[int]]:
    """Rows over ``world`` ranks with about equal token sums (greedy, longest first); each rank's rows sorted."""
    loads = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += lengths[i]
    return [sorted(s) for s in shares]


def budget_bins(indices: Sequence[int], lengths: Mapping[int, int], budget: int) -> list[list[int]]:
    """First-fit decreasing: rows in as few micro-batches of at most ``budget`` tokens as this finds."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
        if lengths[i] > budget:
            raise BudgetError(f"a sequence of {lengths[i]} tokens is longer than learner.max_tokens_per_micro_batch="
                              f"{budget}: raise the budget to at least the longest prompt + completion")
        for b, u in enumerate(used):
            if u + lengths[i] <= budget:
                bins[b].append(i)
                used[b] += lengths[i]
                break
        else:
            bins.append([i])
            used.append(lengths[i])
    return bins


def split_to(bins: list[list[int]], count: int, lengths: Mapping[int, int]) -> list[list[int]]:
    """``bins`` made ``count`` long: the fullest bin of several rows gives its second half to a new bin, until there
    are ``count`` bins or no bin has two rows; empty bins fill the rest."""
    bins = [list(b) for b in bins]
    while len(bins) < count:
        splittable = [b for b in range(len(bins)) if len(bins[b]) > 1]
        if not splittable:
            break
        b = max(splittable, key=lambda b: (sum(lengths[i] for i in bins[b]), -b))
        half = len(bins[b]) // 2
        bins.append(bins[b][half:])
        bins[b] = bins[b][:half]
    return bins + [[] for _ in range(count - len(bins))]


def head_chunks(per_rank: Sequence[Sequence[Sequence[int]]], targets: Mapping[int, int],
                chunk_tokens: int = 1024) -> list[int]:
    """For each micro-batch position k, the most output-projection calls any rank's k-th micro-batch needs
    (rlt_ray.method.logprobs.token_logprobs projects ``chunk_tokens`` targets a call; ``targets``: each row's target
    tokens). Under ZeRO-3 every call gathers the projection's weight, so every rank makes that many calls."""
    count = max((len(m) for m in per_rank), default=0)
    return [max(1, max(-(-sum(targets[i] for i in m[k]) // chunk_tokens) for m in per_rank if k < len(m)))
            for k in range(count)]


def plan(indices: Sequence[int], lengths: Mapping[int, int], world: int, budget: int,
         balance: bool = True) -> list[list[list[int]]]:
    """Per rank, its micro-batches (lists of row indices, some maybe empty), as many on every rank.
    ``balance=False``: contiguous equal-count shards (the count-based layout), packed the same way."""
    if balance:
        shares = balance_over_ranks(indices, lengths, world)
    else:
        per = len(indices) // world
        shares = [list(indices[r * per:(r + 1) * per]) for r in range(world)]
    bins = [budget_bins(share, lengths, budget) for share in shares]
    count = max(1, max(len(b) for b in bins))
    return [split_to(b, count, lengths) for b in bins]
