"""The pipeline jobs on tiny data with real Ray, DeepSpeed and vLLM: teacher warm-up → distillation → student
SFT → evaluation."""

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline")


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def warm_teacher(ray_local, work):
    from jobs.sft_teacher import main

    out = work / "sft_teacher"
    assert main([f"sft.output_dir={out}", "data.size=64", "sft.batch_size=8", "sft.epochs=4", "learner.lr=3e-3",
                 "logging.tensorboard=false"]) == 0
    return out


def test_sft_teacher_learns_and_saves_a_loadable_model(warm_teacher):
    from rlt_ray.models import load_causal_lm

    metrics = _metrics(warm_teacher)
    assert len(metrics) == 4 * (64 // 8)
    first, last = metrics[0]["nll"], sum(m["nll"] for m in metrics[-4:]) / 4
    assert last < first - 1.0  # really learning the explanations
    assert all((warm_teacher / f"epoch_{e}").is_dir() for e in (1, 2, 3))
    load_causal_lm(str(warm_teacher / "final"))


def _bad_data(work: Path) -> Path:
    """Six gsm rows plus one whose prompt is far over rollout.max_prompt_tokens."""
    from rlt_ray.data import reasoning_gym_rows

    path = work / "questions.jsonl"
    rows = reasoning_gym_rows("gsm_symbolic", 6, 5)
    records = [{"question": r.question, "solution": r.solution, "answer": r.answer, "id": r.id} for r in rows]
    records.insert(3, {"question": "why? " * 2000, "solution": "because", "id": "too-long"})
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def distilled(warm_teacher, work):
    from jobs.distill import main

    out = work / "distill"
    args = [f"model.teacher={warm_teacher / 'final'}", f"data.source={_bad_data(work)}", "distill.k=4",
            "distill.shard_rows=3", f"distill.output_dir={out}", "rollout.max_new_tokens=200"]
    assert main(args) == 0
    return out, args


def test_distill_writes_bespoke_shards_that_round_trip(distilled, cfg, fmt):
    import datasets

    from rlt_ray.data import load_rows

    out, _ = distilled
    shards = sorted((out / "data").glob("shard_*.parquet"))
    empty = sorted((out / "data").glob("shard_*.empty"))  # shards none of whose rows closed a tag
    assert len(shards) + len(empty) == 3 and shards
    errors = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert {"row": "too-long", "error": "teacher prompt longer than rollout.max_prompt_tokens=1024"} in errors
    ds = datasets.load_dataset("parquet", data_files=[str(s) for s in shards], split="train")
    assert len(ds) + len(errors) == 7 and len(ds) >= 1  # every row is kept (best of k) or reported
    for col in ("system", "conversations", "total", "r_ss", "r_kl"):
        assert col in ds.column_names
    rows = load_rows(str(out / "data"), fmt_cfg=cfg.format)
    for rec, row in zip(ds, rows):
        assert rec["conversations"][1]["value"] == fmt.student_assistant(row, rec["explanation"]).text
        assert row.solution == rec["solution"] and row.question == rec["question"]
        assert rec["total"] == rec["total"]  # a real reward, not NaN


def test_distill_resumes_shard_by_shard(distilled, capsys):
    from jobs.distill import main

    out, args = distilled
    shards = sorted((out / "data").glob("shard_*"))
    stamps = {s: s.stat().st_mtime_ns for s in shards}
    redo = sorted((out / "data").glob("shard_*.parquet"))[0]
    redo.unlink()
    assert main(args) == 0
    assert "3 shards, 2 already done" in capsys.readouterr().out
    assert redo.exists()  # same seeds: the same shard again
    assert all(s.stat().st_mtime_ns == stamps[s] for s in shards if s != redo)


def test_sft_student_then_evaluate(distilled, work):
    from jobs.evaluate import main as evaluate
    from jobs.sft_student import main as sft_student

    out, _ = distilled
    student = work / "sft_student"
    assert sft_student([f"data.source={out / 'data'}", f"sft.output_dir={student}", "sft.batch_size=2",
                        "learner.micro_batch_size=1", "sft.epochs=2", "learner.lr=3e-3",
                        "logging.tensorboard=false"]) == 0
    assert all(m["nll"] == m["nll"] for m in _metrics(student))
    result = work / "eval"
    assert evaluate([f"eval.model={student / 'final'}", "eval.size=6", "eval.max_new_tokens=48",
                     f"eval.output_dir={result}"]) == 0
    summary = json.loads((result / "summary.json").read_text())
    assert summary["n"] == 6 and summary["checker"] == "reasoning_gym" and 0.0 <= summary["accuracy"] <= 1.0
    items = [json.loads(line) for line in (result / "results.jsonl").read_text().splitlines()]
    assert [it["index"] for it in items] == list(range(6))
    assert all({"gold", "prediction", "correct", "completion"} <= it.keys() for it in items)


def test_distill_survives_a_killed_rollout_worker(ray_local, warm_teacher, work):
    """A rollout worker killed mid-run is replaced and its rows redone: every input row ends up once, kept or
    reported."""
    import threading
    import time

    import datasets

    from jobs.distill import main

    out = work / "distill_killed"
    args = [f"model.teacher={warm_teacher / 'final'}", f"data.source={_bad_data(work)}", "distill.k=4",
            "distill.shard_rows=3", f"distill.output_dir={out}", "rollout.max_new_tokens=200"]

    def kill_after_first_shard():
        deadline = time.time() + 600
        while not list((out / "data").glob("shard_00000.*")) and time.time() < deadline:
            time.sleep(0.05)
        ray_local.kill(ray_local.get_actor(f"rlt:distill:{out.name}:rollout:0"), no_restart=True)
    killer = threading.Thread(target=kill_after_first_shard, daemon=True)
    killer.start()
    assert main(args) == 0
    killer.join(timeout=5)
    shards = sorted((out / "data").glob("shard_*.parquet"))
    kept = list(datasets.load_dataset("parquet", data_files=[str(s) for s in shards], split="train")["id"]) \
        if shards else []
    errors = [json.loads(line)["row"] for line in (out / "errors.jsonl").read_text().splitlines()
              if "completion" not in json.loads(line)]  # row-level reports (not per-sample scoring notes)
    assert sorted(kept + errors) == sorted(["too-long"] + [f"gsm_symbolic-5-{i}" for i in range(6)])
