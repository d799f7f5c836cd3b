"""The README's first command, end to end: warm-ups, RL with a rising reward, distillation, student SFT and
evaluation, all on this machine (the demo's own exit code says whether the reward rose)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_arm_gets_the_rows_of_the_shortest_source_and_a_short_one_stops_the_demo(tmp_path):
    from jobs.demo import rows_per_arm
    from rlt_ray.errors import RunStopped

    assert rows_per_arm({"a": 1024, "b": 1024, "c": 990, "d": 1001}, 960, tmp_path, 32) == 960
    assert rows_per_arm({"a": 1024, "b": 1024, "c": 900, "d": 1001}, 960, tmp_path, 32) == 900
    with pytest.raises(RunStopped, match=r"arm\(s\) c, d \(c: 0 rows, d: 0 rows.*sft\.batch_size=32\).*sft\.epochs"):
        rows_per_arm({"a": 256, "b": 256, "c": 0, "d": 0}, 240, tmp_path, 32)
    # the RL teacher stopped closing its tag (docs/lab-notes/demo-runs.md, run 4; the Intel CI run kept 18 rows): not the
    # warm-up's fault, and never a config error about sft.batch_size
    for kept in (0, 18):
        with pytest.raises(RunStopped, match=r"arm\(s\) d .*the warm-up teacher did, so RL taught it to stop.*"
                                             r"reward\.explanation_span=sampled.*not_matched_penalty") as stopped:
            rows_per_arm({"a": 256, "b": 256, "c": 250, "d": kept}, 240, tmp_path, 32)
        assert "sft.epochs" not in str(stopped.value) and f"d: {kept} rows" in str(stopped.value)


def test_seeds_and_the_shape():
    from jobs.demo import shape_holds, split_seeds, stage_args
    from rlt_ray.errors import ConfigError

    assert split_seeds(["--seeds", "42,43", "run.steps=2"]) == ([42, 43], ["run.steps=2"])
    assert split_seeds(["--seeds=7"]) == ([7], []) and split_seeds(["x=1"]) == (None, ["x=1"])
    for bad in (["--seeds", "4x"], ["--seeds", "1,1"], ["--seeds"]):
        with pytest.raises(ConfigError, match="--seeds"):
            split_seeds(bad)
    arm = {"b": {"low": 0.05, "high": 0.15}, "c": {"low": 0.08, "high": 0.16}}
    assert shape_holds({**arm, "d": {"low": 0.17}}) and not shape_holds({**arm, "d": {"low": 0.16}})
    # a replicate's RL teacher arm lives under its own folder and seeds only the RL stage
    args = stage_args(Path("/o"), 8, 240, 1e-3, Path("/o/seeds/43"), 43)
    assert "run.seed=43" in args["train_rlt"] and "data.seed=43" in args["train_rlt"]
    assert "run.output_dir=/o/seeds/43/rl" in args["train_rlt"]
    assert "distill.output_dir=/o/seeds/43/distill_rl" in args["distill_d"]
    assert not any(a.startswith(("run.seed", "data.seed")) for a in args["student_d"] + args["student_c"])


def test_extended_runs_at_one_seed_and_the_transfer_task_is_one_the_teachers_never_saw(tmp_path):
    from jobs.demo import main
    from rlt_ray.errors import ConfigError
    from rlt_ray.data.demo_task import write_task

    with pytest.raises(ConfigError, match="--extended and --seeds"):
        main(["--extended", "--seeds", "1,2"])
    train = write_task(tmp_path / "t4", 64, 16, 0)
    transfer = write_task(tmp_path / "t5", 64, 16, 100, terms=5)
    four = [json.loads(x) for x in train["train"].read_text().splitlines()]
    five = [json.loads(x) for x in transfer["test"].read_text().splitlines()]
    assert all(r["question"].count("+") == 3 for r in four) and all(r["question"].count("+") == 4 for r in five)
    assert all(int(r["solution"]) == sum(int(t) for t in r["id"][4:]) for r in five)


def test_the_rl_stage_takes_demo_rl_lr_and_the_sft_stages_keep_the_users_learner_lr(tmp_path):
    from jobs.demo import stage_args
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config

    args = stage_args(tmp_path, 8, 240, 1e-3)
    user = ["learner.lr=2e-3"]  # the user's override comes first, as in jobs/demo.py's main
    rl = load_config("demo", user + args["train_rlt"])
    # the RL stage warms up over demo.rl_warmup_ratio of its steps (a fresh AdamW moves every weight by ~lr at once)
    assert rl.learner.lr == 1e-3 and rl.learner.lr_schedule == "constant" and rl.learner.warmup_ratio == 0.1
    assert all(load_config("demo", user + args[s]).learner.lr == 2e-3 for s in ("sft_teacher", "student_b"))
    # demo.student_epochs: every student's epochs (the reward's student (b) too), not the teacher's warm-up's
    longer = stage_args(tmp_path, 8, 240, 1e-3, student_epochs=7)
    assert all(load_config("demo", longer[f"student_{a}"]).sft.epochs == 7 for a in "abcd")
    assert load_config("demo", longer["sft_teacher"]).sft.epochs == load_config("demo").sft.epochs != 7
    assert args["student_b"] == [a for a in longer["student_b"] if a != "sft.epochs=7"]
    assert load_config("demo").demo.rl_lr == 5e-4
    with pytest.raises(ConfigError, match="demo.rl_lr"):
        load_config("demo", ["demo.rl_lr=0"])


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.parametrize("size,test_questions", [
    # the CI suite: every stage and every code path of the demo, with fewer RL steps and SFT epochs, students on a
    # quarter of the rows and a quarter of the test questions (the teacher's warm-up keeps all 1,024 train
    # questions: with fewer, 3 epochs do not teach it to close its tag, and distillation keeps nothing)
    # (5 epochs, as the full demo: with 3 the warm-up teacher closes its tag only 78 % of the time and RL's
    # first steps knock that down; docs/lab-notes/demo-runs.md, runs 9-11). The reward-hacking watch reports but does not stop
    # it: its checks are the mechanics, whatever the 8 steps do to the teacher. Its students train the warm-up's
    # 5 epochs, not the full demo's 10 (demo.student_epochs), to keep the CI suite's time
    # In the slow suite since its 810 s alone took CI's suite past its ~35-minute budget (53 minutes in all);
    # CI keeps every stage's own tests and the demo's pure parts (the tests above and below).
    pytest.param(["run.steps=8", "demo.test_questions=64", "demo.student_rows=240", "run.stop_on_hack=false",
                  "demo.student_epochs=5"], 64, id="short", marks=pytest.mark.slow),
    # the README's command exactly as a user runs it (about 12 minutes on 2 cores): scripts/test.sh --slow
    pytest.param([], 256, id="full", marks=pytest.mark.slow),
])
def test_demo_runs_every_stage_and_reports_the_table(tmp_path, size, test_questions):
    """Mechanics (every stage ran, the RL steps trained: finite rewards, the policy moved away from the warm-up;
    the four-student table is complete, the console is quiet and the library logs are in files), and for the full
    demo at its default seed the paper's shape (docs/lab-notes/demo-runs.md, run 12)."""
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RLT_VERBOSE")}
    proc = subprocess.run([sys.executable, "jobs/demo.py", f"run.output_dir={out}", *size], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["rl"]["steps"]
    records = [json.loads(line) for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    metrics = [m for m in records if "loss" in m]  # the steps; the last record holds the final validation alone
    assert [m["step"] for m in metrics] == list(range(steps))
    # validation (run.eval_every) before the first step and after the last, on the task's held-out questions
    validated = [m["step"] for m in records if "val/r_ss_mean" in m]
    assert validated[0] == 0 and validated[-1] == steps and records[-1]["step"] == steps
    assert summary["rl"]["validation"]["count"] == len(validated)
    assert all(m["reward_mean"] is not None and m["grad_norm"] > 0 for m in metrics)
    assert max(m["policy_kl"] for m in metrics) > 0  # the teacher moved away from its warm-up reference
    assert isinstance(summary["rl"]["reward_rose"], bool) and isinstance(summary["shape"], bool)
    assert set(summary["explanations"]) == {"b", "c", "d"} and summary["explanations"]["b"]["steps_right"] == 1.0
    if not size:  # the full demo at its default seed: (d)'s interval above (b)'s and (c)'s (docs/demo.md)
        assert summary["shape"], summary["students"]
        assert "(the paper's shape): yes" in proc.stdout
    assert set(summary["students"]) == {"a", "b", "c", "d"}
    for arm in summary["students"].values():
        assert arm["n"] == test_questions and arm["low"] <= arm["accuracy"] <= arm["high"]
        assert arm["correct"] == round(arm["accuracy"] * arm["n"])
    assert len({arm["train_rows"] for arm in summary["students"].values()}) == 1  # the same data size
    assert summary["examples"] and all(e["warm_up"] and e["rl"] and e["reference_trace"] for e in summary["examples"])
    assert (out / "demo.png").stat().st_size > 10_000
    assert any((out / "rl" / "tensorboard").iterdir())
    assert summary["served_weights_version"] == steps
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("step ") for line in lines) == steps  # one line per RL step
    for arm in "abcd":
        assert any(line.startswith(f"({arm}) ") for line in lines)
    assert len(lines) < steps + 60, proc.stdout  # quiet: stage lines, step lines and the table, no library logs
    # vLLM's, DeepSpeed's and Ray's lines (Ray prefixes an actor's with a coloured "(Actor pid=N)")
    library = re.compile(r"^(\x1b\[\d+m)?(INFO|WARNING|DEBUG|\[\d{4}-|\(\w+ pid=\d+\)|\d{4}-\d\d-\d\d \d\d:)")
    assert not [line for line in lines if library.match(line)], proc.stdout
    logs = out / "logs"
    assert (logs / "train_rlt.log").stat().st_size > 0 and list((logs / "ray").glob("worker-*"))
    assert str(logs) in proc.stdout
    if size:  # scripts/student_seeds.py on the finished demo: student (d) again at another seed, same rows
        more = subprocess.run([sys.executable, "scripts/student_seeds.py", str(out), "--seeds", "43", "--arms", "d",
                               *size], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert more.returncode == 0, (more.stdout[-3000:], more.stderr[-3000:])
        again = json.loads((out / "student_seeds.json").read_text())["arms"]["d"]
        assert again["correct"]["42"] == summary["students"]["d"]["correct"] and again["n"] == test_questions
        assert 0 <= again["correct"]["43"] <= test_questions and (out / "student_seeds" / "43" / "eval" / "d").is_dir()
        assert "(d) " in more.stdout and "mean" in more.stdout


def test_what_a_stage_writes_to_the_process_stderr_goes_to_its_log(tmp_path, capfd):
    """Ray's C++ core worker writes to the process's stderr itself (an ERROR line per Ray Data actor pool): in a
    stage it goes to the stage's log, not to the demo's console."""
    from jobs.demo import StageLog

    with StageLog(tmp_path, verbose=False).stage("distill"):
        os.write(2, b"core_worker.cc: an actor with constructor arguments in the object store\n")
        print("a stage line", file=sys.stderr)
    os.write(2, b"after the stage\n")
    out, err = capfd.readouterr()
    assert "core_worker" not in out + err and "a stage line" not in out + err and "after the stage" in err
    log = (tmp_path / "distill.log").read_text()
    assert "core_worker.cc" in log and "a stage line" in log


def test_the_replicates_count_a_seed_whose_distilled_rows_repeat_as_copying(tmp_path, capsys):
    """The replicate report: the shape per seed, the seeds the RL watch stopped, and the seeds whose distilled
    rows repeat across questions over distill.max_shared_fraction (what the watch missed at run 28's seed 57)."""
    import json

    from jobs.demo import report_replicates

    def arm(name, correct):
        low, high = correct / 256 - 0.05, correct / 256 + 0.05
        return {"arm": name, "accuracy": correct / 256, "low": low, "high": high, "n": 256, "correct": correct}

    shared = {"a": arm("a", 100), "b": arm("b", 60), "c": arm("c", 60)}
    curve = {"reward_mean": -6.0, "r_ss_mean": -2.0, "r_kl_mean": 3.0, "closed_tag_fraction": 1.0,
             "completion_tokens_mean": 60.0}
    for seed in (1, 2, 3):
        folder = tmp_path / "seeds" / str(seed) / "rl"
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(curve) + "\n" for _ in range(8)))
    questions = [(f"What is {i}+1+1+1?", str(i + 3)) for i in range(8)]
    honest = [{"id": f"q{i}", "question": q, "solution": a, "explanation": f"{q[8:-1]} makes {a}."}
              for i, (q, a) in enumerate(questions)]
    copying = [{**r, "explanation": "So we want the sum. 6+5=11. Therefore the total is 11."} for r in honest]
    report_replicates(tmp_path, [1, 2, 3], {1: {**shared, "d": arm("d", 150)}, 2: {**shared, "d": arm("d", 140)}},
                      {3: "stopped at step 23 (run.stop_on_hack): reward hacking suspected"}, shared,
                      {1: honest, 2: copying}, 10.0, max_shared=0.25)
    out = json.loads((tmp_path / "replicates.json").read_text())
    assert out["shape_at"] == [1, 2] and out["stopped_at"] == [3] and out["copied_at"] == [2]
    assert out["seeds"]["2"]["explanations"]["shared"] == 1.0 and out["seeds"]["1"]["explanations"]["shared"] == 0.0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line for line in printed.splitlines() if line.strip()[:1].isdigit()}
    assert rows["2"].endswith("yes  (copying)") and "(copying)" not in rows["1"] and "stopped" in rows["3"]
    assert "repeated across questions (over distill.max_shared_fraction=0.25) at 1" in printed
    assert (tmp_path / "replicates.png").exists()
