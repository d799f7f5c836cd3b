"""Char spans → tokens; teacher/student reward sequences, including adversarial teacher outputs."""
import pytest

from rlt_ray.method.formats import Row
from rlt_ray.errors import AlignmentError
from rlt_ray.method.spans import build_reward_sequence, sft_example, span_token_range, tokens_before_char

ROW = Row(question="What is 12*3? <|end_of_explanation|> <|begin_of_solution|>", solution="12*3 = \\boxed{36}.",
          reasoning_trace="Twelve threes.")
CLOSE = "<|end_of_explanation|>"


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# The sampled-token mechanics, on the non-default spans (the bare solution, the sampled explanation tokens only);
# the reference's default spans are pinned in test_reward_fidelity.py.
BARE = {"solution_span": "bare", "explanation_span": "sampled"}


def make(fmt, tok, completion_text, eos=True, row=ROW):
    prompt_ids = encode(tok, fmt.teacher_prompt(row))
    comp = encode(tok, completion_text) + ([tok.eos_token_id] if eos else [])
    return prompt_ids, comp, build_reward_sequence(row, prompt_ids, comp, fmt, fmt, **BARE)


def test_straddling_tokens_belong_to_neither_side():
    offsets = [(0, 2), (2, 5), (5, 9), (9, 10)]
    assert span_token_range(offsets, (2, 9)) == (1, 3)
    assert span_token_range(offsets, (3, 9)) == (2, 3)  # token (2,5) straddles the start: dropped, not shifted
    assert span_token_range(offsets, (3, 4)) == (0, 0)
    assert span_token_range([(0, 0), (0, 3)], (0, 3)) == (1, 2)  # empty special-token offsets are skipped


def test_tokens_before_char(tok):
    ids = encode(tok, "hello world, again")
    for pos in range(len("hello world, again") + 1):
        j = tokens_before_char(tok, ids, pos)
        assert len(tok.decode(ids[:j])) <= pos
        assert j == len(ids) or len(tok.decode(ids[: j + 1])) > pos


def test_normal_completion(fmt, tok):
    prompt_ids, comp, seq = make(fmt, tok, "Twelve threes.\n\n" + CLOSE)
    assert seq.matched and seq.explanation == "Twelve threes.\n\n"
    t0, t1 = seq.teacher_explanation
    assert seq.teacher_ids == prompt_ids + comp and t0 == len(prompt_ids)
    assert tok.decode(seq.teacher_ids[t0:t1]) == "Twelve threes.\n\n"
    s0, s1 = seq.student_explanation
    assert seq.student_ids[s0:s1] == seq.teacher_ids[t0:t1]  # the same tokens on both sides
    a, b = seq.student_solution
    assert tok.decode(seq.student_ids[a:b]) == ROW.solution
    # the student text is the student chat, byte for byte
    assert tok.decode(seq.student_ids) == fmt.student_chat(ROW, seq.explanation).text


def test_solution_copied_into_the_explanation_is_not_the_solution_span(fmt, tok):
    _, _, seq = make(fmt, tok, "Clearly 12*3 = \\boxed{36}. Indeed 12*3 = \\boxed{36}.\n\n" + CLOSE)
    a, b = seq.student_solution
    assert a >= seq.student_explanation[1]
    assert tok.decode(seq.student_ids[a:b]) == ROW.solution


@pytest.mark.parametrize(
    "completion, matched, explanation",
    [
        ("no close tag, ran out of tokens", False, "no close tag, ran out of tokens"),
        (CLOSE, True, ""),  # empty explanation
        ("a " + CLOSE + " b " + CLOSE, True, "a "),  # repeated tags: the first closes
        ("<|begin_of_explanation|>nested " + CLOSE + "x" + CLOSE, True, "<|begin_of_explanation|>nested "),
        ("ünïcödé ✓ 数学 🚀\n\n" + CLOSE, True, "ünïcödé ✓ 数学 🚀\n\n"),
        ("x" * 100_000 + CLOSE, True, "x" * 100_000),
    ],
)
def test_adversarial_completions(fmt, tok, completion, matched, explanation):
    _, _, seq = make(fmt, tok, completion)
    assert seq.matched is matched
    # a token merged across the tag's edge (" <|") belongs to neither side: at most that token is dropped
    assert explanation.startswith(seq.explanation) and len(explanation) - len(seq.explanation) <= 2
    assert "<|end_of_explanation|>" not in seq.explanation
    a, b = seq.student_solution
    assert tok.decode(seq.student_ids[a:b]) == ROW.solution


def test_unmatched_completion_without_eos_keeps_every_token(fmt, tok):
    _, comp, seq = make(fmt, tok, "cut off mid", eos=False)
    assert not seq.matched
    assert seq.teacher_explanation[1] - seq.teacher_explanation[0] == len(comp)


def test_bpe_merge_at_the_close_tag_does_not_shift_the_span(fmt, tok):
    # A completion whose last explanation token merges into the tag's first characters (built by hand): the merged
    # token is not explanation, and both sides still agree.
    merged = encode(tok, "Twelve") + encode(tok, " threes.\n\n<|") + encode(tok, "end_of_explanation|>")
    prompt_ids = encode(tok, fmt.teacher_prompt(ROW))
    seq = build_reward_sequence(ROW, prompt_ids, merged, fmt, fmt, **BARE)
    assert seq.matched
    t0, t1 = seq.teacher_explanation
    assert CLOSE not in tok.decode(seq.teacher_ids[t0:t1])
    assert tok.decode(seq.teacher_ids[t0:t1]) in "Twelve threes.\n\n"
    seq.check()


def test_check_catches_misaligned_sequences(fmt, tok):
    _, _, seq = make(fmt, tok, "Twelve threes.\n\n" + CLOSE)
    seq.student_explanation = (seq.student_explanation[0] + 1, seq.student_explanation[1] + 1)
    with pytest.raises(AlignmentError):
        seq.check()


@pytest.mark.parametrize("trace", ["Okay.", "\n\n\nstarts with extra newlines", "ends with spaces   "])
def test_sft_mask_is_exactly_the_target(fmt, tok, trace):
    row = Row(question="Q?", solution="S.", reasoning_trace=trace)
    ids, mask = sft_example(fmt, row)
    target = fmt.teacher_sft(row).part("target")
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    # every target token is trained unless a BPE merge straddles the target's first character
    assert target.endswith(trained) and len(target) - len(trained) <= 3
    assert trained.endswith(CLOSE + tok.eos_token)
