"""The demo's task family (rlt_ray.data.demo_task) and its models: traces correct but long-winded, splits disjoint,
digits one token each."""

import json
import re

from rlt_ray.data.demo_task import chain, make_rows, write_task


def test_reference_traces_are_correct_and_long_winded():
    rows = make_rows(300, 3)
    assert len({r["id"] for r in rows}) == 300
    detours = shuffled = 0
    for r in rows:
        terms = [int(c) for c in r["id"][4:]]
        assert r["question"] == "What is " + "+".join(map(str, terms)) + "?" and r["solution"] == str(sum(terms))
        steps = re.findall(r"(\d+)\+(\d+)=(\d+)", r["reasoning_trace"])
        assert steps and all(int(a) + int(b) == int(c) for a, b, c in steps)  # every step is true
        assert re.findall(r"\d+", r["reasoning_trace"])[-1] == r["solution"]  # and it ends on the answer
        detours += len(steps) > len(terms) - 1
        shuffled += chain(terms) not in r["reasoning_trace"]
    assert 0.3 < detours / 300 < 0.7 and 0.4 < shuffled / 300 < 0.8  # R1-like: not the shortest path


def test_write_task_splits_are_disjoint_and_loadable(tmp_path, cfg):
    from rlt_ray.data.sources import load_rows

    files = write_task(tmp_path, 200, 50, 0)
    train = [json.loads(line) for line in files["train"].read_text().splitlines()]
    test = [json.loads(line) for line in files["test"].read_text().splitlines()]
    assert len(train) == 200 and len(test) == 50 and not {r["id"] for r in train} & {r["id"] for r in test}
    rows = load_rows(str(files["train_answer_only"]), fmt_cfg=cfg.format)
    assert len(rows) == 200 and all(r.reasoning_trace is None for r in rows)
    assert load_rows(str(files["train"]), fmt_cfg=cfg.format)[0].reasoning_trace == train[0]["reasoning_trace"]


def test_demo_tokenizer_has_one_token_per_digit():
    from rlt_ray.models.registry import load_tokenizer

    tok = load_tokenizer("demo-student")
    pieces = tok.convert_ids_to_tokens(tok("12+345=357.", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("12345357")


def test_explanation_features_count_what_a_student_can_learn():
    from rlt_ray.data.demo_task import describe_explanations, explanation_features

    clean = explanation_features("What is 2+1+5+4?", "12", "Alright. 2+1=3. 3+5=8. 8+4=12. So the answer is 12.")
    assert clean == {"answer_last": 1.0, "answer_anywhere": 1.0, "steps_right": 1.0, "any_step_right": 1.0,
                     "question_order": 1.0, "terms_from_question": 1.0, "chained": 1.0, "steps": 3.0, "words": 9.0}
    detour = explanation_features("What is 2+1+5+4?", "12", "Ok. 2+5=7. Wait. 4+1=5. 5+5=10. 10+2=12. So 12.")
    assert detour["chained"] == 0.0 and detour["question_order"] == 0.0 and detour["steps_right"] == 1.0
    wrong = explanation_features("What is 2+1+5+4?", "12", "Hmm. 5+3=7. 7+9=15. That gives 15.")
    assert wrong["answer_last"] == wrong["answer_anywhere"] == wrong["steps_right"] == 0.0
    assert wrong["terms_from_question"] == 0.0 and wrong["chained"] == 1.0
    rows = [{"question": "What is 2+1+5+4?", "solution": "12", "explanation": t}
            for t in ("Alright. 2+1=3. 3+5=8. 8+4=12. So the answer is 12.", "Alright. 1+2=3. So the answer is 3.")]
    summary = describe_explanations(rows)
    assert summary["answer_last"] == 0.5 and summary["top_opener_share"] == 1.0 and summary["rows"] == 2
    assert summary["shared"] == 0.0  # one question: nothing was written for another one
    copies = rows + [{"question": "What is 9+9+1+3?", "solution": "22", "explanation": rows[1]["explanation"]}]
    assert describe_explanations(copies)["shared"] == 2 / 3  # the second and third rows: one text, two questions
    assert describe_explanations([]) == {}


def test_explanation_dependence_compares_own_shuffled_reference_and_no_explanation(tmp_path):
    """scripts/explanation_dependence.py (docs/lab-notes/demo-runs.md, run 28) on the demo's untrained student: the four means
    are finite, a reference trace equal to the row's explanation scores as the row's own, and rows that all share
    one explanation score the same shuffled or not."""
    import math
    import shutil
    from pathlib import Path
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlt_ray.models.registry import resolve_model

    run = tmp_path / "run"
    shutil.copytree(resolve_model("demo-student"), run / "student_b" / "final")
    questions = [("What is 1+2+3+4?", "10"), ("What is 5+1+1+2?", "9"), ("What is 9+9+1+1?", "20")]
    (run / "task").mkdir()
    (run / "task" / "train.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "question": q, "solution": s, "reasoning_trace": "Add them up."}) + "\n"
        for i, (q, s) in enumerate(questions)))
    rows = [{"id": f"q{i}", "question": q, "solution": s, "explanation": "Add them up."}
            for i, (q, s) in enumerate(questions)]
    (run / "distill" / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), run / "distill" / "data" / "part-0.parquet")
    script = Path(__file__).resolve().parents[1] / "scripts" / "explanation_dependence.py"
    done = subprocess.run([sys.executable, str(script), str(run), str(run / "distill")], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    values = dict(part.rsplit(" ", 1) for part in done.stdout.strip().split(": ", 1)[1].split(", "))
    means = {k: float(v) for k, v in values.items()}
    assert set(means) == {"own", "shuffled", "reference", "empty", "own_minus_shuffled"}
    assert all(math.isfinite(v) and v <= 0 for k, v in means.items() if k != "own_minus_shuffled")
    assert means["own"] == means["shuffled"] == means["reference"] and means["own_minus_shuffled"] == 0
    assert means["empty"] != means["own"]  # no explanation is another context
    missing = subprocess.run([sys.executable, str(script), str(run), str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "parquet parts in" in missing.stderr
    bad = subprocess.run([sys.executable, str(script), str(run), str(run / "distill"), "--rows", "x"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--rows needs a positive number" in bad.stderr
