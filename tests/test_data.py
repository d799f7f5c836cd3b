"""Data loaders on files written here, column handling, reasoning-gym sources, the RL order."""
import json

import datasets
import pytest

from rlt_ray.errors import DataError
from rlt_ray.data.sources import DataOrder, load_rows, reasoning_gym_rows

RECORDS = [
    {"question": "What is 2+2?", "solution": "4", "reasoning_trace": "Two and two.", "extra": 1},
    {"question": "What is 3+3?", "solution": "6", "reasoning_trace": None, "extra": 2},
]


@pytest.fixture
def files(tmp_path):
    ds = datasets.Dataset.from_list(RECORDS)
    out = {}
    out["parquet"] = tmp_path / "d.parquet"
    ds.to_parquet(str(out["parquet"]))
    out["jsonl"] = tmp_path / "d.jsonl"
    out["jsonl"].write_text("\n".join(json.dumps(r) for r in RECORDS))
    out["saved"] = tmp_path / "saved"
    ds.save_to_disk(str(out["saved"]))
    out["arrow"] = next(out["saved"].glob("*.arrow"))
    return out


@pytest.mark.parametrize("kind", ["parquet", "jsonl", "saved", "arrow"])
def test_each_loader_reads_question_solution_trace(files, kind):
    rows = load_rows(str(files[kind]))
    assert [r.question for r in rows] == ["What is 2+2?", "What is 3+3?"]
    assert [r.solution for r in rows] == ["4", "6"]
    assert rows[0].reasoning_trace == "Two and two." and rows[1].reasoning_trace is None


def test_prompt_column_is_accepted_as_the_question(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps({"prompt": "Q?", "solution": "S"}))
    assert load_rows(str(p))[0].question == "Q?"


def test_bespoke_conversations_rows(tmp_path):
    rec = {
        "system": "Stratos system prompt",
        "conversations": [
            {"from": "user", "value": "What is 1+1?"},
            {"from": "assistant", "value": "<|begin_of_thought|>\n\nOkay, 1+1=2.\n\n<|end_of_thought|>\n\n"
                                           "<|begin_of_solution|>\n\n\\boxed{2}\n\n<|end_of_solution|>"},
        ],
    }
    p = tmp_path / "b.parquet"
    datasets.Dataset.from_list([rec]).to_parquet(str(p))
    (row,) = load_rows(str(p))
    assert (row.question, row.reasoning_trace, row.solution, row.system) == (
        "What is 1+1?", "Okay, 1+1=2.", "\\boxed{2}", "Stratos system prompt")


def test_missing_columns_list_what_was_found(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"query": "Q", "answer_text": "A"}))
    with pytest.raises(DataError) as err:
        load_rows(str(p))
    assert "answer_text" in str(err.value) and "query" in str(err.value) and "question" in str(err.value)


def test_bad_rows_are_skipped_not_fatal(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [{"question": "Q", "solution": ""}, {"question": "Q2", "solution": "S"}]))
    rows = load_rows(str(p))
    assert [r.question for r in rows] == ["Q2"]


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "missing.parquet"))
    with pytest.raises(DataError, match="reasoning-gym"):
        load_rows("reasoning_gym:no_such_task")
    with pytest.raises(DataError, match="hub"):
        load_rows("nobody/no-such-dataset-here")


def test_reasoning_gym_sources_are_seeded_and_scoreable():
    import reasoning_gym

    a = reasoning_gym_rows("gsm_symbolic", size=8, seed=3)
    assert a == reasoning_gym_rows("gsm_symbolic", size=8, seed=3)
    assert a != reasoning_gym_rows("gsm_symbolic", size=8, seed=4)
    assert all(r.reasoning_trace and r.solution.endswith("}.") and r.answer in r.solution for r in a)
    cd = reasoning_gym_rows("countdown", size=8, seed=3)
    ds = reasoning_gym.create_dataset("countdown", size=8, seed=3)
    # the countdown solution is the reference expression, which the task's own scorer accepts
    assert all(ds.score_answer(r.solution, ds[i]) == 1.0 for i, r in enumerate(cd))


def test_data_order_is_seeded_resumable_and_covers_an_epoch():
    order = DataOrder(num_rows=10, questions_per_step=3, seed=1)
    steps = [order.step_indices(s) for s in range(3)]  # one epoch: 3 full steps, tail dropped
    flat = [i for s in steps for i in s]
    assert len(set(flat)) == 9
    assert steps == [DataOrder(10, 3, 1).step_indices(s) for s in range(3)]  # pure function of step
    assert order.step_indices(3) != order.step_indices(0)  # next epoch reshuffles
    assert len(set(order.step_indices(3))) == 3
    with pytest.raises(DataError, match="questions_per_step"):
        DataOrder(2, 3, 0).step_indices(0)
