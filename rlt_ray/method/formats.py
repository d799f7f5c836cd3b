"""The RLT texts and the character spans inside them.

Every builder returns the text AND the character spans of the parts later code scores or trains on, so nothing
downstream searches for token sub-lists (the reference's §8.9-8.10 traps). Spans are half-open [start, end).

Vocabulary used throughout:
- ``explanation``: the text the teacher writes between ``<open explanation tag><padding>`` and the closing tag.
  For a ground-truth trace T it is ``T + padding`` (the teacher learns to pad before closing, as Bespoke does).
- teacher ``prompt``: system, question, then an open assistant turn holding the solution block and ending with
  ``<open explanation tag><padding>``. Its continuation is ``explanation + close tag + end-of-turn``.
- student chat: system (the row's own, else config), question, assistant = ``<open think><padding>`` +
  explanation + ``<close think><padding><open solution><padding>`` + solution + ``<padding><close solution>``.
  For a ground-truth trace this is byte-identical to a Bespoke-Stratos assistant turn.

Fixes against the reference: both tag styles are wired everywhere (§8.3); rows without padding work (§8.2); the
divider is never searched for in text that the question or solution could contain.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional
from rlt_ray.errors import FormatError


@dataclass(frozen=True)
class Row:
    """One question/solution pair. Text is stored bare: no tags, no padding."""

    question: str
    solution: str
    reasoning_trace: Optional[str] = None
    system: Optional[str] = None  # the row's own student system prompt (Bespoke-Stratos rows carry one)
    answer: Optional[str] = None  # the bare final answer, when the source has one (evaluation)
    id: Optional[str] = None
    # The trace as the teacher's explanation, exactly as the data holds it: for a Bespoke row, the thought block's
    # content after its leading padding (so a thought that is just the padding stays one padding, never two).
    # None: reasoning_trace + padding.
    trace_explanation: Optional[str] = None


@dataclass(frozen=True)
class Formatted:
    text: str
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    def part(self, name: str) -> str:
        a, b = self.spans[name]
        return self.text[a:b]


def tag_pair(style: str, name: str) -> tuple[str, str]:
    if style == "bespoke":
        return f"<|begin_of_{name}|>", f"<|end_of_{name}|>"
    if style == "r1":
        return f"<{name}>", f"</{name}>"
    raise FormatError(f"unknown tag style {style!r} (bespoke | r1)")


class RLTFormat:
    """Builds the teacher and student texts for one tokenizer's chat template.

    ``cfg`` is the ``format`` section of the config (or any object with the same attributes).
    """

    def __init__(self, cfg: Any, tokenizer: Any):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.pad = cfg.padding
        self.think = tag_pair(cfg.tag_style, cfg.think_tag)
        self.solution = tag_pair(cfg.tag_style, cfg.solution_tag)
        self.explanation = tag_pair(cfg.tag_style, cfg.explanation_tag)
        self.eos_text = tokenizer.eos_token or ""
        self.specials = special_token_strings(tokenizer)

    def user_row(self, row: Row) -> Row:
        """The row with every special-token string in its data text broken up (``escape_special_tokens``): a
        question, solution or trace never becomes a control token of the chat template. A no-op for clean rows."""
        fields = ("question", "solution", "reasoning_trace", "trace_explanation", "system")
        changed = {f: escape_special_tokens(getattr(row, f), self.specials) for f in fields
                   if getattr(row, f) is not None}
        changed = {f: v for f, v in changed.items() if v != getattr(row, f)}
        return replace(row, **changed) if changed else row

    # ------------------------------------------------------------------ prompts
    def _fill(self, prompt: str) -> str:
        subs = {
            "{think_open}": self.think[0], "{think_close}": self.think[1],
            "{solution_open}": self.solution[0], "{solution_close}": self.solution[1],
            "{explanation_open}": self.explanation[0], "{explanation_close}": self.explanation[1],
        }
        for key, value in subs.items():
            prompt = prompt.replace(key, value)
        return prompt

    @property
    def teacher_system_prompt(self) -> str:
        return self._fill(self.cfg.teacher_system_prompt)

    def student_system_prompt(self, row: Row) -> str:
        return row.system if row.system else self._fill(self.cfg.student_system_prompt)

    def explanation_from_trace(self, trace: str) -> str:
        return trace + self.pad

    def explanation_from_block(self, content: str) -> str:
        """A thought block's content (between the tags) as an explanation: the leading padding is the one the
        teacher prompt already ends with."""
        return content[len(self.pad):] if self.pad and content.startswith(self.pad) else content

    def reference_explanation(self, row: Row) -> Optional[str]:
        """The row's own trace as an explanation (what the teacher warm-up and the 'reference traces' student
        learn), or None when the row has no trace."""
        if row.trace_explanation is not None:
            return row.trace_explanation
        return None if row.reasoning_trace is None else self.explanation_from_trace(row.reasoning_trace)

    # ------------------------------------------------------------------ rendering
    def _render(self, messages: list[dict[str, str]]) -> tuple[str, int]:
        """Render a complete chat; return (text, start of the last message's content in it)."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False)
        content = messages[-1]["content"]
        start = text.rfind(content)
        if start < 0:
            raise FormatError(
                "the tokenizer's chat template changes the assistant message (it strips or rewrites it), so spans "
                "cannot be placed; use a template that keeps message content verbatim"
            )
        return text, start

    def _solution_block(self, solution: str) -> tuple[str, tuple[int, int]]:
        block = self.solution[0] + self.pad
        start = len(block)
        block += solution
        end = len(block)
        return block + self.pad + self.solution[1], (start, end)

    # ------------------------------------------------------------------ teacher
    def teacher_sft(self, row: Row, explanation: Optional[str] = None) -> Formatted:
        """The teacher's full text (SFT target). Spans:
        ``prompt`` [0, explanation start): what RL generation continues from;
        ``explanation``: the explanation text; ``target``: explanation + close tag + end-of-turn token (SFT loss);
        ``solution``: the solution inside the teacher's own solution block."""
        row = self.user_row(row)
        if explanation is None:
            explanation = self.reference_explanation(row)
            if explanation is None:
                raise FormatError("teacher_sft needs an explanation or a row with a reasoning_trace")
        sol_block, (s0, s1) = self._solution_block(row.solution)
        head = sol_block + self.pad + self.explanation[0] + self.pad
        assistant = head + explanation + self.explanation[1]
        messages = [
            {"role": "system", "content": self.teacher_system_prompt},
            {"role": "user", "content": row.question},
            {"role": "assistant", "content": assistant},
        ]
        text, c0 = self._render(messages)
        e0 = c0 + len(head)
        e1 = e0 + len(explanation)
        end = c0 + len(assistant)
        if self.eos_text and text.startswith(self.eos_text, end):
            end += len(self.eos_text)
        return Formatted(
            text,
            {"prompt": (0, e0), "explanation": (e0, e1), "target": (e0, end), "solution": (c0 + s0, c0 + s1)},
        )

    def teacher_prompt(self, row: Row) -> str:
        """The RL prompt: an open assistant turn ending with ``<open explanation tag><padding>``."""
        sft = self.teacher_sft(row, explanation="")
        return sft.text[: sft.spans["prompt"][1]]

    # ------------------------------------------------------------------ student
    def student_assistant(self, row: Row, explanation: str) -> Formatted:
        head = self.think[0] + self.pad
        mid = self.think[1] + self.pad
        sol_block, (s0, s1) = self._solution_block(row.solution)
        text = head + explanation + mid + sol_block
        e0 = len(head)
        e1 = e0 + len(explanation)
        off = e1 + len(mid)
        return Formatted(text, {"explanation": (e0, e1), "solution": (off + s0, off + s1)})

    def student_chat(self, row: Row, explanation: str) -> Formatted:
        """The student's chat the reward scores. Spans ``explanation`` and ``solution`` (the solution content after
        the explanation, never a copy the explanation may contain)."""
        row = self.user_row(row)
        assistant = self.student_assistant(row, explanation)
        messages = [
            {"role": "system", "content": self.student_system_prompt(row)},
            {"role": "user", "content": row.question},
            {"role": "assistant", "content": assistant.text},
        ]
        text, c0 = self._render(messages)
        spans = {k: (c0 + a, c0 + b) for k, (a, b) in assistant.spans.items()}
        spans["assistant"] = (c0, c0 + len(assistant.text))
        return Formatted(text, spans)

    def student_prompt(self, row: Row) -> str:
        """What a student is asked at evaluation: system + question, then an open assistant turn."""
        chat = self.student_chat(row, "")
        return chat.text[: chat.spans["assistant"][0]]

    # ------------------------------------------------------------------ completions
    def split_completion(self, completion: str) -> tuple[int, bool]:
        """Where the explanation ends inside a generated completion, and whether its close tag was there.

        The explanation is everything before the FIRST close tag (nested or repeated tags after it are ignored).
        Without a close tag the whole completion is the explanation and the caller applies the penalty."""
        pos = completion.find(self.explanation[1])
        if pos < 0:
            return len(completion), False
        return pos, True

    # ------------------------------------------------------------------ distillation
    def distill_record(self, row: Row, explanation: str, **extra: Any) -> dict[str, Any]:
        """A Bespoke-Stratos style row (system + conversations) built from a teacher explanation."""
        assistant = self.student_assistant(row, explanation)
        record = {
            "system": self.student_system_prompt(row),
            "conversations": [
                {"from": "user", "value": row.question},
                {"from": "assistant", "value": assistant.text},
            ],
            "question": row.question,
            "solution": row.solution,
            "explanation": explanation,
        }
        record.update(extra)
        return record

    def parse_assistant(self, value: str) -> tuple[Optional[str], str]:
        """Split a Bespoke/R1-style assistant turn into (reasoning trace, solution), both bare."""
        trace, solution, _ = self.parse_assistant_blocks(value)
        return trace, solution

    def parse_assistant_blocks(self, value: str) -> tuple[Optional[str], str, Optional[str]]:
        """(bare trace, bare solution, the thought block as an explanation: explanation_from_block)."""
        block = _between(value, *self.think)
        solution = _between(value, *self.solution)
        if solution is None:
            raise FormatError(
                f"assistant turn has no {self.solution[0]}...{self.solution[1]} block (tag_style={self.cfg.tag_style})"
            )
        if block is None:
            return None, self.strip_pad(solution), None
        return self.strip_pad(block), self.strip_pad(solution), self.explanation_from_block(block)

    def strip_pad(self, text: str) -> str:
        """Drop one padding at each end where present (the leading one first: a text that is just one padding
        becomes empty, not a padding)."""
        if self.pad and text.startswith(self.pad):
            text = text[len(self.pad):]
        if self.pad and text.endswith(self.pad):
            text = text[: -len(self.pad)]
        return text

    def is_padded(self, text: str) -> bool:
        """Wrapped the way the reference requires of custom rows: padding + text + padding."""
        return bool(self.pad) and len(text) >= 2 * len(self.pad) and text.startswith(self.pad) \
            and text.endswith(self.pad)


ZERO_WIDTH_SPACE = "\u200b"


def special_token_strings(tokenizer: Any) -> tuple[str, ...]:
    """The text of every special token of ``tokenizer`` (chat markers, end of text, padding): the strings that
    tokenise to a control token wherever they appear, longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok.content))
    return tuple(sorted((t for t in found if len(t) > 1), key=len, reverse=True))


def escape_special_tokens(text: str, specials: tuple[str, ...]) -> str:
    """``text`` with a zero-width space after the first character of every special-token string in it, so that
    user text (a request's fields, a data set's question or solution) is tokenised as text and never as a
    control token: ``<|im_end|>`` in a question can not close the user turn. Text without them is unchanged."""
    for tok in specials:
        if tok in text:
            text = text.replace(tok, tok[0] + ZERO_WIDTH_SPACE + tok[1:])
    return text


def prompt_ids(tokenizer: Any, texts: list[str], max_tokens: int) -> list[Optional[list[int]]]:
    """The token ids of each rendered prompt, or None for one longer than ``max_tokens``
    (rollout.max_prompt_tokens): the caller drops or reports those rows (train, distill, evaluate)."""
    out: list[Optional[list[int]]] = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(ids if len(ids) <= max_tokens else None)
    return out


def _between(text: str, open_tag: str, close_tag: str) -> Optional[str]:
    """The text between the first open tag and the first close tag after it (the reference's non-greedy match)."""
    a = text.find(open_tag)
    if a < 0:
        return None
    a += len(open_tag)
    b = text.find(close_tag, a)
    return None if b < 0 else text[a:b]
