"""The outcome reward (rlt_ray.method.verifier): correct, wrong, unparsable, missing block, huge output, a verifier that
raises or hangs; the group's-worst rule; rows without a checkable answer."""

import time

import numpy as np
import pytest

from rlt_ray.method.answers import AnswerChecker
from rlt_ray.method.formats import Row
from rlt_ray.method.verifier import Verdict, checkable, verdict, verifier_totals

ROW = Row(question="What is 2+3?", solution="The final answer is \\boxed{5}.", answer="5")


def _completion(fmt, thought: str, solution: str | None, close_thought: bool = True) -> str:
    text = fmt.think[0] + fmt.pad + thought + (fmt.pad + fmt.think[1] + fmt.pad if close_thought else "")
    if solution is not None:
        text += fmt.solution[0] + fmt.pad + solution + fmt.pad + fmt.solution[1]
    return text


@pytest.fixture(scope="module")
def check():
    checker = AnswerChecker("math", 0, 0, own_timeouts=False)
    return lambda prediction: checker.check(ROW, 0, prediction)


def test_correct_wrong_unparsable_and_missing_blocks(fmt, check):
    assert verdict(check, fmt, _completion(fmt, "2 plus 3", "\\boxed{5}"), 10) == Verdict(True, True)
    assert verdict(check, fmt, _completion(fmt, "2 plus 3", "\\boxed{6}"), 10) == Verdict(False, True)
    assert verdict(check, fmt, _completion(fmt, "hm", "}}{{\\frac{"), 10) == Verdict(False, True)
    assert verdict(check, fmt, _completion(fmt, "2 plus 3", None), 10) == Verdict(False, False)  # no solution
    # a solution block without a closed thought: right, but not well formed
    assert verdict(check, fmt, _completion(fmt, "x", "\\boxed{5}", close_thought=False), 10) == Verdict(True, False)
    assert verdict(check, fmt, "5", 10) == Verdict(False, False)


def test_a_100k_character_completion_is_checked_in_bounded_time(fmt, check):
    huge = _completion(fmt, "x " * 50_000, "1 + " * 25_000 + "\\boxed{5}")
    assert len(huge) > 100_000
    t0 = time.perf_counter()
    v = verdict(check, fmt, huge, 10)
    assert time.perf_counter() - t0 < 10 and v.error is None and v.correct


def test_a_verifier_that_raises_or_hangs_marks_only_that_sample(fmt):
    def raises(prediction):
        raise KeyError("boom")

    def hangs(prediction):
        time.sleep(30)
        return True

    good = _completion(fmt, "t", "\\boxed{5}")
    v = verdict(raises, fmt, good, 10)
    assert not v.correct and v.error == "the verifier raised KeyError: 'boom'"
    t0 = time.perf_counter()
    v = verdict(hangs, fmt, good, 0.5)
    assert time.perf_counter() - t0 < 3 and v.error == "the verifier ran past reward.verifier_timeout_s=0.5"


def test_totals_add_the_format_bonus_and_a_failed_check_takes_its_groups_worst():
    vs = [Verdict(True, True), Verdict(False, True), Verdict(False, False, "raised"), Verdict(True, False),
          Verdict(False, False, "x"), Verdict(False, False, "y")]
    total = verifier_totals(vs, 3, 0.1)
    np.testing.assert_allclose(total, [1.1, 0.1, 0.1, 1.0, 1.0, 1.0])  # second group: only sample 3 was checked
    np.testing.assert_allclose(verifier_totals([Verdict(False, False, "x")] * 2, 2, 0.1), [0.0, 0.0])


def test_rows_without_a_checkable_answer():
    assert checkable(ROW, False) and checkable(Row(question="q", solution="42"), False)
    assert not checkable(Row(question="q", solution="A long proof.\nIt goes on and on without a final answer."),
                         False)
    assert checkable(Row(question="q", solution="anything"), True)  # reasoning-gym scores its own items


def test_a_cut_or_run_on_completion_earns_no_answer_reward_and_the_penalty_is_a_setting(fmt, check):
    """What broke the extended demo's cold start: a right solution block followed by run-on text, or a completion
    cut at the token limit, scored like a finished one. Neither earns the answer's reward now; whitespace and the
    end-of-turn token after the block are a finished answer."""
    good = _completion(fmt, "2 plus 3", "\\boxed{5}")
    assert verdict(check, fmt, good + "\n\n" + fmt.eos_text, 10, "stop") == Verdict(True, True)
    assert verdict(check, fmt, good + " 1111111111", 10, "stop") == Verdict(False, True, overlong=True)
    assert verdict(check, fmt, good, 10, "length") == Verdict(False, True, overlong=True)
    verdicts = [Verdict(True, True), Verdict(False, True, overlong=True), Verdict(False, True), Verdict(True, False)]
    np.testing.assert_allclose(verifier_totals(verdicts, 4, 0.1), [1.1, 0.1, 0.1, 1.0])  # the default: no penalty
    np.testing.assert_allclose(verifier_totals(verdicts, 4, 0.1, overlong_penalty=-0.5), [1.1, -0.4, 0.1, 1.0])


def test_a_positive_overlong_penalty_is_refused_naming_the_key():
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config

    with pytest.raises(ConfigError, match=r"reward.overlong_penalty.*<= 0"):
        load_config("configs/tiny_cpu.yaml", ["reward.overlong_penalty=0.5"])


def test_your_own_answer_check_scores_the_solution_block_and_a_bad_name_is_a_config_error(cfg, tok, fmt):
    """reward.answer_check="module:function": the verifier calls it with the row and the solution block's text."""
    from omegaconf import OmegaConf

    from actors.verifier import Verify
    from rlt_ray.errors import ConfigError
    from rlt_ray.method.answers import load_answer_check

    vcfg = OmegaConf.merge(cfg, {"reward": {"kind": "verifier",
                                            "answer_check": "tests.helpers.answer_checks:last_word_matches"}})
    row = Row(question="Name the colour.", solution="It is blue", id="q1")
    texts = [_completion(fmt, "think", "blue"), _completion(fmt, "think", "red")]
    ids = [np.asarray(tok(t, add_special_tokens=False)["input_ids"], dtype=np.int32) for t in texts]
    scored = Verify(vcfg).score([row], {"n": 2, "completion_ids": ids, "finish_reason": ["stop", "stop"]})
    assert list(scored["correct"]) == [1.0, 0.0] and not scored["errors"]
    for bad, why in (("no_colon", "not 'module:function'"), ("tests.helpers.answer_checks:missing", "cannot load"),
                     ("tests.helpers.answer_checks:NOT_CALLABLE", "not callable")):
        with pytest.raises(ConfigError, match=rf"reward.answer_check.*{why}"):
            load_answer_check(bad)
