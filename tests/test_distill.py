"""Distillation's pure parts (rlt_ray.distill): the keep rule, the records, and resume from an output folder."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rlt_ray.distill import choose, distilled, done_rows
from rlt_ray.formats import Row


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
