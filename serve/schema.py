"""Request parsing for the explanation endpoint: pure functions, no Serve, no model.

Every problem is a ``RequestError`` carrying the HTTP status, the offending field and a message; the app turns
it into ``{"error": {"status", "field", "message"}}``. Bodies are decoded as UTF-8 and parsed by ``json.loads``
only: nothing is ever unpickled or evaluated. NaN / Infinity literals, which Python's json accepts, are refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional


class RequestError(Exception):
    def __init__(self, status: int, field: Optional[str], message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    max_n: int = 8
    max_body_bytes: int = 65536
    max_field_chars: int = 20000
    reward_available: bool = False


@dataclass(frozen=True)
class ExplainRequest:
    question: str
    solution: str
    max_tokens: int
    temperature: float
    n: int
    seed: Optional[int]
    stream: bool
    best_of: bool


FIELDS = ("question", "solution", "max_tokens", "temperature", "n", "seed", "stream", "best_of")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, None, f"request body is {len(raw)} bytes; the limit is {limits.max_body_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, None, f"request body is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise RequestError(400, None, f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RequestError(422, None, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def _text(obj: dict, name: str, limits: Limits) -> str:
    if name not in obj:
        raise RequestError(422, name, "field is required")
    value = obj[name]
    if not isinstance(value, str):
        raise RequestError(422, name, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RequestError(422, name, "must not be empty")
    if len(value) > limits.max_field_chars:
        raise RequestError(422, name, f"is {len(value)} characters; the limit is {limits.max_field_chars}")
    return value


def _int(obj: dict, name: str, default: Optional[int], lo: int, hi: Optional[int]) -> Optional[int]:
    value = obj.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, name, f"must be an integer, got {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        raise RequestError(422, name, f"must be between {lo} and {hi}, got {value}" if hi is not None
                           else f"must be >= {lo}, got {value}")
    return value


def _bool(obj: dict, name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(422, name, f"must be true or false, got {type(value).__name__}")
    return value


def parse_explain(obj: dict[str, Any], limits: Limits, default_temperature: float) -> ExplainRequest:
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise RequestError(422, unknown[0], f"unknown field(s) {unknown}; allowed: {list(FIELDS)}")
    question = _text(obj, "question", limits)
    solution = _text(obj, "solution", limits)
    max_tokens = _int(obj, "max_tokens", limits.max_tokens, 1, limits.max_tokens)
    n = _int(obj, "n", 1, 1, limits.max_n)
    seed = _int(obj, "seed", None, 0, 2**31 - 1)
    temperature = obj.get("temperature", default_temperature)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise RequestError(422, "temperature", f"must be a number, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise RequestError(422, "temperature", f"must be between 0 and 2, got {temperature}")
    stream, best_of = _bool(obj, "stream"), _bool(obj, "best_of")
    if best_of and not limits.reward_available:
        raise RequestError(422, "best_of", "needs a student model to score explanations (config serve.student)")
    return ExplainRequest(question, solution, int(max_tokens), float(temperature), int(n), seed, stream, best_of)
