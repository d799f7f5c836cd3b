import torch

from rlt_ray.method.logprobs import pad_batch, token_logprobs


def full_logprobs(model, ids, temperature):
    logits = model(torch.tensor([ids])).logits[0].float() / temperature
    lp = torch.log_softmax(logits, -1)
    return torch.stack([lp[j - 1, ids[j]] for j in range(1, len(ids))])


def test_batched_padded_equals_one_by_one(teacher):
    torch.manual_seed(0)
    seqs = [torch.randint(3, 500, (n,)).tolist() for n in (7, 19, 12)]
    ids, attn = pad_batch(seqs, 0)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for i, s in enumerate(seqs):
        mask[i, 1:len(s)] = True
    with torch.no_grad():
        lp = token_logprobs(teacher, ids, attn, mask, temperature=0.7, chunk_tokens=5)
        for i, s in enumerate(seqs):
            ref = full_logprobs(teacher, s, 0.7)
            assert torch.allclose(lp[i, 1:len(s)], ref, atol=1e-5)
            assert (lp[i, len(s):] == 0).all()


def test_chunked_gradient_equals_plain_gradient(teacher):
    seq = torch.randint(3, 500, (1, 16))
    mask = torch.zeros_like(seq, dtype=torch.bool)
    mask[0, 4:12] = True
    grads = []
    for chunk in (3, 10_000):
        teacher.zero_grad()
        token_logprobs(teacher, seq, torch.ones_like(seq), mask, 0.7, chunk_tokens=chunk).sum().backward()
        grads.append([p.grad.clone() for p in teacher.parameters()])
        teacher.zero_grad()
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fp32_under_a_bf16_model(teacher):
    """The fp32 log-softmax adds no error of its own: a bf16 model's log-probs differ from the fp32 model's only by
    what bf16 weights and activations cost, and far less than a bf16 log-softmax would."""
    import copy

    seq = torch.randint(3, 500, (1, 40))
    mask = torch.ones_like(seq, dtype=torch.bool)
    mask[0, 0] = False
    with torch.no_grad():
        lp32 = token_logprobs(teacher, seq, torch.ones_like(seq), mask, 0.7)
        bf = copy.deepcopy(teacher).to(torch.bfloat16)
        lp_bf = token_logprobs(bf, seq, torch.ones_like(seq), mask, 0.7)
        assert lp_bf.dtype == torch.float32
        naive = torch.log_softmax(bf(seq).logits / 0.7, -1)  # bf16 all the way, as the reference
        naive = naive[0, :-1].gather(-1, seq[0, 1:, None]).squeeze(-1).float()
    ours_err = (lp_bf[0, 1:] - lp32[0, 1:]).abs().max()
    naive_err = (naive - lp32[0, 1:]).abs().max()
    assert ours_err < 0.05
    assert ours_err < naive_err


def test_position_zero_is_rejected(teacher):
    import pytest

    seq = torch.randint(3, 50, (1, 4))
    with pytest.raises(ValueError, match="position 0"):
        token_logprobs(teacher, seq, torch.ones_like(seq), torch.ones_like(seq, dtype=torch.bool))
