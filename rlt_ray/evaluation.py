"""Answer checking for jobs/evaluate.py: math-verify for math answers (never a hand regex), reasoning-gym's own
scorers for reasoning-gym tasks (Countdown expressions, GSM-style numbers)."""

from __future__ import annotations

from typing import Any, Optional

from rlt_ray.errors import FormatError
from rlt_ray.formats import RLTFormat, Row


def predicted_solution(fmt: RLTFormat, completion: str) -> Optional[str]:
    """The solution block of a student completion (the prompt ends before the thought block), or None."""
    try:
        return fmt.parse_assistant(completion)[1]
    except FormatError:
        return None


def boxed_content(text: str) -> Optional[str]:
    """The content of the last \\boxed{...} (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def load_answer_check(spec: str):
    """reward.answer_check "package.module:function" → the function; a clear error naming the key otherwise."""
    import importlib

    from rlt_ray.errors import ConfigError

    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"config key 'reward.answer_check': {spec!r} is not 'module:function'")
    try:
        function = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config key 'reward.answer_check': cannot load {spec!r}: {exc}") from None
    if not callable(function):
        raise ConfigError(f"config key 'reward.answer_check': {spec!r} is not callable")
    return function


class AnswerChecker:
    """``check(row, index, prediction)``: True when the predicted solution is right."""

    def __init__(self, source: str, size: int, seed: int, own_timeouts: bool = True, function: Optional[str] = None):
        """``own_timeouts=False``: math-verify without its signal-based timeouts (for a caller that bounds the
        whole check itself: rlt_ray.verifier.time_limit; two alarms would cancel each other). ``function``
        (reward.answer_check): "module:function", your own check, called as function(row, prediction) -> bool."""
        self.timeout = 5 if own_timeouts else None
        self.function = load_answer_check(function) if function else None
        self.method = "function" if function else self.method_for(source)
        self.rg = None
        if self.method == "reasoning_gym":
            import reasoning_gym

            self.rg = reasoning_gym.create_dataset(source.split(":", 1)[1], size=size, seed=seed)

    @staticmethod
    def method_for(source: str) -> str:
        """How answers from ``source`` are checked: reasoning-gym's own scorer for its tasks, else math-verify."""
        return "reasoning_gym" if source.startswith("reasoning_gym:") else "math_verify"

    def check(self, row: Row, index: int, prediction: Optional[str]) -> bool:
        if prediction is None or not prediction.strip():
            return False
        if self.function is not None:
            return bool(self.function(row, prediction))
        if self.rg is not None:
            answer = boxed_content(prediction)
            answer = prediction.strip() if answer is None else answer
            return float(self.rg.score_answer(answer=answer, entry=self.rg[index])) >= 1.0
        from math_verify import parse, verify

        gold = row.answer if row.answer else row.solution
        if "\\boxed" not in gold and "$" not in gold:
            gold = f"${gold}$"
        return bool(verify(parse(gold, parsing_timeout=self.timeout), parse(prediction, parsing_timeout=self.timeout),
                           timeout_seconds=self.timeout))


CHECK_TIMEOUT_S = 10.0  # one answer's check (math-verify's parse of a pathological answer can take minutes)


class CheckStage:
    """A Ray Data stage of jobs/evaluate.py: decode each sampled answer, take its solution block and check it
    (AnswerChecker). Columns in: ``index``, ``completion_ids``, ``finish_reason`` (one completion per row)."""

    def __init__(self, cfg: Any, model: str, source: str, rows: list[Row]):
        from rlt_ray.models import load_tokenizer

        self.tokenizer = load_tokenizer(model)
        self.fmt = RLTFormat(cfg.format, self.tokenizer)
        # math-verify's own timeouts are signal alarms, which raise off the main thread, and Ray Data may run
        # this stage there: the check is bounded by time_limit where it can be, and by the answer's length
        self.checker = AnswerChecker(source, cfg.eval.size, cfg.eval.seed, own_timeouts=False)
        self.rows = rows

    def check(self, index: int, prediction: Optional[str]) -> tuple[bool, str]:
        """(correct, why the check failed or ""): a check that raises or runs past CHECK_TIMEOUT_S counts as
        wrong, and the evaluation goes on."""
        from rlt_ray.verifier import MAX_SOLUTION_CHARS, CheckTimeout, time_limit

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


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion (sound at 0/n and n/n, unlike the normal approximation)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize_results(items: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(items)
    correct = sum(1 for it in items if it["correct"])
    low, high = wilson_interval(correct, n)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0, "low": low, "high": high,
            "no_solution_block": sum(1 for it in items if it["prediction"] is None),
            "truncated": sum(1 for it in items if it["finish_reason"] == "length"),
            "check_errors": sum(1 for it in items if it.get("check_error"))}
