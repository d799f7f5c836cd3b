"""``sdpa_varlen``: attention that runs a packed row (several sequences in one, positions restarting at 0) as one
causal attention per sequence, with no [T, T] mask, on any device; a padded batch goes to transformers' SDPA path
unchanged.

Why it exists: transformers' own ``sdpa`` turns a packed row into a block-diagonal [T, T] mask and computes every
masked-out score, so packing costs more attention than padding saves (bench/learner_packing.py). Its
``flash_attention_2`` runs the varlen kernel, but only on CUDA with flash-attn installed. This path is the exact CPU
(and fallback GPU) equivalent: the same ``torch.nn.functional.scaled_dot_product_attention`` per sequence, causal,
so each token attends to exactly the tokens it attends to when its row runs alone.

How it hooks in: the name is registered in transformers' AttentionInterface (the per-layer call) and
AttentionMaskInterface (the mask builder). The mask builder makes SDPA's mask when there is a padding mask and
none when there is not, so the layer sees either a padded batch with its mask (→ SDPA as before) or rows with no
mask (→ one causal call per run of positions 0, 1, 2, ...). rlt_ray.models.registry.load_causal_lm loads every learner,
reference and scorer model with it (``model.attention``).
"""

from __future__ import annotations

import torch

NAME = "sdpa_varlen"


def sequence_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of each sequence in a packed row: a new one starts wherever the position does not follow the
    previous one by 1 (at a restart to 0, as rlt_ray.method.logprobs packs rows)."""
    pos = position_ids.reshape(-1)
    if pos.numel() == 0:
        return []
    breaks = (torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1).tolist()
    edges = [0, *breaks, pos.numel()]
    return list(zip(edges[:-1], edges[1:]))


def _sdpa(query, key, value, causal: bool, dropout: float, scaling, mask=None):
    gqa = query.shape[1] != key.shape[1]
    if gqa:  # grouped-query heads: repeat K/V explicitly (enable_gqa is not in every kernel torch picks)
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None, scale=scaling)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                             sliding_window=None, position_ids=None, **kwargs):
    """The per-layer attention call (transformers' signature): query [B, H, T, D] → ([B, T, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None or position_ids is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        # a padded batch (its mask built by SDPA's builder), a decode step, or rows of one length: SDPA as is
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, position_ids=position_ids, **kwargs)
    if sliding_window is not None and query.shape[2] > sliding_window:
        raise ValueError(f"model.attention={NAME!r} does not apply a sliding window ({sliding_window}); "
                         "set model.attention: sdpa or flash_attention_2 for this model")
    pieces = [_sdpa(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], True, dropout, scaling)
              for a, b in sequence_bounds(position_ids)]
    out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
    return out.transpose(1, 2).contiguous(), None


def varlen_mask(*args, attention_mask=None, **kwargs):
    """SDPA's mask where there is a padding mask; none where there is not (the layer then splits by positions)."""
    from transformers.masking_utils import sdpa_mask

    return None if attention_mask is None else sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Registers ``sdpa_varlen`` with transformers (idempotent) and returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    AttentionMaskInterface.register(NAME, varlen_mask)
    return NAME
