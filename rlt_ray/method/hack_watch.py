"""Signs that RL found a way up the reward that is not teaching (docs/lab-notes/demo-runs.md, runs 4 and 24): the teacher stops
closing its explanation tag, its explanations collapse in length, or it writes the same explanation for different
questions. Pure functions over the per-step metrics (``closed_tag_fraction``, ``completion_tokens_mean``,
``truncated_fraction``, ``reward_mean``, ``shared_explanation_fraction``, ``r_ss_mean``), used by the RL job
(actors/rl_step.py) after every step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterable, Optional, Sequence


@dataclass(frozen=True)
class HackSign:
    kind: str  # "unclosed" | "length_collapse" | "copied" | "templated" (copies the student shares: not a hack)
    message: str  # one line: what was seen, the likely cause, the settings that address it


def _mean(rows: Sequence[dict], key: str) -> float:
    return sum(float(r[key]) for r in rows) / len(rows)


def shared_explanation_fraction(explanations: Iterable[tuple[Hashable, str]]) -> float:
    """The fraction of a step's explanations, given as (question id, text) pairs, whose text (whitespace
    normalised) was also written for another question of the step. An explanation depends on its question, so
    this is 0 in a healthy run (run 24 of docs/lab-notes/demo-runs.md: 0.000 at every step of its four healthy seeds); copies
    of one text across questions mean the teacher writes what the student finds likely whatever the question
    (run 24, seed 45: up to 0.42)."""
    pairs = [(q, " ".join(text.split())) for q, text in explanations]
    questions: dict[str, set] = {}
    for q, text in pairs:
        questions.setdefault(text, set()).add(q)
    return sum(len(questions[text]) > 1 for _, text in pairs) / len(pairs) if pairs else 0.0


def hack_sign(history: Sequence[dict], min_closed_fraction: float, patience: int,
              min_length_ratio: float, explanation_span: str = "with_prompt_pad",
              max_shared_fraction: float = 1.0, *, kl_estimator: str = "k1",
              kl_weight: float = 3.0, grpo_beta: float = 0.04,
              validation: Sequence[dict] = (), step: int = 0) -> Optional[HackSign]:
    """The first sign in the last ``patience`` steps of ``history`` (this run's step metrics, oldest first), or
    None. ``unclosed``: every one of those steps closed its tag less often than ``min_closed_fraction``.
    ``length_collapse``: their mean explanation length is under ``min_length_ratio`` x that of the run's first
    steps (up to ``patience`` of them, before the recent ones). ``copied``: in every one of those steps more than
    ``max_shared_fraction`` of the explanations were also written for another question, of the step or of the RL
    job's window of recent steps (``window_shared_fraction``, when the step metrics have it). The message names the
    likely mechanism, from which way the lengths went, and the run's KL term (``kl_estimator``, ``kl_weight``:
    reward.kl_estimator and the first reward.kl_penalty_coeff) and ``grpo_beta`` (the loss's KL to the reference
    policy, which a copying teacher drifts from).

    A reward hack is a rise in the training reward the student does not share. So copies are ``copied`` only while
    r_SS falls over the same steps (the training r_SS, or the validation r_SS of ``validation``: the RL job's
    {"step", "val/r_ss_mean"} records; ``step``: the RL step of the last row of ``history``); copies while r_SS holds or rises are a template the student finds useful,
    ``templated``, which the RL job reports and never stops on."""
    if patience < 1 or len(history) < patience:
        return None
    # the baseline: the run's first steps, at most ``patience`` of them and none of the recent ones if it can
    recent, first = history[-patience:], history[:max(1, min(patience, len(history) - patience))]
    closed_now, closed_then = _mean(recent, "closed_tag_fraction"), _mean(first, "closed_tag_fraction")
    length_now, length_then = _mean(recent, "completion_tokens_mean"), _mean(first, "completion_tokens_mean")
    truncated = _mean(recent, "truncated_fraction")
    reward = f"reward {_mean(first, 'reward_mean'):+.3f} -> {_mean(recent, 'reward_mean'):+.3f}"
    seen = (f"closed-tag fraction {closed_then:.2f} -> {closed_now:.2f}, explanation tokens {length_then:.1f} -> "
            f"{length_now:.1f}, {reward}")
    collapsed = len(history) > patience and length_now < min_length_ratio * length_then
    unclosed = all(float(r["closed_tag_fraction"]) < min_closed_fraction for r in recent)
    # a step's own copies, or (once the RL job's window of steps is full) the copies across the pooled steps
    steps_copied = all(float(r.get("shared_explanation_fraction", 0.0)) > max_shared_fraction for r in recent)
    copied = all(max(float(r.get("shared_explanation_fraction", 0.0)),
                     float(r.get("window_shared_fraction", 0.0))) > max_shared_fraction for r in recent)
    if not (unclosed or collapsed or copied):
        return None
    kind = "unclosed" if unclosed else "length_collapse" if collapsed else "copied"
    what = (f"the closed-tag fraction stayed under run.min_closed_fraction={min_closed_fraction} for {patience} "
            f"steps" if unclosed else
            f"explanations shrank under run.min_length_ratio={min_length_ratio} of their first steps' length"
            if collapsed else
            (f"{_mean(recent, 'shared_explanation_fraction'):.0%} of the explanations were also written for another "
             f"question" if steps_copied
             else f"{_mean(recent, 'window_shared_fraction'):.0%} of the explanations of the last run.hack_window "
                  f"steps were also written for another question of those steps (a single step's few questions do not "
                  f"show it; a distilled data set would)"))
    recent_start = step - len(recent) + 1
    if kind == "copied" and not r_ss_falls(history, first, recent, validation, recent_start):
        return HackSign("templated", f"a template repeated across questions while r_SS holds or rises: {what} "
                                     f"({r_ss_trend(first, recent, validation, recent_start)}); the student "
                                     f"shares it, so it is reported, not stopped on")
    if kind == "copied":  # tags closed, length kept: the text no longer depends on the question
        r_ss = (f", r_SS {_mean(first, 'r_ss_mean'):+.2f} -> {_mean(recent, 'r_ss_mean'):+.2f}"
                if all("r_ss_mean" in r for r in history) else "")
        seen = f"over run.max_shared_fraction={max_shared_fraction} for {patience} steps; {seen}{r_ss}"
        cause = _copied_cause(grpo_beta)
    else:
        cause = _unclosed_cause(closed_then, min_closed_fraction, truncated, length_now, length_then,
                                explanation_span, kl_estimator, kl_weight)
    return HackSign(kind, f"reward hacking suspected: {what} ({seen}); likely cause: {cause}")


def _copied_cause(grpo_beta: float) -> str:
    """Why a teacher copies one text across questions, and the settings that addressed it in the demo."""
    anchor = (f"a larger grpo.beta than this run's {grpo_beta:g} (the loss's KL to the warm-up teacher, whose "
              "explanations depend on the question: in the demo 0.2 against the reference's 0.04 removed it at "
              "all five seeds where it appeared under k3, and the RL teacher's gain with it; 0.1 delayed it; "
              "docs/monitoring.md, the reward-hacking watch)" if grpo_beta < 0.2 else
              f"grpo.beta above this run's {grpo_beta:g} (the loss's KL to the warm-up teacher; 0.2 removed it "
              "at five seeds in the demo, and the RL teacher's gain with it; docs/monitoring.md)")
    return ("the teacher writes text the student finds likely whatever the question, which the KL term pays "
            f"for, instead of explaining this question's solution. Try {anchor}; reward.kl_estimator=k3 or a "
            "smaller KL weight, reward.kl_penalty_coeff=[1.0,0.01], prevented it at some seeds, not all "
            "in the demo")


def _unclosed_cause(closed_then: float, min_closed_fraction: float, truncated: float, length_now: float,
                    length_then: float, explanation_span: str, kl_estimator: str, kl_weight: float) -> str:
    """Why explanations stopped closing their tag or collapsed, from which way their lengths went."""
    if closed_then < min_closed_fraction:  # never closed: not RL's doing
        cause = ("the teacher did not close its tag from the first steps: its warm-up did not teach the format "
                 "(more sft.epochs or data), or rollout.max_new_tokens cuts explanations off "
                 f"({truncated:.0%} of the last steps' samples hit it)")
    elif truncated > 0.5 or length_now > length_then:  # longer, cut off: the mean log-ratio falls with length
        cause = ("explanations run to rollout.max_new_tokens and are cut off unclosed: the KL term's mean over a "
                 "longer explanation pays more than the unclosed-tag penalty costs. Make reward.not_matched_penalty "
                 "more negative, or lower reward.kl_penalty_coeff")
    else:  # short and unclosed
        span = (" the prompt's padding is in the KL span (reward.explanation_span=with_prompt_pad) and weighs more "
                "in a shorter explanation's mean; try reward.explanation_span=sampled," if explanation_span ==
                "with_prompt_pad" else "")
        if kl_estimator == "k1":  # the k1 term's bonus on tokens the teacher finds unlikely
            cause = (f"with reward.kl_estimator=k1, -{kl_weight:g} x the teacher's own log-prob is a bonus for "
                     f"tokens it finds unlikely;{span} make reward.not_matched_penalty more negative, or use "
                     "reward.kl_estimator=k3")
        else:  # k3 is never a bonus: what a short unclosed explanation saves is KL
            cause = (f"a short explanation saves more on the KL term ({kl_weight:g} x {kl_estimator}) than the "
                     f"unclosed-tag penalty costs;{span} make reward.not_matched_penalty more negative, or lower "
                     "reward.kl_penalty_coeff")
    return cause


def _validation_window(recent_start: int, validation: Sequence[dict]) -> list[dict]:
    """The validations that span the recent steps (from the RL step ``recent_start`` on): the last one at or
    before it, and every later one."""
    points = [v for v in validation if "val/r_ss_mean" in v]
    before = [v for v in points if v["step"] <= recent_start]
    window = ([before[-1]] if before else points[:1]) + [v for v in points if v["step"] > recent_start]
    return window if len(window) >= 2 else []


def r_ss_falls(history: Sequence[dict], first: Sequence[dict], recent: Sequence[dict],
               validation: Sequence[dict] = (), recent_start: int = 0) -> bool:
    """r_SS fell: the recent steps' mean training r_SS under the first steps', or the last validation's under the
    one at the window's start. Without r_SS in the metrics (an old log), copies count as falling."""
    if not all("r_ss_mean" in r for r in history):
        return True
    window = _validation_window(recent_start, validation)
    val_fell = bool(window) and window[-1]["val/r_ss_mean"] < window[0]["val/r_ss_mean"]
    return _mean(recent, "r_ss_mean") < _mean(first, "r_ss_mean") or val_fell


def r_ss_trend(first: Sequence[dict], recent: Sequence[dict], validation: Sequence[dict] = (),
               recent_start: int = 0) -> str:
    text = f"training r_SS {_mean(first, 'r_ss_mean'):+.3f} -> {_mean(recent, 'r_ss_mean'):+.3f}"
    window = _validation_window(recent_start, validation)
    if window:
        text += f", validation r_SS {window[0]['val/r_ss_mean']:+.3f} -> {window[-1]['val/r_ss_mean']:+.3f}"
    return text
