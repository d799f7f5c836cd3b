"""`ray job submit` against a local cluster started as the README says (loopback, token auth on); the run's
custom metrics appear on the cluster's Prometheus endpoint while it runs."""

import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from helpers.cluster import free_port, loopback_cluster, scrape

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.vllm]


@pytest.fixture
def cluster():
    with loopback_cluster() as env:
        yield env


def test_start_refuses_a_taken_agent_port_naming_it():
    """Another process on the agent's port: Ray would start a head whose job agent cannot serve (every submit
    refused with "No available agent"); `start` refuses at once, naming the port and the variable."""
    env = {**os.environ, "RLT_RAY_TMP": f"/tmp/rlt-{uuid.uuid4().hex[:6]}", "RLT_RAY_PORT": str(free_port()),
           "RLT_DASHBOARD_PORT": str(free_port()), "RLT_METRICS_PORT": str(free_port())}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env["RLT_AGENT_PORT"] = str(taken.getsockname()[1])
        start = subprocess.run(["bash", "scripts/cluster.sh", "start"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=120)
    assert start.returncode == 2
    assert f"port {env['RLT_AGENT_PORT']} on 127.0.0.1 is in use; set RLT_AGENT_PORT" in start.stderr
    assert not subprocess.run(["pgrep", "-f", env["RLT_RAY_TMP"]], capture_output=True, text=True).stdout.strip()


def test_ray_job_submit_runs_training_and_exports_metrics(cluster, tmp_path):
    env = {**cluster, "RAY_AUTH_MODE": "token"}
    address = f"http://127.0.0.1:{env['RLT_DASHBOARD_PORT']}"
    metrics_url = f"http://127.0.0.1:{env['RLT_METRICS_PORT']}/metrics"
    job = subprocess.Popen(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "jobs/train_rlt.py", "run.steps=30", f"run.output_dir={tmp_path / 'run'}",
         "logging.trackers=[]"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 600
    while job.poll() is None and time.time() < deadline:
        text = scrape(metrics_url)
        if "ray_rlt_reward_mean" in text:
            seen = text
        time.sleep(1)
    output = job.communicate(timeout=60)[0]
    assert job.returncode == 0, output[-4000:]
    assert "step 30/30" in output and "succeeded" in output
    assert (tmp_path / "run" / "checkpoints" / "step_000030" / "COMPLETE").exists()
    names = {line.split("{")[0] for line in seen.splitlines() if line.startswith("ray_rlt_")}
    for name in ("ray_rlt_reward_mean", "ray_rlt_r_ss_mean", "ray_rlt_r_kl_mean", "ray_rlt_sync_seconds",
                 "ray_rlt_step_seconds", "ray_rlt_weights_version", "ray_rlt_generate_tokens_per_s"):
        assert name in names, sorted(names)
    assert 'run="run"' in seen


@pytest.mark.slow
def test_job_submit_survives_a_killed_engine_core(cluster, tmp_path):
    """What an operator does: a submitted training run with vLLM's engine core as a process of its own (the GPU
    default), the engine core killed from outside mid-run; the job ends SUCCEEDED with every step once."""
    import json

    import psutil

    env = {**cluster, "RAY_AUTH_MODE": "token"}
    address = f"http://127.0.0.1:{env['RLT_DASHBOARD_PORT']}"
    out = tmp_path / "run"
    job = subprocess.Popen(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "jobs/train_rlt.py", "run.steps=12", f"run.output_dir={out}", "rollout.in_process=false",
         "rollout.n=8", "rollout.max_new_tokens=192", "logging.trackers=[]"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = lambda p: [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []  # noqa: E731
    deadline = time.time() + 900
    while len(lines(out / "metrics.jsonl")) < 4 and time.time() < deadline and job.poll() is None:
        time.sleep(0.5)
    time.sleep(0.3)
    workers = [p for p in psutil.process_iter(["cmdline"]) if "RolloutWorker" in " ".join(p.info["cmdline"] or [])]
    cores = [c for w in workers for c in w.children(recursive=True)]  # the engine core and its helpers
    assert cores, "no vLLM engine core process found under a rollout worker"
    for p in cores:
        p.kill()
    output = job.communicate(timeout=900)[0]
    assert job.returncode == 0 and "succeeded" in output, output[-4000:]
    assert [m["step"] for m in lines(out / "metrics.jsonl")] == list(range(12))
    assert any(e["event"] == "rollout_worker_replaced" for e in lines(out / "events.jsonl"))
