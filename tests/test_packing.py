"""Packed micro-batches by a token budget (rlt_ray.method.packing, token_logprobs(packed=True), learner.max_tokens_per_micro_batch):
the plan's arithmetic without Ray, the packed forward against the padded one, and a whole learner step on the real
stack (Ray, DeepSpeed ZeRO-2 and ZeRO-3 over gloo, 2 ranks) equal to the padded step on very uneven lengths."""

import numpy as np
import pytest
import torch

from rlt_ray.errors import BudgetError
from rlt_ray.method.packing import balance_over_ranks, budget_bins, plan

LONG_TAIL = [5, 7, 9, 12, 15, 20, 22, 30, 35, 41, 48, 60, 75, 90, 120, 160, 220, 330, 500, 900]


def test_ranks_get_about_equal_tokens_not_equal_counts():
    lengths = dict(enumerate(LONG_TAIL))
    shares = balance_over_ranks(list(lengths), lengths, 2)
    assert sorted(sum(shares, [])) == list(lengths)  # every row once
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert max(loads) / (sum(loads) / 2) <= 1.15, loads
    contiguous = [sum(LONG_TAIL[:10]), sum(LONG_TAIL[10:])]  # what equal counts give: 239 against 2,475 tokens
    assert max(contiguous) / (sum(contiguous) / 2) > 1.8


def test_bins_hold_the_budget_and_a_row_over_it_is_refused_naming_the_key():
    lengths = dict(enumerate(LONG_TAIL))
    bins = budget_bins(list(lengths), lengths, 1000)
    assert sorted(sum(bins, [])) == list(lengths)
    assert all(sum(lengths[i] for i in b) <= 1000 for b in bins)
    assert len(bins) == 3  # 2,714 tokens in bins of 1,000: first-fit decreasing needs the minimum here
    with pytest.raises(BudgetError, match=r"900 tokens.*learner.max_tokens_per_micro_batch=512"):
        budget_bins(list(lengths), lengths, 512)


def test_every_rank_runs_as_many_micro_batches_and_every_row_is_planned_once():
    lengths = dict(enumerate(LONG_TAIL))
    for world, budget in ((2, 1000), (3, 950), (4, 4000)):
        per_rank = plan(list(lengths), lengths, world, budget)
        assert len({len(m) for m in per_rank}) == 1
        rows = [i for m in per_rank for idx in m for i in idx]
        assert sorted(rows) == list(lengths)
        assert all(sum(lengths[i] for i in idx) <= budget for m in per_rank for idx in m)
    few = plan([0, 1], {0: 10, 1: 900}, 2, 1000)  # two rows, two ranks: one micro-batch each
    assert [len(m) for m in few] == [1, 1] and all(len(m[0]) == 1 for m in few)


def test_the_packed_forward_equals_the_padded_one_values_and_gradients(teacher):
    from rlt_ray.method.logprobs import pad_batch, token_logprobs

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(10, 500, (n,), generator=g).tolist() for n in (5, 300, 17, 120, 2, 64)]
    ids, attn = pad_batch(seqs, 0)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for r, s in enumerate(seqs):
        mask[r, max(1, len(s) // 2):len(s)] = True
    grads = []
    values = []
    for packed in (False, True):
        teacher.zero_grad()
        lp = token_logprobs(teacher, ids, attn, mask, 0.7, packed=packed)
        (lp * mask).sum().backward()
        values.append(lp.detach())
        grads.append(torch.cat([p.grad.flatten() for p in teacher.parameters() if p.grad is not None]))
    teacher.zero_grad()
    assert (values[0] - values[1]).abs().max() < 1e-5
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def _uneven_batch(n: int, groups: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(20, 200, size=int(rng.integers(4, 12)))) for _ in range(groups)]
    sizes = (LONG_TAIL * ((groups * n) // len(LONG_TAIL) + 1))[:groups * n]
    completions = [rng.integers(20, 200, size=s).astype(np.int32) for s in sizes]
    rewards = rng.normal(size=groups * n)
    rollout = {"version": 0, "n": n, "prompt_ids": prompts, "completion_ids": completions,
               "finish_reason": ["stop"] * len(completions),
               "logprobs": [np.full(len(c), -5.0, dtype=np.float32) for c in completions]}
    return rollout, {"total": rewards}


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_a_packed_learner_step_equals_the_padded_one(ray_local, zero_stage):
    """The same batch (20 completions of 5 to 900 tokens, 2 ranks) learned padded (2 rows a micro-batch, equal
    counts) and packed (1,024 tokens a micro-batch, balanced by tokens): the reward's teacher log-probs before the
    step, the loss, the gradient norm and every updated weight agree to 1e-5."""
    from actors.learner import LearnerGroup
    from rlt_ray.config import load_config

    def full_state(learner):  # nested: Ray pickles it by value into the ranks (every rank gathers, rank 0 keeps)
        from rlt_ray.models.deepspeed_engine import full_state

        return full_state(learner.hf_model, learner.rank, learner.cfg.learner.zero_stage)

    base = ["learner.lr=1e-4", f"learner.zero_stage={zero_stage}", "rollout.n=10", "run.questions_per_step=2",
            "rollout.max_new_tokens=900", "rollout.max_prompt_tokens=100", "rollout.temperature=1.0"]
    rollout, scored = _uneven_batch(10, 2)
    ref, scored_ref = ray_local.put(rollout), ray_local.put(scored)
    results = {}
    for name, extra in (("padded", ["learner.micro_batch_size=2"]),
                        ("packed", ["learner.micro_batch_size=1", "learner.max_tokens_per_micro_batch=1024"])):
        learners = LearnerGroup(load_config("configs/tiny_cpu.yaml", base + extra))
        try:
            lp = {}
            for part in ray_local.get(learners.call("completion_logprobs", [ref], 1.0)):
                lp.update(part)
            metrics = ray_local.get(learners.call("train_step", [ref], [scored_ref]))
            state = ray_local.get([r.__ray_call__.remote(full_state) for r in learners.ranks])[0]
        finally:
            learners.shutdown()
        results[name] = (lp, metrics, state)
    (lp_a, m_a, s_a), (lp_b, m_b, s_b) = results["padded"], results["packed"]
    assert sorted(lp_a) == sorted(lp_b) == list(range(20))
    assert max(float(np.abs(lp_a[i] - lp_b[i]).max()) for i in lp_a) < 1e-5
    assert sum(m["loss"] for m in m_a) == pytest.approx(sum(m["loss"] for m in m_b), abs=1e-5)
    assert m_a[0]["grad_norm"] == pytest.approx(m_b[0]["grad_norm"], rel=1e-5, abs=1e-6)
    assert m_a[0]["optimizer_steps"] == m_b[0]["optimizer_steps"] == 1 and m_b[0]["update_ratio"] > 1e-6
    assert max(float((s_a[k] - s_b[k]).abs().max()) for k in s_a) < 1e-5


def test_every_rank_makes_as_many_output_projection_calls_as_the_rank_with_the_most_targets():
    """Under ZeRO-3 each call of the output projection gathers its weight (a collective): the paper presets' 16k-token
    completions on one rank against short ones on another made the ranks call it a different number of times and
    hang. The count per micro-batch position is the most any rank needs, computed alike on every rank."""
    from rlt_ray.method.packing import head_chunks

    per_rank = [[[0], [1, 2]], [[3], []]]
    targets = {0: 3000, 1: 10, 2: 20, 3: 100}
    assert head_chunks(per_rank, targets, chunk_tokens=1024) == [3, 1]
