"""Verifier: the outcome reward of reward.kind=verifier, in the student scorer's place (no model loaded).

It decodes each completion of a rollout (a student's thought and solution blocks), checks the solution's answer
against the row's (rlt_ray.method.answers.AnswerChecker: math-verify, or reasoning-gym's own scorer for a
``reasoning_gym:`` source) and returns the reward in the scorer's layout, so that the RL step, its streaming, its
fault handling and its metrics are the same code in both modes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional, Sequence

import numpy as np
import ray

from rlt_ray.method.answers import AnswerChecker, predicted_solution
from rlt_ray.method.formats import RLTFormat, Row


class Verify:
    """The verifier's code as a plain class (``Verifier`` is its actor)."""

    def __init__(self, cfg: Any, index: int = 0):
        from rlt_ray.config import trained_model
        from rlt_ray.data.sources import load_rows
        from rlt_ray.method.answers import AnswerChecker
        from rlt_ray.method.formats import RLTFormat
        from rlt_ray.models.registry import load_tokenizer

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
        from rlt_ray.method.verifier import raised, solution_of, verdict, verifier_metrics, verifier_totals

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


CHECK_TIMEOUT_S = 10.0  # one answer's check (math-verify's parse of a pathological answer can take minutes)


class CheckStage:
    """A Ray Data stage of jobs/evaluate.py: decode each sampled answer, take its solution block and check it
    (AnswerChecker). Columns in: ``index``, ``completion_ids``, ``finish_reason`` (one completion per row)."""

    def __init__(self, cfg: Any, model: str, source: str, rows: list[Row]):
        from rlt_ray.models.registry import load_tokenizer

        self.tokenizer = load_tokenizer(model)
        self.fmt = RLTFormat(cfg.format, self.tokenizer)
        # math-verify's own timeouts are signal alarms, which raise off the main thread, and Ray Data may run
        # this stage there: the check is bounded by time_limit where it can be, and by the answer's length
        self.checker = AnswerChecker(source, cfg.eval.size, cfg.eval.seed, own_timeouts=False)
        self.rows = rows

    def check(self, index: int, prediction: Optional[str]) -> tuple[bool, str]:
        """(correct, why the check failed or ""): a check that raises or runs past CHECK_TIMEOUT_S counts as
        wrong, and the evaluation goes on."""
        from rlt_ray.method.verifier import MAX_SOLUTION_CHARS, CheckTimeout, time_limit

        if prediction is not None:
            prediction = prediction[-MAX_SOLUTION_CHARS:]
        try:
            with time_limit(CHECK_TIMEOUT_S):
                return bool(self.checker.check(self.rows[index], index, prediction)), ""
        except CheckTimeout:
            return False, f"the check ran past {CHECK_TIMEOUT_S:g} s"
        except Exception as exc:  # a checker's own bug, or an answer it cannot parse: this row only
            return False, f"the check raised {type(exc).__name__}: {str(exc)[:200]}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list] = {k: [] for k in ("index", "completion", "prediction", "has_prediction", "correct",
                                                "check_error", "finish_reason", "tokens")}
        for i, ids, reasons in zip(batch["index"], batch["completion_ids"], batch["finish_reason"]):
            i, ids = int(i), [int(t) for t in ids[0]]
            completion = self.tokenizer.decode(ids, skip_special_tokens=False)
            prediction = predicted_solution(self.fmt, completion)
            out["index"].append(i)
            out["completion"].append(completion)
            out["prediction"].append(prediction or "")
            out["has_prediction"].append(prediction is not None)
            correct, error = self.check(i, prediction)
            out["correct"].append(correct)
            out["check_error"].append(error)
            out["finish_reason"].append(str(reasons[0]))
            out["tokens"].append(len(ids))
        return out
