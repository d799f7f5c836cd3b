import pytest
import torch

from rlt_ray.method.formats import Row
from rlt_ray.data.sft_rows import build_examples, epoch_batches, sft_loss, student_sft_example

ROW = Row(question="What is 2+3?", solution="The final answer is \\boxed{5}.", reasoning_trace="2 + 3 = 5.")


def _masked_text(fmt, ids, mask):
    return fmt.tokenizer.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False)


def test_teacher_mask_is_explanation_close_tag_and_end_of_turn(fmt):
    ex = build_examples(fmt, [ROW], "teacher", 10_000)
    text = _masked_text(fmt, ex.ids[0], ex.masks[0])
    assert text == "2 + 3 = 5.\n\n" + fmt.explanation[1] + fmt.eos_text
    assert "boxed" not in text and "What is" not in text  # the solution and the question are context


def test_student_mask_is_the_assistant_turn(fmt):
    ids, mask = student_sft_example(fmt, ROW, fmt.reference_explanation(ROW))
    text = _masked_text(fmt, ids, mask)
    assert text.startswith(fmt.think[0]) and text.endswith(fmt.solution[1] + fmt.eos_text)
    assert "2 + 3 = 5." in text and "\\boxed{5}" in text and "What is" not in text


def test_bad_rows_are_skipped_and_counted(fmt):
    rows = [ROW, Row(question="q", solution="s"), Row(question="x " * 500, solution="s", reasoning_trace="t")]
    ex = build_examples(fmt, rows, "teacher", 300)
    assert len(ex.ids) == 2 and ex.solution_as_trace == 1
    assert ex.skipped == {"longer than sft.max_seq_tokens=300": 1}


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_a_row_without_trace_uses_its_solution_as_the_trace(fmt, role):
    # the reference's custom rows: line.get("reasoning_trace", solution)
    row = Row(question="q?", solution="It is 7.")
    ex = build_examples(fmt, [row], role, 10_000)
    assert ex.solution_as_trace == 1
    text = _masked_text(fmt, ex.ids[0], ex.masks[0])
    assert text.count("It is 7.") == (1 if role == "teacher" else 2)  # the student also learns the solution


def test_student_sft_text_is_the_bespoke_assistant_turn(fmt):
    # the trace keeps its padding before the close tag, byte for byte the Bespoke-Stratos layout
    ids, mask = student_sft_example(fmt, ROW, fmt.reference_explanation(ROW))
    assert _masked_text(fmt, ids, mask) == (
        "<|begin_of_thought|>\n\n2 + 3 = 5.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
        "The final answer is \\boxed{5}.\n\n<|end_of_solution|>" + fmt.eos_text)


def test_epoch_batches_are_full_seeded_and_reshuffled():
    b0 = epoch_batches(10, 4, seed=1, epoch=0)
    assert len(b0) == 2 and all(len(b) == 4 for b in b0) and len(set(sum(b0, []))) == 8
    assert b0 == epoch_batches(10, 4, seed=1, epoch=0)
    assert b0 != epoch_batches(10, 4, seed=1, epoch=1)


def test_sft_loss_is_token_mean_over_ranks():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, 0.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    # 3 target tokens in the whole batch, 2 ranks: this rank's part is its NLL sum / (3 / 2)
    assert sft_loss(logp, mask, 3 / 2).item() == pytest.approx((2 + 3 + 5) / 1.5)


def test_a_resumed_step_finds_its_epoch_and_batch_and_checkpoints_fall_where_said():
    from rlt_ray.data.sft_rows import checkpoint_due, step_position

    assert step_position(0, 4) == (0, 0) and step_position(5, 4) == (1, 1) and step_position(8, 4) == (2, 0)
    # 4 steps per epoch, every 3 steps: after steps 3 (the 3rd), 4 (epoch end), 6, 8 (epoch end), 9 ...
    assert [s + 1 for s in range(12) if checkpoint_due(s, 4, 3)] == [3, 4, 6, 8, 9, 12]
    assert [s + 1 for s in range(12) if checkpoint_due(s, 4, 0)] == [4, 8, 12]
