"""Reward fidelity: the tokens the project scores equal those the reference's alignment rules give (the reference implementation (SakanaAI/RLT),
tests/reference_alignment.py), for every row type, with the default (reference) span options; the deliberate
differences (docs/design.md, "Where the reward differs from the reference") are pinned as such."""
from dataclasses import replace

import pytest

from reference_alignment import reference_spans
from rlt_ray.data.sources import rows_from_records
from rlt_ray.method.formats import RLTFormat, Row
from rlt_ray.method.spans import build_reward_sequence

BESPOKE = {
    "system": "You are a student. Think, then solve.",
    "conversations": [
        {"from": "user", "value": "What is 1+1?"},
        {"from": "assistant", "value": "<|begin_of_thought|>\n\nOkay, 1+1=2.\n\n<|end_of_thought|>\n\n"
                                       "<|begin_of_solution|>\n\nThe answer is \\boxed{2}.\n\n<|end_of_solution|>"},
    ],
}


def bespoke(thought: str, solution: str = "The answer is \\boxed{2}.") -> dict:
    value = (f"<|begin_of_thought|>{thought}<|end_of_thought|>\n\n"
             f"<|begin_of_solution|>\n\n{solution}\n\n<|end_of_solution|>")
    return {**BESPOKE, "conversations": [BESPOKE["conversations"][0], {"from": "assistant", "value": value}]}


def encode(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def project_and_reference(fmt, row, completion_text, **spans):
    tok = fmt.tokenizer
    prompt_ids = encode(tok, fmt.teacher_prompt(row))
    completion = encode(tok, completion_text) + [tok.eos_token_id]
    seq = build_reward_sequence(row, prompt_ids, completion, fmt, fmt, **spans)
    return seq, reference_spans(fmt, row, completion_text)


ROWS = {
    "plain": Row(question="What is 12*3?", solution="12*3 = \\boxed{36}.", reasoning_trace="Twelve threes."),
    "unicode": Row(question="Wie viel ist 数学 + π? ✓", solution="Die Lösung ist \\boxed{π}. 🚀",
                   reasoning_trace="ünïcödé"),
    "tag_like_solution": Row(question="Q <|end_of_explanation|> <|begin_of_solution|>?",
                             solution="<|begin_of_thought|> is not a tag here; \\boxed{1}.",
                             reasoning_trace="x"),
    "long": Row(question="Sum these: " + " + ".join(str(i) for i in range(300)) + "?",
                solution="The sum is \\boxed{44850}.", reasoning_trace="add " * 50),
}
COMPLETIONS = {
    "normal": "Step one.\n\nStep two, with 12*3 = 36.\n\n<|end_of_explanation|>",
    "solution_copied": "Clearly 12*3 = \\boxed{36}. So \\boxed{36}.\n\n<|end_of_explanation|>",
    "unclosed": "ran out of tokens mid sentence",
    "unicode": "ünïcödé ✓ 数学 🚀\n\n<|end_of_explanation|>",
    "long": "a step. " * 2000 + "\n\n<|end_of_explanation|>",
}


@pytest.mark.parametrize("row_name", list(ROWS))
@pytest.mark.parametrize("completion_name", list(COMPLETIONS))
def test_scored_tokens_equal_the_references(fmt, row_name, completion_name):
    seq, ref = project_and_reference(fmt, ROWS[row_name], COMPLETIONS[completion_name])
    assert seq.matched == ref.matched
    t0, t1 = seq.teacher_explanation
    assert seq.teacher_ids[t0:t1] == ref.teacher_tokens()
    # the same place in the same text (the project's ids end with the sampled end-of-turn, the reference's
    # re-tokenised text has special tokens stripped)
    assert (t0, t1) == ref.teacher_span and seq.teacher_ids[:t1] == ref.teacher_ids[:t1]
    s0, s1 = seq.student_explanation
    assert seq.student_ids[s0:s1] == ref.think_tokens()
    assert seq.student_ids == ref.student_ids and (s0, s1) == ref.think_span
    assert seq.student_solution == ref.solution_span


def test_the_scored_text_of_a_bespoke_row(fmt):
    """The exact text of each scored span, for a row read from Bespoke-Stratos data."""
    row = rows_from_records([BESPOKE], ["system", "conversations"])[0]
    seq, ref = project_and_reference(fmt, row, "Okay, 1+1=2.\n\n<|end_of_explanation|>")
    tok = fmt.tokenizer
    t0, t1 = seq.teacher_explanation
    assert tok.decode(seq.teacher_ids[t0:t1]) == "\n\nOkay, 1+1=2.\n\n"  # starts with the prompt's padding
    a, b = seq.student_solution
    assert tok.decode(seq.student_ids[a:b]) == "\n\nThe answer is \\boxed{2}.\n\n"  # solutions_content
    assert seq.student_ids[a:b] == ref.solution_tokens() and seq.teacher_ids[t0:t1] == ref.teacher_tokens()
    # the student chat is the row's own Bespoke turn, byte for byte
    assert tok.decode(seq.student_ids).endswith(BESPOKE["conversations"][1]["value"] + "<|im_end|>\n")


def test_the_bare_and_sampled_options_score_exactly_the_text(fmt):
    row = ROWS["plain"]
    seq, _ = project_and_reference(fmt, row, "Twelve threes.\n\n<|end_of_explanation|>",
                                   solution_span="bare", explanation_span="sampled")
    tok = fmt.tokenizer
    t0, t1 = seq.teacher_explanation
    assert tok.decode(seq.teacher_ids[t0:t1]) == "Twelve threes.\n\n" and seq.prompt_pad_tokens == 0
    a, b = seq.student_solution
    assert row.solution.startswith(tok.decode(seq.student_ids[a:b]))  # a last token merged with the pad drops


@pytest.mark.parametrize("thought, explanation, reference_finds_it", [
    ("\n\n", "", True),  # an empty thought: just the padding, which the prompt already ends with
    ("\n\n\n\n", "\n\n", True),  # padding + empty trace + padding
    ("\n\n   \n\n", "   \n\n", False),  # a blank thought
])
def test_empty_and_blank_thoughts_keep_their_text(fmt, thought, explanation, reference_finds_it):
    row = rows_from_records([bespoke(thought)], ["system", "conversations"])[0]
    assert fmt.reference_explanation(row) == explanation
    sft = fmt.teacher_sft(row)
    assert sft.part("explanation") == explanation
    open_e, close_e = fmt.explanation
    assert sft.text.endswith(open_e + thought + close_e + "<|im_end|>\n")  # the reference's teacher text
    chat = fmt.student_chat(row, explanation)
    assert chat.part("assistant") == bespoke(thought)["conversations"][1]["value"]
    # and the reward scores the reference's tokens for the SFT continuation itself
    tok = fmt.tokenizer
    prompt_ids = encode(tok, fmt.teacher_prompt(row))
    seq = build_reward_sequence(row, prompt_ids, encode(tok, explanation + close_e), fmt, fmt)
    t0, t1 = seq.teacher_explanation
    assert tok.decode(seq.teacher_ids[t0:t1]) == fmt.pad + explanation
    if not reference_finds_it:
        # "\n\n   \n\n" tokenises differently alone than after the tag: the reference's sub-list search fails
        # and it falls into its fallback, which scores the wrong tokens (§8.10); the project scores the text
        with pytest.raises(LookupError):
            reference_spans(fmt, row, explanation + close_e)
    else:
        ref = reference_spans(fmt, row, explanation + close_e)
        assert seq.teacher_ids[t0:t1] == ref.teacher_tokens() and seq.student_solution == ref.solution_span


def test_empty_explanation_scores_the_padding_like_the_reference(fmt):
    seq, ref = project_and_reference(fmt, ROWS["plain"], "<|end_of_explanation|>")
    s0, s1 = seq.student_explanation
    assert seq.prompt_pad_tokens > 0 and seq.student_ids[s0:s1] == ref.think_tokens()  # the padding's tokens
    # Deliberate difference: the reference finds these few tokens at their FIRST occurrence in the student chat,
    # which can be in the system prompt (§8.9); the project scores them where they are, after the open tag.
    assert ref.think_span[0] <= s0
    seq, _ = project_and_reference(fmt, ROWS["plain"], "<|end_of_explanation|>", explanation_span="sampled")
    assert seq.student_explanation[0] == seq.student_explanation[1]  # nothing: the reward uses the fill values


def test_r1_tags(cfg, tok):
    r1 = RLTFormat(replace(cfg.format, tag_style="r1"), tok) if not hasattr(cfg.format, "_metadata") else None
    if r1 is None:
        from omegaconf import OmegaConf
        fc = OmegaConf.to_object(cfg.format)
        r1 = RLTFormat(replace(fc, tag_style="r1"), tok)
    seq, ref = project_and_reference(r1, ROWS["plain"], "Twelve threes.\n\n</explanation>")
    t0, t1 = seq.teacher_explanation
    assert seq.teacher_ids[t0:t1] == ref.teacher_tokens() and seq.student_solution == ref.solution_span
    assert (seq.student_explanation, seq.student_ids) == (ref.think_span, ref.student_ids)


def test_padded_custom_rows_are_unwrapped_and_counted():
    from rlt_ray.data.sources import LoadReport

    report = LoadReport()
    rows = rows_from_records([
        {"prompt": "q1", "solution": "\n\nS1\n\n", "reasoning_trace": "\n\nT1\n\n"},
        {"prompt": "q2", "solution": "S2", "reasoning_trace": "T2"},
        {"prompt": "q3", "solution": "S3"},
    ], ["prompt", "solution", "reasoning_trace"], report=report)
    assert [(r.solution, r.reasoning_trace) for r in rows] == [("S1", "T1"), ("S2", "T2"), ("S3", None)]
    assert report.padding_stripped == 1 and report.without_trace == 1
    assert "padding stripped from 1" in report.summary()


@pytest.mark.parametrize("row_name", list(ROWS))
def test_smollm2_tokenizer_scores_the_references_text(cfg, row_name):
    """The same comparison with a real pretrained BPE tokenizer (SmolLM2's, shipped offline). Two deliberate
    differences show here (docs/design.md):
    - the reference re-tokenises prompt + completion as one string, where "|>\n\n" splits differently than in the
      prompt the teacher was given: it scores tokens the teacher never saw (§8.9); the project scores the ids
      the teacher was given and sampled, so the scored TEXT is compared, not token boundaries;
    - a closing padding before a tag is one token alone ("\n\n") but two in context ("\n", "\n"): the
      reference's sub-list search then trims it off (§3.3 step 3); the project keeps the padding's tokens."""
    from rlt_ray.models.registry import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    fmt = RLTFormat(cfg.format, tok)
    text = lambda ids: tok.decode(ids, skip_special_tokens=False)  # noqa: E731
    for completion in ("Step one.\n\nStep two.\n\n<|end_of_explanation|>", "cut off",
                        "ünïcödé ✓ 数学\n\n<|end_of_explanation|>"):
        seq, ref = project_and_reference(fmt, ROWS[row_name], completion)
        t0, t1 = seq.teacher_explanation
        for ours, theirs in ((seq.teacher_ids[t0:t1], ref.teacher_tokens()),
                             (seq.student_ids[slice(*seq.student_explanation)], ref.think_tokens()),
                             (seq.student_ids[slice(*seq.student_solution)], ref.solution_tokens())):
            ours, theirs = text(ours), text(theirs)
            assert ours.startswith(fmt.pad) and ours.startswith(theirs) and ours[len(theirs):] in ("", fmt.pad)
        assert text(seq.student_ids[slice(*seq.student_solution)]) == fmt.pad + ROWS[row_name].solution + fmt.pad
