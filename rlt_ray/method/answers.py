"""Answer checking for jobs/evaluate.py: math-verify for math answers (never a hand regex), reasoning-gym's own
scorers for reasoning-gym tasks (Countdown expressions, GSM-style numbers)."""

from __future__ import annotations

from typing import Any, Optional

from rlt_ray.errors import FormatError
from rlt_ray.method.formats import RLTFormat, Row


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
        whole check itself: rlt_ray.method.verifier.time_limit; two alarms would cancel each other). ``function``
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
