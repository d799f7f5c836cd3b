"""Answer checking agrees with hand-checked answers on a small fixed set."""

import pytest

from rlt_ray.method.answers import AnswerChecker, boxed_content, predicted_solution, summarize_results, wilson_interval
from rlt_ray.method.formats import Row

# (gold answer, predicted solution, hand-checked verdict)
MATH_CASES = [
    ("\\frac{1}{2}", "The answer is \\boxed{0.5}.", True),
    ("\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", True),
    ("70", "The final answer is \\boxed{70}.", True),
    ("70", "The final answer is \\boxed{71}.", False),
    ("2\\sqrt{3}", "$\\sqrt{12}$", True),
    ("x^2+2x+1", "\\boxed{(x+1)^2}", True),
    ("\\{1,2\\}", "\\boxed{\\{2, 1\\}}", True),
    ("4", "I think it is 3", False),
]


@pytest.mark.parametrize("gold,prediction,verdict", MATH_CASES)
def test_math_verify_checker_agrees_with_hand_checks(gold, prediction, verdict):
    checker = AnswerChecker("data/math.jsonl", 0, 0)
    assert checker.method == "math_verify"
    assert checker.check(Row(question="q", solution=f"\\boxed{{{gold}}}", answer=gold), 0, prediction) is verdict


def test_reasoning_gym_checkers_agree_with_hand_checks():
    from rlt_ray.data.sources import reasoning_gym_rows

    gsm = AnswerChecker("reasoning_gym:gsm_symbolic", 4, 7)
    rows = reasoning_gym_rows("gsm_symbolic", 4, 7)
    assert gsm.check(rows[0], 0, rows[0].solution)  # our own solution string, boxed
    assert gsm.check(rows[0], 0, rows[0].answer)
    assert not gsm.check(rows[0], 0, f"\\boxed{{{float(rows[0].answer) + 1}}}")
    assert not gsm.check(rows[0], 0, None) and not gsm.check(rows[0], 0, "  ")
    cd = AnswerChecker("reasoning_gym:countdown", 4, 7)
    rows = reasoning_gym_rows("countdown", 4, 7)
    assert cd.check(rows[1], 1, rows[1].solution)
    assert not cd.check(rows[1], 1, "1 + 1")


def test_predicted_solution_and_boxed(fmt):
    text = "<|begin_of_thought|>\n\n2+3=5\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n\\boxed{5}\n\n<|end_of_solution|>"
    assert predicted_solution(fmt, text) == "\\boxed{5}"
    assert predicted_solution(fmt, "<|begin_of_thought|> no solution") is None
    assert boxed_content("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}" and boxed_content("none") is None
    s = summarize_results([{"correct": True, "prediction": "x", "finish_reason": "stop"},
                           {"correct": False, "prediction": None, "finish_reason": "length"}])
    assert {k: s[k] for k in ("n", "correct", "accuracy", "no_solution_block", "truncated")} == \
        {"n": 2, "correct": 1, "accuracy": 0.5, "no_solution_block": 1, "truncated": 1}


@pytest.mark.parametrize("correct,n,low,high", [
    (0, 32, 0.0, 0.1072), (32, 32, 0.8928, 1.0), (50, 200, 0.1951, 0.3143), (100, 200, 0.4314, 0.5686)])
def test_wilson_interval_matches_published_values(correct, n, low, high):
    # values from the closed form (Wilson 1927), e.g. statsmodels' proportion_confint(method="wilson")
    lo, hi = wilson_interval(correct, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_summary_carries_the_interval():
    items = [{"correct": i < 3, "prediction": "x", "finish_reason": "stop"} for i in range(10)]
    s = summarize_results(items)
    assert (s["correct"], s["n"], s["accuracy"]) == (3, 10, 0.3) and s["low"] < 0.3 < s["high"]


def test_the_check_stage_checks_off_the_main_thread_and_a_raising_check_fails_its_row_only():
    """Ray Data runs the check stage's UDF off the main thread, where math-verify's own (signal) timeouts raise:
    every answer of the demo's evaluation then failed the whole job. The stage checks there, and a check that
    raises counts its row as wrong, with why."""
    import threading

    from rlt_ray.config import load_config
    from actors.verifier import CheckStage

    rows = [Row(question="q", solution="\\boxed{70}", answer=a) for a in ("70", "71", "x")]
    stage = CheckStage(load_config("configs/tiny_cpu.yaml", []), "tiny-student", "data/math.jsonl", rows)
    got = {}
    thread = threading.Thread(target=lambda: got.update({i: stage.check(i, "The answer is \\boxed{70}.")
                                                         for i in range(2)}))
    thread.start()
    thread.join()
    assert got == {0: (True, ""), 1: (False, "")}

    def broken(row, index, prediction):
        raise ZeroDivisionError("a checker's own bug")

    stage.checker.check = broken
    assert stage.check(2, "70") == (False, "the check raised ZeroDivisionError: a checker's own bug")
