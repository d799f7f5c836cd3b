"""A policy that starts with part of a checkable task right, for the tests that assert outcome-reward GRPO learns.

The task: "What is a+0?" for the ten digits, answered in the student's format (a thought block "a+0=a.", then the
solution block with the sum). The starting policy is the demo's 3-layer student trained from scratch on NOISY
labels: each question's solution is right in ``correct_share`` of its examples and one too high (a decoy) in the
rest. Trained to convergence, it samples the right answer about ``correct_share`` of the time, by construction and
not by stopping mid-training, so the starting accuracy holds on any CPU; GRPO has to move the mass from the decoy
to the answer its own thought block already holds. (Tried first and dropped: sums of two digits 1..5 with noisy
answers, and a fixed thought: a from-scratch model did not learn to condition on the question in 600 steps, so it
started at ~3 % and had no signal.) Plain torch, gradient clipping 1.0 (without it, lr 3e-3 did not converge):
the thing under test is the RL job, not the SFT.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTIONS = [(a, 0) for a in range(10)]


def thought(a: int, b: int) -> str:
    return f"{a}+{b}={a + b}."


def write_task(path: Path) -> Path:
    """The RL job's data.source: one row per question, its solution the sum (math-verify checks it)."""
    path.write_text("".join(json.dumps({"question": f"What is {a}+{b}?", "solution": str(a + b),
                                        "reasoning_trace": thought(a, b)}) + "\n" for a, b in QUESTIONS))
    return path


def noisy_rows(correct_share: float, copies: int):
    from rlt_ray.method.formats import Row

    rows = []
    for a, b in QUESTIONS:
        right = round(correct_share * copies)
        answers = [a + b] * right + [a + b + 1] * (copies - right)  # the decoy: off by one
        rows += [Row(question=f"What is {a}+{b}?", solution=str(s), reasoning_trace=thought(a, b)) for s in answers]
    return rows


def train_policy(cfg, out: Path, correct_share: float = 0.3, copies: int = 10, steps: int = 200,
                 lr: float = 1e-3, seed: int = 0) -> Path:
    """The demo student trained on the noisy rows (the student SFT's examples and loss); saved as an HF folder."""
    import torch

    from rlt_ray.method.formats import RLTFormat
    from rlt_ray.method.logprobs import pad_batch, token_logprobs
    from rlt_ray.models.registry import load_causal_lm, load_tokenizer, pad_token_id
    from rlt_ray.data.sft_rows import build_examples, sft_loss

    torch.manual_seed(seed)
    tok = load_tokenizer(cfg.model.student)
    model = load_causal_lm(cfg.model.student, "float32", "cpu").train()
    fmt = RLTFormat(cfg.format, tok)
    examples = build_examples(fmt, noisy_rows(correct_share, copies), "student", 512)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(seed)
    for _ in range(steps):
        idx = rng.sample(range(len(examples.ids)), 32)
        ids, attn = pad_batch([examples.ids[i] for i in idx], pad_token_id(tok), "cpu")
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, i in enumerate(idx):
            mask[row, 1:len(examples.masks[i])] = torch.tensor(examples.masks[i][1:], dtype=torch.bool)
        loss = sft_loss(token_logprobs(model, ids, attn, mask, 1.0), mask, mask.sum())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out
