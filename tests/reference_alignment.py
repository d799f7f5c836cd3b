"""The reference's alignment rules, written from the spec as a test oracle: which tokens
the reference scores for one completion, found by re-tokenising texts and searching token sub-lists.

It is deliberately the reference's algorithm, traps included (first occurrence for the think span, sub-list search,
re-tokenisation): the fidelity tests compare the project's character-offset spans against it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


def _find(haystack: list[int], needle: list[int], last: bool = False) -> int:
    n = len(needle)
    starts = range(len(haystack) - n, -1, -1) if last else range(len(haystack) - n + 1)
    for i in starts:
        if haystack[i:i + n] == needle:
            return i
    return -1


def _trimmed(ids: list[int], target: list[int], last: bool = False) -> tuple[list[int], int]:
    """The first of ids, ids[1:], ids[:-1], ids[1:-1] found contiguously in target, and where (METHOD §3.3.3)."""
    for cand in (ids, ids[1:], ids[:-1], ids[1:-1]):
        if cand:
            at = _find(target, cand, last)
            if at >= 0:
                return cand, at
    raise LookupError("span not found (the reference falls into its buggy fallback, §8.10)")


@dataclass
class ReferenceSpans:
    matched: bool
    teacher_ids: list[int]  # the re-tokenised teacher text X_T
    teacher_span: tuple[int, int]
    student_ids: list[int]  # the re-tokenised student chat X_S
    think_span: tuple[int, int]
    solution_span: tuple[int, int]

    def teacher_tokens(self) -> list[int]:
        return self.teacher_ids[slice(*self.teacher_span)]

    def think_tokens(self) -> list[int]:
        return self.student_ids[slice(*self.think_span)]

    def solution_tokens(self) -> list[int]:
        return self.student_ids[slice(*self.solution_span)]


def reference_spans(fmt, row, completion_text: str) -> ReferenceSpans:
    """``completion_text``: the decoded completion, special tokens stripped (what the reference's reward gets)."""
    tok = fmt.tokenizer
    enc = lambda text: list(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    open_e, close_e = fmt.explanation
    prompt = fmt.teacher_prompt(row)
    c = open_e + fmt.pad + completion_text  # 1. repair and match
    pattern = re.compile(re.escape(open_e) + "(.*?)" + re.escape(close_e), re.DOTALL)
    m = pattern.search(c)
    matched = m is not None
    if not matched:
        c += close_e
        m = pattern.search(c)
    think = m.group(1)  # 2. starts with the padding
    C = enc(c)  # 3. alignment, offsets from the end
    T, a = _trimmed(enc(think), C)
    start, end = a - len(C), a + len(T) - len(C)
    assert prompt.endswith(open_e + fmt.pad)
    teacher_ids = enc(prompt[: -len(open_e + fmt.pad)] + c)  # 4. teacher text, re-tokenised
    teacher_span = (len(teacher_ids) + start, len(teacher_ids) + end)
    # 5. student text: the §2.5 chat with t (which already holds the leading padding)
    student_ids = enc(fmt.student_chat(row, think[len(fmt.pad):]).text)
    at = _find(student_ids, T)
    if at < 0:
        raise LookupError("think tokens not in the student text (the reference raises NotImplementedError)")
    solutions_content = fmt.pad + row.solution + fmt.pad
    S, s_at = _trimmed(enc(solutions_content), student_ids, last=True)
    return ReferenceSpans(matched, teacher_ids, teacher_span, student_ids, (at, at + len(T)),
                          (s_at, s_at + len(S)))
