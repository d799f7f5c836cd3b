"""StudentScorer: the frozen student, scoring a rollout's explanations with the RLT reward.

For each completion it rebuilds the student's view (question, explanation, solution) with the same explanation
token ids, takes the student's log-probs on the explanation and the solution (batched, sorted and packed by
length: rlt_ray.scoring) and combines them with the teacher's explanation log-probs into the reward parts.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

import numpy as np
import ray
import torch


@ray.remote
class StudentScorer:
    def __init__(self, cfg: Any, index: int = 0):
        from rlt_ray.config import temperatures
        from rlt_ray.formats import RLTFormat
        from rlt_ray.models import load_causal_lm, load_tokenizer, pad_token_id
        from rlt_ray.rewards import RewardSpec
        from rlt_ray.spans import check_same_vocabulary

        self.cfg, self.index = cfg, index
        self.device = "cuda" if cfg.resources.device == "cuda" else "cpu"
        teacher_tok = load_tokenizer(cfg.model.tokenizer or cfg.model.teacher)
        student_tok = load_tokenizer(cfg.model.student)
        check_same_vocabulary(teacher_tok, student_tok)
        self.teacher_fmt, self.student_fmt = RLTFormat(cfg.format, teacher_tok), RLTFormat(cfg.format, student_tok)
        self.pad_id = pad_token_id(student_tok)
        self.student = load_causal_lm(cfg.model.student, cfg.model.dtype, self.device).eval().requires_grad_(False)
        self.spec = RewardSpec.from_config(cfg.reward)
        self.student_temperature = temperatures(cfg)["student"]

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid()}

    def score(self, rows: Sequence[Any], rollout: dict[str, Any],
              teacher_logprobs: Optional[Sequence[Any]] = None, offset: int = 0,
              skip_errors: bool = False) -> dict[str, Any]:
        """Reward parts for every completion of ``rollout`` (rows[j] is prompt j's row).

        teacher_logprobs: None uses the rollout's processed log-probs; otherwise the refs the learner ranks
        returned (rlt_ray.batch order over the whole step), of which this rollout is [offset, offset + len).
        skip_errors: a completion that cannot be aligned is reported in ``errors`` and gets NaN parts instead
        of failing the batch (distillation; training fails loudly)."""
        from rlt_ray.scoring import score_sequences
        from rlt_ray.spans import build_reward_sequence

        t0 = time.perf_counter()
        n = int(rollout["n"])
        completions = rollout["completion_ids"]
        if teacher_logprobs is None:
            completion_lp = rollout["logprobs"]
        else:
            merged: dict[int, np.ndarray] = {}
            for part in ray.get(list(teacher_logprobs)):
                merged.update(part)
            completion_lp = [merged[offset + i] for i in range(len(completions))]
        seqs, teacher_expl, kept, errors = [], [], [], []
        for i, comp in enumerate(completions):
            prompt = rollout["prompt_ids"][i // n]
            try:
                seq = build_reward_sequence(rows[i // n], prompt, [int(t) for t in comp], self.teacher_fmt,
                                            self.student_fmt)
            except Exception as exc:
                if not skip_errors:
                    raise
                errors.append({"completion": i, "row": getattr(rows[i // n], "id", None), "error": repr(exc)})
                continue
            a, b = seq.teacher_explanation
            seqs.append(seq)
            kept.append(i)
            teacher_expl.append(torch.tensor(np.asarray(completion_lp[i][a - len(prompt): b - len(prompt)])))
        out: dict[str, Any] = {}
        if seqs:
            parts = score_sequences(self.student, seqs, teacher_expl, self.spec, self.pad_id,
                                    self.student_temperature, device=self.device)
            for k, v in parts.items():
                full = np.full(len(completions), np.nan, dtype=np.float32)
                full[kept] = v.cpu().numpy()
                out[k] = full
        explanations: list[Optional[str]] = [None] * len(completions)
        for i, s in zip(kept, seqs):
            explanations[i] = s.explanation
        out["explanations"] = explanations
        out["errors"] = errors
        out["scorer"] = self.index
        out["seconds"] = time.perf_counter() - t0
        out["tokens"] = int(sum(len(s.student_ids) for s in seqs))
        return out
