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
        # our fields, and the OpenAI error's (message, type, param, code), so one shape serves every route
        kind = {401: "authentication_error", 404: "not_found_error", 408: "timeout_error",
                503: "service_unavailable"}.get(
            self.status, "invalid_request_error")
        return {"error": {"status": self.status, "field": self.field, "message": self.message, "type": kind,
                          "param": self.field, "code": self.status}}


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512
    max_n: int = 8
    max_body_bytes: int = 65536
    max_field_chars: int = 20000
    reward_available: bool = False
    max_json_depth: int = 32


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


def _json_type(value: Any) -> str:
    return {type(None): "null", bool: "boolean", str: "string", int: "integer", float: "number", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_body(raw: bytes, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_body_bytes:
        raise RequestError(413, None, f"request body is {len(raw)} bytes; the limit is {limits.max_body_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, None, f"request body is not valid UTF-8 (byte {exc.start})") from None
    obj = load_json(text, limits.max_json_depth)
    if not isinstance(obj, dict):
        raise RequestError(422, None, f"request body must be a JSON object, got {type(obj).__name__}")
    return obj


def load_json(text: str, max_depth: int) -> Any:
    """``json.loads`` with the request's limits: no NaN/Infinity, arrays and objects nested at most ``max_depth``
    deep, no lone surrogate in any string (key or value). Each problem is a RequestError naming where it is."""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:  # thousands of brackets: json's own recursion limit
        raise RequestError(422, None, f"JSON is nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise RequestError(400, None, f"request body is not valid JSON: {exc}") from None
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:  # iterative: a deep document must not exhaust the stack here either
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth >= max_depth:
                raise RequestError(422, path or None, f"JSON is nested deeper than {max_depth} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and lone_surrogate(key) is not None:
                    raise RequestError(422, path or None, "a key has a lone UTF-16 surrogate (not valid Unicode)")
                sub = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
                stack.append((item, sub, depth + 1))
        elif isinstance(value, str) and (bad := lone_surrogate(value)) is not None:
            raise RequestError(422, path or None, f"has a lone UTF-16 surrogate at character {bad} "
                                                  "(not valid Unicode text)")
    return obj


def _text(obj: dict, name: str, limits: Limits) -> str:
    if name not in obj:
        raise RequestError(422, name, "field is required")
    value = obj[name]
    if not isinstance(value, str):
        raise RequestError(422, name, f"must be a string, got {_json_type(value)}")
    if not value.strip():
        raise RequestError(422, name, "must not be empty")
    if (bad := lone_surrogate(value)) is not None:
        raise RequestError(422, name, f"has a lone UTF-16 surrogate at character {bad} (not valid Unicode text)")
    if len(value) > limits.max_field_chars:
        raise RequestError(422, name, f"is {len(value)} characters; the limit is {limits.max_field_chars}")
    return value


def _int(obj: dict, name: str, default: Optional[int], lo: int, hi: Optional[int]) -> Optional[int]:
    if name in obj and obj[name] is None:  # an explicit null is not "left out"
        raise RequestError(422, name, "must be an integer, got null (leave the field out for the default)")
    value = obj.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(422, name, f"must be an integer, got {_json_type(value)}")
    if value < lo or (hi is not None and value > hi):
        raise RequestError(422, name, f"must be between {lo} and {hi}, got {value}" if hi is not None
                           else f"must be >= {lo}, got {value}")
    return value


def lone_surrogate(text: str) -> Optional[int]:
    """The index of the first lone UTF-16 surrogate in ``text`` (valid JSON ``"\\ud800"``, but not text any
    tokenizer can encode), or None."""
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        return exc.start


def _bool(obj: dict, name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(422, name, f"must be true or false, got {_json_type(value)}")
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
    if temperature is None:
        raise RequestError(422, "temperature", "must be a number, got null (leave the field out for the default)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise RequestError(422, "temperature", f"must be a number, got {_json_type(temperature)}")
    if not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0:
        raise RequestError(422, "temperature", f"must be between 0 and 2, got {temperature}")
    stream, best_of = _bool(obj, "stream"), _bool(obj, "best_of")
    if best_of and not limits.reward_available:
        raise RequestError(422, "best_of", "needs a student model to score explanations (config serve.student)")
    return ExplainRequest(question, solution, int(max_tokens), float(temperature), int(n), seed, stream, best_of)
