"""Verifier: the outcome reward of reward.kind=verifier, in the student scorer's place (no model loaded).

It decodes each completion of a rollout (a student's thought and solution blocks), checks the solution's answer
against the row's (rlt_ray.evaluation.AnswerChecker: math-verify, or reasoning-gym's own scorer for a
``reasoning_gym:`` source) and returns the reward in the scorer's layout, so that the RL step, its streaming, its
fault handling and its metrics are the same code in both modes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import numpy as np
import ray


class Verify:
    """The verifier's code as a plain class (``Verifier`` is its actor)."""

    def __init__(self, cfg: Any, index: int = 0):
        from rlt_ray.config import trained_model
        from rlt_ray.data import load_rows
        from rlt_ray.evaluation import AnswerChecker
        from rlt_ray.formats import RLTFormat
        from rlt_ray.models import load_tokenizer

        self.cfg, self.index = cfg, index
        self.tokenizer = load_tokenizer(cfg.model.tokenizer or trained_model(cfg))
        self.fmt = RLTFormat(cfg.format, self.tokenizer)
        source = str(cfg.data.source)
        self.checker = AnswerChecker(source, cfg.data.size, cfg.data.seed, own_timeouts=False,
                                     function=cfg.reward.answer_check)
        # reasoning-gym's scorer needs the item's index in the generated set: by row id, from the same load
        self.positions = {}
        if self.checker.method == "reasoning_gym":
            rows = load_rows(source, split=cfg.data.split, size=cfg.data.size, seed=cfg.data.seed,
                             max_rows=cfg.data.max_rows, fmt_cfg=cfg.format)
            self.positions = {r.id: i for i, r in enumerate(rows)}

    def ready(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid()}

    def score(self, rows: Sequence[Any], rollout: dict[str, Any], *_ignored: Any, **_also: Any) -> dict[str, Any]:
        """Rewards for every completion of ``rollout`` (rows[j] is prompt j's row), in the scorer's layout:
        ``total``, ``failed``, ``errors``, ``explanations`` (the completions' text), ``match`` (0 when the blocks
        are closed, else -1), ``correct``, ``formatted``, lengths, ``scorer``, ``seconds``, ``tokens``. The
        arguments after ``rollout`` (the RLT reward's teacher log-probs) are not needed here."""
        from rlt_ray.verifier import raised, solution_of, verdict, verifier_metrics, verifier_totals

        t0 = time.perf_counter()
        rc = self.cfg.reward
        n = int(rollout["n"])
        texts = [self.tokenizer.decode([int(t) for t in c], skip_special_tokens=False)
                 for c in rollout["completion_ids"]]
        verdicts, errors = [], []
        for i, text in enumerate(texts):
            row = rows[i // n]
            if self.cfg.run.fault_injection == f"verifier_error@{i}":  # tests only (rlt_ray.config)
                v = raised(RuntimeError("injected fault: the verifier raises"), solution_of(self.fmt, text)[1])
            else:
                check = (lambda prediction, row=row: self.checker.check(row, self.positions.get(row.id, 0),
                                                                        prediction))
                # bounded by SIGALRM: an actor's method runs in its process's main thread
                v = verdict(check, self.fmt, text, float(rc.verifier_timeout_s), rollout["finish_reason"][i])
            if v.error is not None:
                errors.append({"completion": i, "row": getattr(row, "id", None), "error": v.error})
            verdicts.append(v)
        total = verifier_totals(verdicts, n, float(rc.format_bonus), float(rc.overlong_penalty))
        parts = verifier_metrics(verdicts)
        lengths = np.asarray([len(c) for c in rollout["completion_ids"]], dtype=np.float32)
        return {"total": total, "failed": np.asarray([v.error is not None for v in verdicts]),
                "errors": errors, "explanations": texts, "match": parts["formatted"] - 1.0, **parts,
                "completion_tokens": lengths, "scorer": self.index, "seconds": time.perf_counter() - t0,
                "tokens": int(lengths.sum())}


@ray.remote
class Verifier(Verify):
    """The verifier actor of reward.kind=verifier (named so in the dashboard and the state API)."""
