"""The demo's task family (rlt_ray.demo_task) and its models: traces correct but long-winded, splits disjoint,
digits one token each."""

import json
import re

from rlt_ray.demo_task import chain, make_rows, write_task


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
    from rlt_ray.data import load_rows

    files = write_task(tmp_path, 200, 50, 0)
    train = [json.loads(line) for line in files["train"].read_text().splitlines()]
    test = [json.loads(line) for line in files["test"].read_text().splitlines()]
    assert len(train) == 200 and len(test) == 50 and not {r["id"] for r in train} & {r["id"] for r in test}
    rows = load_rows(str(files["train_answer_only"]), fmt_cfg=cfg.format)
    assert len(rows) == 200 and all(r.reasoning_trace is None for r in rows)
    assert load_rows(str(files["train"]), fmt_cfg=cfg.format)[0].reasoning_trace == train[0]["reasoning_trace"]


def test_demo_tokenizer_has_one_token_per_digit():
    from rlt_ray.models import load_tokenizer

    tok = load_tokenizer("demo-student")
    pieces = tok.convert_ids_to_tokens(tok("12+345=357.", add_special_tokens=False)["input_ids"])
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == list("12345357")
