"""Token log-probs of an HF causal LM on given sequences: one function for the learner, the student scorer and
the reference model.

- batched, right-padded; log p(ids[j] | ids[:j]) only at the positions asked for;
- temperature-scaled: log_softmax(logits / T);
- fp32 log-softmax whatever the model's dtype (the reference runs it in bf16, §8.8); the projection is a call of
  the model's own output-embedding module (so DeepSpeed ZeRO-3 gathers its weight as for any forward), upcast
  to fp32 before the temperature and the log-softmax;
- never a full [batch, length, vocab] fp32 tensor: hidden states are gathered at the needed positions and
  projected ``chunk_tokens`` at a time; with gradients on, each chunk is recomputed in backward (checkpointed),
  so only the chunk's logits are ever alive.
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
) -> torch.Tensor:
    """fp32 [B, L]: log p_T(input_ids[b, j] | input_ids[b, :j]) where target_mask[b, j], 0 elsewhere.

    target_mask[:, 0] must be False (the first token has no context)."""
    if target_mask[:, 0].any():
        raise ValueError("token_logprobs: position 0 has no context and cannot be a target")
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    rows, cols = target_mask.nonzero(as_tuple=True)
    if rows.numel() == 0:
        return out
    # Only run the trunk up to the last needed position of each batch.
    length = int(cols.max()) + 1
    decoder = model.get_decoder()
    # use_cache=False: a scoring or training forward never decodes further, a KV cache would only take memory
    hidden = decoder(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length],
                     use_cache=False).last_hidden_state
    picked = hidden[rows, cols - 1]  # the state before token j predicts token j
    targets = input_ids[rows, cols]
    head = model.get_output_embeddings()
    inv_temp = 1.0 / float(temperature)
    pieces = []
    for start in range(0, picked.shape[0], chunk_tokens):
        h, t = picked[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logprobs, head, h, t, inv_temp, use_reentrant=False))
        else:
            pieces.append(_chunk_logprobs(head, h, t, inv_temp))
    out = out.index_put((rows, cols), torch.cat(pieces))
    return out


def pack_by_length(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Group indices into micro-batches of similar length whose padded size (rows x longest) stays within
    ``max_tokens`` (one over-long sequence gets a batch of its own). Sorting by length keeps padding small."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches, current, longest = [], [], 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if current and longest_if * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append(i)
        longest = longest_if
    if current:
        batches.append(current)
    return batches
