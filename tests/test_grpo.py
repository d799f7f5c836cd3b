import copy

import pytest
import torch

from rlt_ray.method.grpo import group_advantages, k3_kl, mixup_, policy_loss
from rlt_ray.method.logprobs import token_logprobs


def test_advantages_zero_mean_unit_unbiased_std_per_group():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, -5.0, 0.0, 5.0, 10.0])
    a = group_advantages(r, 4)
    g = a.view(2, 4)
    assert torch.allclose(g.mean(-1), torch.zeros(2), atol=1e-6)
    raw = r.view(2, 4)
    want = (raw - raw.mean(-1, keepdim=True)) / (raw.std(-1, unbiased=True, keepdim=True) + 1e-4)
    assert torch.allclose(g, want)
    assert torch.allclose(group_advantages(torch.ones(4), 4), torch.zeros(4))  # equal rewards: no signal
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), 4)


def seq_batch(teacher, ref):
    torch.manual_seed(1)
    ids = torch.randint(3, 500, (3, 12))
    attn = torch.ones_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 5:12] = True
    mask[1, 5:8] = True
    mask[2, 6:11] = True
    logp = token_logprobs(teacher, ids, attn, mask, 0.7)
    with torch.no_grad():
        ref_lp = token_logprobs(ref, ids, attn, mask, 0.7)
    return logp, ref_lp, mask


@pytest.fixture
def policy_and_ref(teacher, student):
    return copy.deepcopy(teacher).train(), student


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_with_zero_advantages_the_gradient_is_beta_grad_kl(policy_and_ref):
    policy, ref = policy_and_ref
    beta = 0.04
    logp, ref_lp, mask = seq_batch(policy, ref)
    loss, _ = policy_loss(logp, mask, torch.zeros(3), ref_lp, beta)
    policy.zero_grad()
    loss.backward()
    g_loss = grads(policy)
    logp, ref_lp, mask = seq_batch(policy, ref)
    kl = k3_kl(logp, ref_lp) * mask
    kl_seq_mean = (kl.sum(-1) / mask.sum(-1)).mean()
    policy.zero_grad()
    (beta * kl_seq_mean).backward()
    for a, b in zip(g_loss, grads(policy)):
        assert torch.allclose(a, b, atol=1e-7)


def test_loss_is_mean_of_per_sequence_token_means_and_ratio_is_one(policy_and_ref):
    policy, ref = policy_and_ref
    logp, ref_lp, mask = seq_batch(policy, ref)
    adv = torch.tensor([1.5, -0.5, -1.0])
    loss, metrics = policy_loss(logp, mask, adv, ref_lp, beta=0.04)
    per_seq = []
    for i in range(3):
        toks = [(-1.0 * adv[i] + 0.04 * k3_kl(logp[i, j], ref_lp[i, j])).item()
                for j in range(12) if mask[i, j]]
        per_seq.append(sum(toks) / len(toks))
    assert loss.item() == pytest.approx(sum(per_seq) / 3, abs=1e-6)
    # the logged KL is the token mean of k3 over the masked tokens, computed here by hand
    k3 = [k3_kl(logp[i, j], ref_lp[i, j]).item() for i in range(3) for j in range(12) if mask[i, j]]
    assert metrics["kl"] == pytest.approx(sum(k3) / len(k3), rel=1e-5) and metrics["kl"] > 0
    # ratio ≡ 1: without KL, the gradient is exactly that of −A·ℓ (sequence means)
    policy.zero_grad()
    policy_loss(logp, mask, adv, aggregation="sequence_mean")[0].backward(retain_graph=True)
    g1 = grads(policy)
    policy.zero_grad()
    (-(adv[:, None] * logp * mask).sum(-1) / mask.sum(-1)).mean().backward()
    for a, b in zip(g1, grads(policy)):
        assert torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
def test_micro_batches_add_up_to_the_full_batch(policy_and_ref, aggregation):
    policy, ref = policy_and_ref
    logp, ref_lp, mask = seq_batch(policy, ref)
    adv = torch.tensor([1.0, -2.0, 0.5])
    full, _ = policy_loss(logp, mask, adv, ref_lp, 0.04, aggregation)
    denom = 3 if aggregation == "sequence_mean" else float(mask.sum())
    parts = sum(policy_loss(logp[i:i + 1], mask[i:i + 1], adv[i:i + 1], ref_lp[i:i + 1], 0.04, aggregation,
                            denominator=denom)[0] for i in range(3))
    assert parts.item() == pytest.approx(full.item(), abs=1e-6)
    if aggregation == "token_mean":
        want = ((-adv[:, None] + 0.04 * k3_kl(logp, ref_lp)) * mask).sum() / mask.sum()
        assert full.item() == pytest.approx(want.item(), abs=1e-6)


def test_clipped_ratio():
    logp = torch.tensor([[0.0, -1.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -1.0]])  # ratio e ≈ 2.7 on token 0, 1 on token 1
    mask = torch.ones((1, 2))
    loss, m = policy_loss(logp, mask, torch.tensor([1.0]), old_logp=old, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 1.0) / 2)  # positive advantage: ratio clipped at 1 + eps
    assert m["clip_fraction"] == 0.5
    loss.backward()
    assert logp.grad[0, 0] == 0  # clipped token carries no gradient
    with pytest.raises(ValueError, match="old_logp"):
        policy_loss(logp, mask, torch.tensor([1.0]), clip_eps=0.2)


def test_importance_ratio_corrects_stale_samples_and_is_identity_on_policy():
    """The off-policy mode's correction: with the behaviour policy's log-probs equal to the policy's (staleness 0)
    the clipped loss has the reference's gradient; with stale samples each token's gradient is weighted by
    pi/pi_old while the ratio is inside the clip range."""
    g = torch.Generator().manual_seed(0)
    logp0 = -torch.rand(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = torch.tensor([0.5, -1.0, 2.0])
    a = logp0.clone().requires_grad_(True)
    policy_loss(a, mask, adv)[0].backward()
    b = logp0.clone().requires_grad_(True)
    policy_loss(b, mask, adv, old_logp=logp0.clone(), clip_eps=0.2)[0].backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-7)
    stale = logp0 - 0.1  # the behaviour policy gave these tokens less mass: ratio e^0.1 ≈ 1.105 < 1.2
    c = logp0.clone().requires_grad_(True)
    policy_loss(c, mask, adv, old_logp=stale, clip_eps=0.2)[0].backward()
    assert torch.allclose(c.grad, a.grad * torch.exp(torch.tensor(0.1)), atol=1e-6)


def test_mixup_is_exact_parameter_by_parameter(teacher, student):
    ref = copy.deepcopy(student)
    before = [p.clone() for p in ref.parameters()]
    mixup_(ref.parameters(), teacher.parameters(), 0.9)
    for r, old, p in zip(ref.parameters(), before, teacher.parameters()):
        assert torch.allclose(r, 0.9 * p + 0.1 * old, atol=1e-7)
    mixup_(ref.parameters(), teacher.parameters(), 1.0)
    assert all(torch.equal(r, p) for r, p in zip(ref.parameters(), teacher.parameters()))


def test_signal_fraction_counts_the_groups_whose_rewards_differ():
    from rlt_ray.method.grpo import signal_fraction

    rewards = [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 0.5, 0.5, 0.2, 0.5]
    assert signal_fraction(rewards, 4) == 0.5  # groups 2 and 4 differ; 1 (all 0) and 3 (all 1) teach nothing
    assert signal_fraction([], 4) == 0.0
