"""Distillation's pure parts (rlt_ray.data.distill_rows): the keep rule, the records, and resume from an output folder."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlt_ray.data.distill_rows import choose, distilled, done_rows
from rlt_ray.method.formats import Row


def _scored(totals, match, failed=None):
    return {"total": np.asarray(totals, dtype=np.float32), "match": np.asarray(match, dtype=np.float32),
            "failed": np.asarray(failed or [False] * len(totals)), "r_ss": np.zeros(len(totals)),
            "r_kl": np.zeros(len(totals)), "explanation_tokens": np.ones(len(totals)),
            "solution_tokens": np.ones(len(totals)), "explanations": [f"e{i}" for i in range(len(totals))]}


def test_keep_best_takes_the_highest_closed_and_all_takes_every_closed():
    s = _scored([5.0, 9.0, 7.0, 1.0], [0.0, -1.0, 0.0, 0.0], [False, False, False, True])
    assert choose(s, 0, 4, "best") == [2]  # 9.0 is unclosed, 1.0 failed
    assert choose(s, 0, 4, "all") == [0, 2]
    assert choose(_scored([1.0, 2.0], [-1.0, -1.0]), 0, 2, "best") == []


def test_records_carry_the_input_row_index_and_a_row_without_one_says_why(fmt):
    rows = [Row(question="1+1?", solution="2", id="a"), Row(question="2+2?", solution="4", id="b")]
    s = _scored([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, -1.0, -1.0])
    records, errors = distilled(fmt, rows, [10, 11], s, 2, "best", "t")
    assert [r["row_index"] for r in records[0]] == [10] and records[0][0]["explanation"] == "e1"
    assert records[1] == [] and errors == [None, "none of the 2 explanations closed its tag"]


def test_done_rows_are_the_written_parts_and_the_reported_rows_not_sample_notes(tmp_path):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([{"row_index": 0}, {"row_index": 2}]), tmp_path / "data" / "part-a.parquet")
    (tmp_path / "data" / ".part-b.parquet.tmp").write_text("half a file")  # a write cut by a stop: not done
    (tmp_path / "errors.jsonl").write_text(
        json.dumps({"index": 3, "error": "x"}) + "\n"
        + json.dumps({"index": 4, "completion_error": True, "error": "non-finite reward"}) + "\n"
        + '{"index": 5, "err')  # a line cut by a stop
    assert done_rows(tmp_path) == {0, 2, 3}


def _record(i: int, explanation: str) -> dict:
    return {"id": f"q{i}", "row_index": i, "question": f"{i}+1?", "solution": str(i + 1), "explanation": explanation}


def test_rows_repeating_across_questions_are_a_warning_naming_the_key_and_the_commonest_text():
    from rlt_ray.data.distill_rows import repeated_explanations

    honest = [_record(i, f"{i} and 1 make {i + 1}.") for i in range(8)]
    assert repeated_explanations(honest, 0.25) is None
    # one question's own k explanations (distill.keep=all) alike: not a copy across questions
    assert repeated_explanations(honest + [_record(0, "0 and 1 make 1.")], 0.0) is None
    copied = honest[:5] + [_record(i, "Let me  add: the total is 7.") for i in range(5, 8)]
    copied.append(_record(8, "Let me add: the total is 7."))  # whitespace does not make it another text
    warning = repeated_explanations(copied, 0.25)
    assert warning.startswith("warning: 44% of the 9 distilled explanations")
    assert "distill.max_shared_fraction=0.25" in warning and "4 times: 'Let me add: the total is 7.'" in warning
    assert "grpo.beta" in warning  # the setting that removed it at five seeds (docs/lab-notes/demo-runs.md, run 29)
    assert repeated_explanations(copied, 0.5) is None


def test_the_job_warns_on_a_folder_whose_rows_repeat_even_when_it_has_nothing_left_to_do(tmp_path, capsys):
    """The check reads every part file (a resumed run's earlier rows too); nothing to distil: no Ray, no model."""
    from jobs.distill import main, write_part

    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps({"question": f"{i}+1?", "solution": str(i + 1), "id": f"q{i}"}) + "\n"
                              for i in range(6)))
    for name, texts in (("honest", [f"{i} and 1 make {i + 1}." for i in range(6)]),
                        ("copied", ["The total is 7."] * 6)):
        out = tmp_path / name
        (out / "data").mkdir(parents=True)
        write_part(out / "data", [_record(i, t) for i, t in enumerate(texts[:3])])  # as if two runs wrote it
        write_part(out / "data", [_record(i + 3, t) for i, t in enumerate(texts[3:])])
        assert main([f"data.source={source}", f"distill.output_dir={out}"]) == 0
        printed = capsys.readouterr().out
        assert "6 rows, 6 already done" in printed
        assert ("warning: 100% of the 6 distilled explanations" in printed) == (name == "copied"), printed
