"""The outcome reward (reward.kind=verifier): a student-format completion (thought block, then solution block) is
worth 1 when its solution's answer is right (rlt_ray.method.answers.AnswerChecker: math-verify, or reasoning-gym's
own scorer), plus reward.format_bonus when both blocks are closed. Pure functions, unit-tested without Ray.

What cannot earn the answer's reward, whatever its solution block says (the shapes that broke the extended demo's
cold start, where a student learnt to write run-on text up to the token limit):
- a completion cut at rollout.max_new_tokens (finish_reason "length"): it never finished;
- a completion that goes on after its solution block (anything but whitespace and the end-of-turn token).
Both also get reward.overlong_penalty (0 by default: no reward beyond losing the answer's).

A sample whose check raises or runs past reward.verifier_timeout_s gets its group's worst reward (the rule the
RLT reward follows for an unscorable sample): it can never be the best of its group, and the run goes on.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from rlt_ray.errors import FormatError
from rlt_ray.method.formats import RLTFormat, Row

# the checker sees at most this many characters of a solution block: a 100k-character answer is checked in
# bounded time (math-verify parses what it is given), and a real final answer is far shorter
MAX_SOLUTION_CHARS = 4000


@dataclass
class Verdict:
    correct: bool = False
    formatted: bool = False  # both the thought block and the solution block closed
    error: Optional[str] = None  # the check raised or timed out: the sample takes its group's worst reward
    overlong: bool = False  # cut at the token limit, or text after the solution block: no answer reward


def solution_of(fmt: RLTFormat, completion: str) -> tuple[Optional[str], bool]:
    """(the solution block's content, or None; whether the completion is well formed: thought and solution
    blocks both closed)."""
    try:
        trace, solution, _ = fmt.parse_assistant_blocks(completion)
    except FormatError:
        return None, False
    return solution[-MAX_SOLUTION_CHARS:], trace is not None


def runs_on(fmt: RLTFormat, completion: str, finish_reason: Optional[str]) -> bool:
    """Whether a completion was cut at the token limit, or writes anything but whitespace and the end-of-turn token
    after its solution block."""
    if finish_reason == "length":
        return True
    close = completion.find(fmt.solution[1], completion.find(fmt.solution[0]))
    if close < 0:
        return False  # no closed solution block: nothing to check, no answer reward anyway
    rest = completion[close + len(fmt.solution[1]):]
    if fmt.eos_text:
        rest = rest.replace(fmt.eos_text, "")
    return bool(rest.strip())


def checkable(row: Row, reasoning_gym: bool) -> bool:
    """Whether a row has an answer to check against: reasoning-gym rows always do; others need an ``answer`` or a
    solution with a final answer (a \\boxed{} or a bare short answer)."""
    if reasoning_gym:
        return True
    if row.answer and row.answer.strip():
        return True
    solution = (row.solution or "").strip()
    return "\\boxed" in solution or (0 < len(solution) <= 64 and "\n" not in solution)


class CheckTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    """Raise CheckTimeout in the block after ``seconds`` (SIGALRM: the main thread only, as in a Ray actor's
    method; elsewhere the block runs unbounded). math-verify must run without its own alarms inside
    (AnswerChecker(own_timeouts=False)): a second alarm would replace this one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def verdict(check: Callable[[str], bool], fmt: RLTFormat, completion: str, timeout_s: float,
            finish_reason: Optional[str] = None) -> Verdict:
    """Check one completion with ``check(prediction)`` in at most ``timeout_s`` seconds; a cut or run-on completion
    (runs_on) is not checked and earns no answer reward."""
    prediction, formatted = solution_of(fmt, completion)
    if runs_on(fmt, completion, finish_reason):
        return Verdict(False, formatted, overlong=True)
    if prediction is None or not prediction.strip():
        return Verdict(False, formatted)
    try:
        with time_limit(timeout_s):
            return Verdict(bool(check(prediction)), formatted)
    except CheckTimeout:
        return Verdict(False, formatted, f"the verifier ran past reward.verifier_timeout_s={timeout_s:g}")
    except Exception as exc:  # a checker's own bug or a parse it cannot handle: this sample only
        return raised(exc, formatted)


def raised(exc: BaseException, formatted: bool) -> Verdict:
    return Verdict(False, formatted, f"the verifier raised {type(exc).__name__}: {str(exc)[:200]}")


def verifier_totals(verdicts: Sequence[Verdict], n: int, format_bonus: float,
                    overlong_penalty: float = 0.0) -> np.ndarray:
    """Rewards of a rollout's samples (groups of ``n``): correct + format_bonus x formatted + overlong_penalty x
    overlong; a sample whose check failed gets the worst reward of the others in its group (0 when none could be
    checked)."""
    total = np.asarray([float(v.correct) + format_bonus * float(v.formatted) + overlong_penalty * float(v.overlong)
                        for v in verdicts], dtype=np.float32)
    for g in range(0, len(verdicts), n):
        group = range(g, min(g + n, len(verdicts)))
        fine = [total[i] for i in group if verdicts[i].error is None]
        worst = min(fine) if fine else 0.0
        for i in group:
            if verdicts[i].error is not None:
                total[i] = worst
    return total


def verifier_metrics(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    return {"correct": np.asarray([v.correct for v in verdicts], dtype=np.float32),
            "formatted": np.asarray([v.formatted for v in verdicts], dtype=np.float32),
            "overlong": np.asarray([v.overlong for v in verdicts], dtype=np.float32)}
