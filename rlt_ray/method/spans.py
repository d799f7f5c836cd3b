"""Character spans → token positions, and the token sequences the reward scores.

Rules (fixing the reference's §8.9-8.11 traps):
- A token belongs to a span when its whole character range lies inside the span. A token that straddles a span
  boundary (a BPE merge across a tag edge) belongs to neither side, so a merge can drop an edge token but never
  shifts a span onto the wrong text.
- The teacher side is scored on the ids it SAMPLED (prompt ids + completion ids), never on a re-tokenisation.
- The student's explanation tokens are those very ids, spliced between the canonical tokenisations of the student
  text before and after the explanation span, so both sides score the same tokens by construction (and it is
  checked). The solution span comes from the offsets of the text after the explanation, so a copy of the solution
  inside the explanation can never be taken for it.

Which tokens are scored follows the reference by default (options in config `reward`):
- ``solution_span="padded"``: the solution with its padding on both sides (the reference's ``solutions_content``);
  ``"bare"``: the solution text only.
- ``explanation_span="with_prompt_pad"``: the explanation starts with the padding that ends the RL prompt (the
  reference's think span starts with it, so those prompt tokens enter r_KL); ``"sampled"``: sampled tokens only.
A token merged by BPE across a tag's edge belongs to neither side, as the reference's edge trimming drops it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from rlt_ray.method.formats import RLTFormat, Row
from rlt_ray.errors import AlignmentError


def span_token_range(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int]:
    """[i0, i1): the tokens whose character range lies inside ``span``. Empty tokens (specials) are skipped."""
    a, b = span
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s >= a and e <= b]
    if not inside:
        return (0, 0)
    i0, i1 = inside[0], inside[-1] + 1
    if i1 - i0 != len(inside):
        raise AlignmentError(f"tokens inside span {span} are not contiguous")
    return i0, i1


def span_token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    mask = [False] * len(offsets)
    for span in spans:
        i0, i1 = span_token_range(offsets, span)
        for i in range(i0, i1):
            mask[i] = True
    return mask


def encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def tokens_before_char(tokenizer: Any, ids: Sequence[int], pos: int) -> int:
    """The largest j such that decode(ids[:j]) is a prefix of the text of length <= pos (binary search, O(log n)
    decodes). A token straddling ``pos`` is not counted."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(tokenizer.decode(list(ids[:mid]), skip_special_tokens=False)) <= pos:
            lo = mid
        else:
            hi = mid - 1
    return lo


def check_same_vocabulary(teacher_tok: Any, student_tok: Any) -> None:
    """The KL term compares teacher and student on the same token ids, so their vocabularies must be identical
    (the reference silently mis-scores otherwise, §8.27)."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise AlignmentError(
            "teacher and student tokenizers have different vocabularies; the RLT reward compares both models on "
            "the same token ids, so the student must share the teacher's tokenizer (config model.student)"
        )


@dataclass
class RewardSequence:
    """Token ids and index ranges [start, end) for one teacher completion, ready for scoring."""

    teacher_ids: list[int]
    teacher_explanation: tuple[int, int]
    student_ids: list[int]
    student_explanation: tuple[int, int]
    student_solution: tuple[int, int]
    matched: bool  # the explanation's closing tag was generated
    explanation: str  # the explanation text the student saw (sampled tokens only)
    prompt_pad_tokens: int = 0  # how many scored explanation tokens are the RL prompt's trailing padding

    def check(self) -> None:
        t0, t1 = self.teacher_explanation
        s0, s1 = self.student_explanation
        if self.teacher_ids[t0:t1] != self.student_ids[s0:s1]:
            raise AlignmentError("teacher and student explanation tokens differ")
        a, b = self.student_solution
        if b <= a:
            raise AlignmentError("the solution span holds no whole token (an empty solution, or one merged into "
                                 "its tags)")


def completion_explanation_length(tokenizer: Any, fmt: RLTFormat, completion_ids: Sequence[int]) -> tuple[int, bool]:
    """How many leading completion tokens form the explanation, and whether the close tag was generated.

    Without a close tag the explanation is the whole completion minus trailing end-of-sequence / padding tokens
    (the reference appends the tag and scores everything, then applies the penalty)."""
    text = tokenizer.decode(list(completion_ids), skip_special_tokens=False)
    pos, matched = fmt.split_completion(text)
    if matched:
        return tokens_before_char(tokenizer, completion_ids, pos), True
    stop = {t for t in (tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    n = len(completion_ids)
    while n > 0 and completion_ids[n - 1] in stop:
        n -= 1
    return n, False


def trailing_pad_tokens(offsets: Sequence[tuple[int, int]], end: int, pad: str) -> int:
    """How many of the last tokens lie wholly inside the padding that ends at character ``end``."""
    k = 0
    for s, e in reversed(offsets):
        if e <= s:
            break
        if s < end - len(pad) or e > end:
            break
        k += 1
    return k


def prompt_pad_tokens(tokenizer: Any, prompt_ids: Sequence[int], pad: str) -> int:
    """How many of the prompt's last tokens spell (the end of) the padding that closes it; a token merged with
    the tag before the padding is not counted. Decodes only the last few tokens."""
    k = 0
    while k < min(len(pad), len(prompt_ids)):
        tail = tokenizer.decode(list(prompt_ids[len(prompt_ids) - k - 1:]), skip_special_tokens=False)
        if not (tail and pad.endswith(tail)):
            break
        k += 1
    return k


def common_suffix(a: Sequence[int], b: Sequence[int]) -> int:
    k = 0
    while k < min(len(a), len(b)) and a[len(a) - 1 - k] == b[len(b) - 1 - k]:
        k += 1
    return k


def build_reward_sequence(
    row: Row,
    prompt_ids: Sequence[int],
    completion_ids: Sequence[int],
    teacher_fmt: RLTFormat,
    student_fmt: RLTFormat,
    solution_span: str = "padded",
    explanation_span: str = "with_prompt_pad",
) -> RewardSequence:
    """The teacher and student token sequences for one sampled completion (see the module doc)."""
    tok = teacher_fmt.tokenizer
    n_expl, matched = completion_explanation_length(tok, teacher_fmt, completion_ids)
    expl_ids = list(completion_ids[:n_expl])
    explanation = tok.decode(expl_ids, skip_special_tokens=False)
    chat = student_fmt.student_chat(row, explanation)
    e0, e1 = chat.spans["explanation"]
    s0, s1 = chat.spans["solution"]
    if solution_span == "padded":  # the reference's solutions_content: padding + solution + padding
        s0, s1 = s0 - len(student_fmt.pad), s1 + len(student_fmt.pad)
    elif solution_span != "bare":
        raise ValueError(f"reward.solution_span: {solution_span!r} is not one of ['padded', 'bare']")
    head_ids, head_offsets = encode_with_offsets(student_fmt.tokenizer, chat.text[:e0])
    tail_ids, tail_offsets = encode_with_offsets(student_fmt.tokenizer, chat.text[e1:])
    a, b = span_token_range(tail_offsets, (s0 - e1, s1 - e1))
    k = 0
    if explanation_span == "with_prompt_pad":
        # The padding's tokens at the end of the teacher prompt and after the student's open tag; both sides
        # score the same ids, so a padding that tokenises differently on the two sides keeps only what they share.
        k_teacher = prompt_pad_tokens(tok, prompt_ids, teacher_fmt.pad)
        k_student = trailing_pad_tokens(head_offsets, e0, student_fmt.pad)
        k = common_suffix(list(prompt_ids[len(prompt_ids) - k_teacher:]), head_ids[len(head_ids) - k_student:])
    elif explanation_span != "sampled":
        raise ValueError(f"reward.explanation_span: {explanation_span!r} is not one of ['with_prompt_pad', 'sampled']")
    base = len(head_ids) + len(expl_ids)
    p = len(prompt_ids)
    seq = RewardSequence(
        teacher_ids=list(prompt_ids) + list(completion_ids),
        teacher_explanation=(p - k, p + n_expl),
        student_ids=head_ids + expl_ids + tail_ids,
        student_explanation=(len(head_ids) - k, base),
        student_solution=(base + a, base + b),
        matched=matched,
        explanation=explanation,
        prompt_pad_tokens=k,
    )
    seq.check()
    return seq


def sft_example(fmt: RLTFormat, row: Row, explanation: str | None = None) -> tuple[list[int], list[bool]]:
    """Teacher SFT ids and loss mask: explanation + close tag + end-of-turn token, by character offsets (not a
    token template, which drops whole examples on a BPE merge in the reference, §8.4)."""
    sft = fmt.teacher_sft(row, explanation)
    ids, offsets = encode_with_offsets(fmt.tokenizer, sft.text)
    return ids, span_token_mask(offsets, [sft.spans["target"]])
