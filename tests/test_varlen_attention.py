"""model.attention=sdpa_varlen (rlt_ray.models.varlen_attention): a packed row runs as one causal attention per sequence,
never over the whole packed length, and gives what each row gives alone; a padded batch is transformers' SDPA."""

import torch

from rlt_ray.method.logprobs import pad_batch, token_logprobs
from rlt_ray.models.registry import load_causal_lm
from rlt_ray.models.varlen_attention import sequence_bounds

LENGTHS = (5, 300, 17, 120, 2, 64)


def _batch():
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(10, 500, (n,), generator=g).tolist() for n in LENGTHS]
    ids, attn = pad_batch(seqs, 0)
    mask = attn.bool().clone()
    mask[:, 0] = False
    return seqs, ids, attn, mask


def test_sequence_bounds_split_where_positions_restart():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    assert sequence_bounds(pos) == [(0, 3), (3, 5), (5, 6), (6, 10)]
    assert sequence_bounds(torch.arange(7)[None]) == [(0, 7)]


def test_packed_attention_never_spans_more_than_one_row(teacher, monkeypatch):
    import rlt_ray.models.varlen_attention as va

    seen = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        seen.append(k.shape[2])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(va.torch.nn.functional, "scaled_dot_product_attention", recording)
    _, ids, attn, mask = _batch()
    with torch.no_grad():
        token_logprobs(teacher, ids, attn, mask, packed=True)
    layers = teacher.config.num_hidden_layers
    assert len(seen) == layers * len(LENGTHS)  # one call per row and layer
    assert max(seen) == max(LENGTHS)  # never the packed length (sum of LENGTHS): no [T, T] attention


def test_varlen_packed_equals_each_row_alone_and_sdpa_padded_values_and_gradients():
    seqs, ids, attn, mask = _batch()
    varlen = load_causal_lm("tiny-teacher", attention="sdpa_varlen")
    sdpa = load_causal_lm("tiny-teacher", attention="sdpa")
    packed = token_logprobs(varlen, ids, attn, mask, 0.7, packed=True)
    padded = token_logprobs(sdpa, ids, attn, mask, 0.7)
    assert torch.allclose(packed, padded, atol=1e-5)
    with torch.no_grad():
        for r, s in enumerate(seqs):  # each row alone, no padding, no packing
            one_ids = torch.tensor([s])
            alone = token_logprobs(sdpa, one_ids, torch.ones_like(one_ids), mask[r:r + 1, :len(s)], 0.7)
            assert torch.allclose(packed[r, :len(s)], alone[0], atol=1e-5)
    (packed * mask).sum().backward()
    (padded * mask).sum().backward()
    for (name, a), b in zip(varlen.named_parameters(), sdpa.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4), name
