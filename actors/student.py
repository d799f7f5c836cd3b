"""StudentScorer: the frozen student, scoring a rollout's explanations with the RLT reward.

For each completion it rebuilds the student's view (question, explanation, solution) with the same explanation
token ids, takes the student's log-probs on the explanation and the solution (batched, sorted and packed by
length: rlt_ray.method.scoring) and combines them with the teacher's explanation log-probs into the reward parts.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

import numpy as np
import ray
import torch

from actors import stage_trace


class Scorer:
    """The scorer's code as a plain class: the RL job's actor (``StudentScorer``) and Ray Data's scoring stage
    (jobs/distill.py) are both this."""

    def __init__(self, cfg: Any, index: int = 0):
        from rlt_ray.config import temperatures
        from rlt_ray.method.formats import RLTFormat
        from rlt_ray.models.registry import load_causal_lm, load_tokenizer, pad_token_id
        from rlt_ray.method.rewards import RewardSpec
        from rlt_ray.method.spans import check_same_vocabulary

        self.cfg, self.index = cfg, index
        self.device = "cuda" if cfg.resources.device == "cuda" else "cpu"
        teacher_tok = load_tokenizer(cfg.model.tokenizer or cfg.model.teacher)
        student_tok = load_tokenizer(cfg.model.student)
        check_same_vocabulary(teacher_tok, student_tok)
        self.teacher_fmt, self.student_fmt = RLTFormat(cfg.format, teacher_tok), RLTFormat(cfg.format, student_tok)
        self.pad_id = pad_token_id(student_tok)
        self.student = load_causal_lm(cfg.model.student, cfg.model.dtype, self.device,
                                      cfg.model.attention).eval().requires_grad_(False)
        self.spec = RewardSpec.from_config(cfg.reward)
        self.student_temperature = temperatures(cfg)["student"]

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid()}

    @staticmethod
    def _teacher_logprobs(rollout: dict[str, Any], teacher_logprobs: Optional[Sequence[Any]], offset: int,
                          prompt_tails: Optional[Sequence[Any]]) -> tuple[list, list]:
        """Per completion: the teacher's log-probs of its tokens, and of its prompt's last tokens (None: not
        given), from the rollout (with the learners' prompt tails) or from the learners' refs (score's docstring)."""
        from rlt_ray.method.scoring import prompt_key

        n, completions = int(rollout["n"]), rollout["completion_ids"]
        if teacher_logprobs is None:
            by_prompt: dict = {}
            for part in ray.get(list(prompt_tails or [])):
                by_prompt.update(part)
            per_prompt = [by_prompt.get(prompt_key(p)) for p in rollout["prompt_ids"]]
            return rollout["logprobs"], [per_prompt[i // n] for i in range(len(completions))]
        merged: dict[int, np.ndarray] = {}
        for part in ray.get(list(teacher_logprobs)):
            merged.update(part)
        both = [np.asarray(merged[offset + i]) for i in range(len(completions))]
        heads = [len(b) - len(c) for b, c in zip(both, completions)]
        return [b[h:] for b, h in zip(both, heads)], [b[:h] for b, h in zip(both, heads)]

    def score(self, rows: Sequence[Any], rollout: dict[str, Any],
              teacher_logprobs: Optional[Sequence[Any]] = None, offset: int = 0,
              prompt_tails: Optional[Sequence[Any]] = None, explanation_span: Optional[str] = None) -> dict[str, Any]:
        """Reward parts for every completion of ``rollout`` (rows[j] is prompt j's row).

        teacher_logprobs: None uses the rollout's processed log-probs; otherwise the refs the learner ranks
        returned (rlt_ray.data.rollout_batch order over the whole step), of which this rollout is [offset, offset + len); each
        array holds the last prompt tokens' log-probs first, then the completion's.
        prompt_tails: with rollout log-probs and reward.explanation_span=with_prompt_pad, refs of the learners'
        {prompt key: log-probs of the prompt's last tokens} (rlt_ray.method.scoring.prompt_key), for the padding that
        ends the prompt. explanation_span: None takes the config's.
        A sample that cannot be scored (alignment, a non-finite reward) gets rlt_ray.method.rewards.penalty_parts with
        the total of rlt_ray.method.rewards.unscorable_totals (below its group's worst), is flagged in ``failed`` and
        reported in ``errors``; the batch goes on."""
        from rlt_ray.method.rewards import penalty_parts, unscorable_totals
        from rlt_ray.method.scoring import score_sequences
        from rlt_ray.method.spans import build_reward_sequence

        t0 = time.perf_counter()
        n = int(rollout["n"])
        completions = rollout["completion_ids"]
        span = explanation_span or self.cfg.reward.explanation_span
        completion_lp, tail_lp = self._teacher_logprobs(rollout, teacher_logprobs, offset, prompt_tails)
        seqs, teacher_expl, kept, errors = [], [], [], []
        for i, comp in enumerate(completions):
            prompt = rollout["prompt_ids"][i // n]
            row = rows[i // n]
            try:
                seq = build_reward_sequence(row, prompt, [int(t) for t in comp], self.teacher_fmt, self.student_fmt,
                                            self.cfg.reward.solution_span, span)
                k = seq.prompt_pad_tokens
                tail = tail_lp[i] if k else np.zeros(0)
                if tail is None or len(tail) < k:
                    raise ValueError(f"no teacher log-probs for the prompt's last {k} tokens (the padding the "
                                     f"explanation span starts with; reward.explanation_span={span})")
                b = seq.teacher_explanation[1] - len(prompt)
                if len(completion_lp[i]) < b:
                    raise ValueError(f"teacher log-probs cover {len(completion_lp[i])} completion tokens, the "
                                     f"explanation has {b}")
                lp = np.concatenate([np.asarray(tail)[len(tail) - k:], np.asarray(completion_lp[i])[:b]])
            except Exception as exc:  # one odd sample never ends a run: it gets the penalty reward
                errors.append({"completion": i, "row": getattr(row, "id", None),
                               "error": f"{type(exc).__name__}: {exc}"})
                continue
            seqs.append(seq)
            kept.append(i)
            teacher_expl.append(torch.tensor(lp, dtype=torch.float32))
        penalty = penalty_parts(self.spec, len(completions))
        out: dict[str, Any] = {k: v.cpu().numpy().astype(np.float32) for k, v in penalty.items()}
        failed = np.ones(len(completions), dtype=bool)
        if seqs:
            parts = score_sequences(self.student, seqs, teacher_expl, self.spec, self.pad_id,
                                    self.student_temperature, self.cfg.reward.max_batch_tokens, device=self.device)
            finite = torch.isfinite(parts["total"]).cpu().numpy()
            for j in np.flatnonzero(~finite):
                errors.append({"completion": kept[j], "row": getattr(rows[kept[j] // n], "id", None),
                               "error": "non-finite reward"})
            good = [i for i, f in zip(kept, finite) if f]
            for key, v in parts.items():
                out[key][good] = v.cpu().numpy()[finite]
            failed[good] = False
        out["total"] = unscorable_totals(torch.from_numpy(out["total"]), torch.from_numpy(failed), n,
                                         self.spec.not_matched_penalty, float(penalty["total"][0])).numpy()
        explanations: list[Optional[str]] = [None] * len(completions)
        for i, s in zip(kept, seqs):
            explanations[i] = s.explanation
        out["failed"] = failed
        out["explanations"] = explanations
        out["errors"] = errors
        out["scorer"] = self.index
        out["seconds"] = time.perf_counter() - t0
        out["tokens"] = int(sum(len(s.student_ids) for s in seqs))
        return out


@ray.remote
class StudentScorer(Scorer):
    """The RL job's scoring actor (named so in the dashboard and the state API)."""


class ScoreStage:
    """A Ray Data stage of distillation (``Dataset.map_batches``, an actor pool): the scorer's RLT reward for each
    of a batch's k explanations per row, then distillation's keep rule (rlt_ray.data.distill_rows). Returns per row its
    kept records (JSON), why there is none (``error``), and the samples that could not be scored. A row whose
    scoring raises is scored alone; if it still raises, it gets the error, and the batch goes on."""

    def __init__(self, cfg: Any, rows: Any, k: int, keep: str, teacher: str):
        self.scorer = Scorer(cfg)
        self.rows = rows  # Ray Data keeps the constructor's arguments in the object store, once
        self.k, self.keep, self.teacher = int(k), keep, teacher
        self.fault = cfg.run.fault_injection  # tests only (rlt_ray.config): "distill_row_error@<row index>"

    def _score(self, batch: dict[str, Any], members: list[int]) -> tuple[list, list, list]:
        from rlt_ray.data.distill_rows import distilled

        indices = [int(batch["index"][j]) for j in members]
        if self.fault and any(self.fault == f"distill_row_error@{i}" for i in indices):
            raise RuntimeError(f"injected fault: scoring row {self.fault.split('@')[1]} fails")
        rows = [self.rows[i] for i in indices]
        rollout = {"n": self.k, "prompt_ids": [list(batch["prompt_ids"][j]) for j in members],
                   "completion_ids": [np.asarray(c, dtype=np.int32) for j in members
                                      for c in batch["completion_ids"][j]],
                   "logprobs": [np.asarray(x, dtype=np.float32) for j in members for x in batch["logprobs"][j]]}
        # the prompt's closing padding is left out of the explanation span here: its teacher log-probs would
        # need an HF forward of the teacher (vLLM gives prompt log-probs only at temperature 1), and it is the
        # same for every candidate of a row (docs/design.md)
        scored = self.scorer.score(rows, rollout, explanation_span="sampled")
        records, errors = distilled(self.scorer.teacher_fmt, rows, indices, scored, self.k, self.keep, self.teacher)
        sample_errors: list[list[dict]] = [[] for _ in rows]
        for e in scored["errors"]:
            sample_errors[e["completion"] // self.k].append(e)
        return records, errors, sample_errors

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import json

        stage_trace("ScoreStage", batch)
        n = len(batch["index"])
        records: list = [[] for _ in range(n)]
        errors: list = [str(e) for e in batch["error"]]  # rows the sampling stage could not sample
        sample_errors: list = [[] for _ in range(n)]
        sampled = [j for j in range(n) if not errors[j]]
        groups = [sampled]
        while groups:
            members = groups.pop()
            if not members:
                continue
            try:
                got = self._score(batch, members)
            except Exception as exc:
                if len(members) > 1:  # find the row that raises: each row alone
                    groups.extend([j] for j in members)
                    continue
                errors[members[0]] = f"scoring failed: {type(exc).__name__}: {exc}"[:500]
                continue
            for j, r, e, s in zip(members, *got):
                records[j], errors[j], sample_errors[j] = r, e or "", s
        return {"index": [int(i) for i in batch["index"]], "records": [json.dumps(r) for r in records],
                "error": errors, "sample_errors": [json.dumps(e) for e in sample_errors]}
