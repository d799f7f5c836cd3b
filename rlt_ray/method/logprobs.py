"""Token log-probs of an HF causal LM on given sequences: one function for the learner, the student scorer and
the reference model.

- batched, right-padded; log p(ids[j] | ids[:j]) only at the positions asked for;
- temperature-scaled: log_softmax(logits / T);
- fp32 log-softmax whatever the model's dtype (the reference runs it in bf16, §8.8); the projection is a call of
  the model's own output-embedding module (so DeepSpeed ZeRO-3 gathers its weight as for any forward), upcast
  to fp32 before the temperature and the log-softmax;
- never a full [batch, length, vocab] fp32 tensor: hidden states are gathered at the needed positions and
  projected ``chunk_tokens`` at a time; with gradients on, each chunk is recomputed in backward (checkpointed),
  so only the chunk's logits are ever alive;
- ``packed=True``: the rows' real tokens in ONE row, no padding, positions restarting at 0 per row and no attention
  mask, which transformers turns into attention that never crosses rows (SDPA and eager: a block-diagonal causal
  mask; flash-attention 2: its varlen kernel). Same inputs and outputs as the padded path, so every caller (the
  policy's forward and backward, the reference, the reward's teacher log-probs, the student scorer) switches with
  one flag; the compute is the real tokens' only (rlt_ray.method.packing plans the micro-batches by a token budget).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.checkpoint import checkpoint


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, device: str | torch.device = "cpu"):
    """Right-pad token lists → (input_ids [B, L], attention_mask [B, L])."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor, inv_temp: float):
    logits = head(hidden).float() * inv_temp
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_mask: torch.Tensor,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    packed: bool = False,
    chunks: int | None = None,
) -> torch.Tensor:
    """fp32 [B, L]: log p_T(input_ids[b, j] | input_ids[b, :j]) where target_mask[b, j], 0 elsewhere.

    target_mask[:, 0] must be False (the first token has no context). ``input_ids`` right-padded
    (``attention_mask``); ``packed``: the forward runs on the real tokens only (module docstring). ``chunks``: call
    the output projection at least this many times (extra calls on one token, weighted 0): under ZeRO-3 each call
    gathers the projection's weight, a collective, so every rank must make as many calls as the rank with the most
    targets (rlt_ray.method.packing.head_chunks), or the ranks hang."""
    if target_mask[:, 0].any():
        raise ValueError("token_logprobs: position 0 has no context and cannot be a target")
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    rows, cols = target_mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return out
    decoder = model.get_decoder()
    if packed:
        hidden, before = _packed_hidden(decoder, input_ids, target_mask, rows, cols)
        picked = hidden[before]
    else:
        # Only run the trunk up to the last needed position of each batch.
        length = int(cols.max()) + 1
        # use_cache=False: a scoring or training forward never decodes further, a KV cache would only take memory
        hidden = decoder(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length],
                         use_cache=False).last_hidden_state
        picked = hidden[rows, cols - 1]  # the state before token j predicts token j
    targets = input_ids[rows, cols]
    head = model.get_output_embeddings()
    inv_temp = 1.0 / float(temperature)
    pieces = []
    starts = list(range(0, picked.shape[0], chunk_tokens))
    starts += [None] * max(0, (chunks or 0) - len(starts))  # None: a zero-weight call on the first target
    for start in starts:
        h, t = (picked[:1], targets[:1]) if start is None else (picked[start:start + chunk_tokens],
                                                                 targets[start:start + chunk_tokens])
        if torch.is_grad_enabled() and h.requires_grad:
            piece = checkpoint(_chunk_logprobs, head, h, t, inv_temp, use_reentrant=False)
        else:
            piece = _chunk_logprobs(head, h, t, inv_temp)
        if start is None:  # kept in the graph, so backward's recompute makes the same calls on every rank
            pieces[0] = pieces[0] + 0.0 * piece.sum()
        else:
            pieces.append(piece)
    out = out.index_put((rows, cols), torch.cat(pieces))
    return out


def _packed_hidden(decoder: torch.nn.Module, input_ids: torch.Tensor, target_mask: torch.Tensor,
                   rows: torch.Tensor, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's hidden states [T, H] of the rows' tokens up to each row's last target, in one packed row
    (positions restarting per row, no attention mask: attention stays within each row), and, for each target
    (rows[k], cols[k]), the index of the state that predicts it."""
    lengths = torch.zeros(input_ids.shape[0], dtype=torch.long, device=input_ids.device)
    lengths.scatter_reduce_(0, rows, cols + 1, reduce="amax")  # rows without a target contribute nothing
    starts = torch.cumsum(lengths, 0) - lengths
    keep = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :] < lengths[:, None]
    flat_ids = input_ids[keep][None, :]
    positions = (torch.arange(input_ids.shape[1], device=input_ids.device)[None, :].expand_as(input_ids))[keep]
    hidden = decoder(input_ids=flat_ids, position_ids=positions[None, :], attention_mask=None,
                     use_cache=False).last_hidden_state[0]
    return hidden, starts[rows] + cols - 1
