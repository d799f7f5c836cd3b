import numpy as np
import pytest
import torch

from rlt_ray.data.rollout_batch import (concat_rollouts, learnable_stop, loss_denominator, micro_batches, policy_tensors,
                           rank_shard, sample_staleness, sequence, step_seeds)
from rlt_ray.method.grpo import policy_loss


def _rollout(prompts, completions, n):
    return {"version": 3, "n": n, "prompt_ids": prompts,
            "completion_ids": [np.asarray(c, dtype=np.int32) for c in completions],
            "logprobs": [np.full(len(c), -0.5, dtype=np.float32) for c in completions],
            "finish_reason": ["stop"] * len(completions)}


def test_concat_keeps_groups_and_order():
    a = _rollout([[1, 2]], [[5], [6, 7]], 2)
    b = _rollout([[3]], [[8, 9, 10], [11]], 2)
    batch = concat_rollouts([a, b])
    assert batch["n"] == 2 and batch["versions"] == [3]
    assert sequence(batch, 1) == ([1, 2, 6, 7], 2)
    assert sequence(batch, 2) == ([3, 8, 9, 10], 1)
    with pytest.raises(ValueError, match="group size"):
        concat_rollouts([a, _rollout([[1]], [[1], [2], [3]], 3)])


def test_shards_and_micro_batches_cover_each_index_once():
    shards = [rank_shard(12, r, 3) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(12))
    with pytest.raises(ValueError):
        rank_shard(10, 0, 3)
    lengths = [3, 9, 1, 9, 5, 2]
    mbs = micro_batches(range(6), lengths, 2)
    assert mbs == [[1, 3], [4, 0], [5, 2]]  # longest first, ties by index: deterministic


def test_policy_tensors_mask_the_completion_only():
    batch = concat_rollouts([_rollout([[1, 2, 3]], [[4, 5], [6]], 2)])
    ids, attn, mask, old = policy_tensors(batch, [0, 1], pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 6, 0]]
    assert mask.tolist() == [[False, False, False, True, True], [False, False, False, True, False]]
    assert attn.tolist() == [[1] * 5, [1, 1, 1, 1, 0]]
    assert old[mask].tolist() == [-0.5] * 3 and old[~mask].abs().sum() == 0


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
def test_sharded_accumulated_loss_gradient_equals_full_batch(aggregation):
    """What each learner rank does (its shard, micro-batches, the per-rank denominator), averaged over ranks
    as DeepSpeed averages gradients, gives exactly the full-batch loss and gradient."""
    g = torch.Generator().manual_seed(0)
    B, L, world, micro = 8, 6, 2, 2
    lengths = [6, 2, 5, 3, 1, 4, 6, 2]
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    base = torch.randn(B, L, generator=g)
    adv = torch.randn(B, generator=g)
    ref = torch.randn(B, L, generator=g)

    theta = torch.zeros((), requires_grad=True)
    full, _ = policy_loss(base + theta, mask, adv, ref, 0.04, aggregation)
    (full_grad,) = torch.autograd.grad(full, theta)

    theta2 = torch.zeros((), requires_grad=True)
    denominator = loss_denominator(aggregation, B, sum(lengths), world)
    total = 0.0
    for r in range(world):
        rank_loss = 0.0
        for idx in micro_batches(rank_shard(B, r, world), lengths, micro):
            loss, _ = policy_loss(base[idx] + theta2, mask[idx], adv[idx], ref[idx], 0.04, aggregation,
                                  denominator=denominator)
            rank_loss = rank_loss + loss
        total = total + rank_loss / world
    (grad,) = torch.autograd.grad(total, theta2)
    assert torch.allclose(total, full, atol=1e-6)
    assert torch.allclose(grad, full_grad, atol=1e-6)


@pytest.mark.parametrize("arrivals", [[4, 4, 4, 4], [4, 12], [8, 4, 4], [16]])
def test_streamed_plan_learns_every_sequence_once_with_equal_micro_batches(arrivals):
    """What the streaming step does: groups arrive in chunks, each arrival learns the longest prefix that splits
    into whole micro-batches on every rank. Every sequence is learned once, every rank runs the batch's number of
    micro-batches (so the optimizer steps once), and the accumulated loss and gradient are the full batch's."""
    g = torch.Generator().manual_seed(1)
    B, L, world, micro = 16, 5, 2, 2
    lengths = torch.randint(1, L + 1, (B,), generator=g).tolist()
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    base, adv, ref = torch.randn(B, L, generator=g), torch.randn(B, generator=g), torch.randn(B, L, generator=g)
    theta = torch.zeros((), requires_grad=True)
    full, _ = policy_loss(base + theta, mask, adv, ref, 0.04)
    (full_grad,) = torch.autograd.grad(full, theta)

    theta2 = torch.zeros((), requires_grad=True)
    denominator = loss_denominator("sequence_mean", B, sum(lengths), world)
    learned, micro_counts, total = [], [0] * world, 0.0
    consumed = available = 0
    for size in arrivals:
        available += size
        stop = learnable_stop(consumed, available, world, micro)
        for r in range(world):
            share = rank_shard(stop - consumed, r, world, consumed)
            learned.extend(share)
            for idx in micro_batches(share, lengths, micro):
                loss, _ = policy_loss(base[idx] + theta2, mask[idx], adv[idx], ref[idx], 0.04,
                                      denominator=denominator)
                total = total + loss / world
                micro_counts[r] += 1
        consumed = stop
    assert consumed == B and sorted(learned) == list(range(B))
    assert micro_counts == [B // (world * micro)] * world
    (grad,) = torch.autograd.grad(total, theta2)
    assert torch.allclose(total, full, atol=1e-6) and torch.allclose(grad, full_grad, atol=1e-6)
    assert learnable_stop(4, 9, 2, 2) == 8 and learnable_stop(4, 7, 2, 2) == 4  # partial micro-batches wait


def test_step_seeds_depend_on_row_not_worker():
    assert step_seeds(42, 3, [7, 9]) == step_seeds(42, 3, [7]) + step_seeds(42, 3, [9])
    assert step_seeds(42, 3, [7]) != step_seeds(42, 4, [7]) != step_seeds(43, 3, [7])


def test_staleness_bound():
    assert sample_staleness([4, 4], 4, 0) == 0
    assert sample_staleness([3, 4], 4, 1) == 1
    with pytest.raises(RuntimeError, match=r"versions \[3\] cannot be learned at version 4 \(grpo.max_staleness=0\)"):
        sample_staleness([3], 4, 0)
    with pytest.raises(RuntimeError, match="max_staleness=1"):
        sample_staleness([2, 4], 4, 1)
    with pytest.raises(RuntimeError):  # from the future: a worker ahead of the learner
        sample_staleness([5], 4, 1)
