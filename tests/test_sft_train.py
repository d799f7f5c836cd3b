"""The SFT jobs on Ray Train (actors/sft_train.py), on the real stack: a Train worker killed with SIGKILL mid-run, a run
that may not restart, a resume, bad storage. The weights at the end must equal an uninterrupted run's, bit for
bit (one CPU, the same data order, the whole DeepSpeed state and the RNG in every checkpoint)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray]

# 32 rows, 8 per step, 2 epochs: 8 steps; a checkpoint every 2 steps (and at each epoch's end)
ARGS = ["data.size=32", "sft.batch_size=8", "sft.epochs=2", "learner.lr=3e-3", "logging.trackers=[]",
        "sft.checkpoint_every=2"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "final" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(folder: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]


def _sft(args: list[str], fault: bool = False) -> subprocess.CompletedProcess:
    """The job as a user runs it: its own process and its own local Ray."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if fault:
        env["RLT_ALLOW_FAULT_INJECTION"] = "1"
    return subprocess.run([sys.executable, "jobs/sft_teacher.py", *ARGS, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "uninterrupted"
    run = _sft([f"sft.output_dir={out}"])
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_uninterrupted_run_reports_to_ray_train_and_keeps_its_checkpoints(uninterrupted):
    assert _steps(uninterrupted) == list(range(8))
    record = json.loads((uninterrupted / "train_run.json").read_text())
    run_dir = Path(record["storage"]) / record["name"]
    assert record["storage"] == str(uninterrupted / "train")  # sft.storage_path's default
    kept = sorted(p.name for p in run_dir.glob("step_*"))
    assert kept == ["step_000006", "step_000008"]  # sft.keep_checkpoints=2 of 2, 4, 6, 8
    assert json.loads((run_dir / "step_000008" / "position.json").read_text()) == {"step": 8, "world": 2}
    assert (uninterrupted / "epoch_1").is_dir() and (uninterrupted / "final").is_dir()
    from tests.test_dashboard import assert_has_panels

    assert_has_panels(uninterrupted / "metrics.jsonl")  # the SFT job's metrics are on the dashboard too


def test_a_train_worker_killed_mid_run_restarts_and_ends_with_the_same_weights(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    # the last rank SIGKILLs its own process at step 5 (0-based), after the checkpoint of step 4
    run = _sft([f"sft.output_dir={out}", "run.fault_injection=sft_kill@5", "sft.max_failures=1"], fault=True)
    assert run.returncode == 0, run.stderr[-3000:]
    # from the newest checkpoint Ray Train had registered when the worker died: step 4's, or step 2's when the
    # kill came before Train registered the one just reported
    resumed = re.search(r"resumed at step (\d+)/8 from (\S+) \(after a lost worker\)", run.stdout)
    assert resumed and int(resumed[1]) in (3, 5) and resumed[2].endswith(f"step_{int(resumed[1]) - 1:06d}")
    assert _steps(out) == list(range(8))  # every step once in metrics.jsonl
    events = [json.loads(x) for x in (out / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["restarted"] and events[0]["step"] == int(resumed[1]) - 1
    assert _same(_weights(out), _weights(uninterrupted))


@pytest.mark.slow  # 95 s: the CI suite keeps the kill -9 restart; this one is the same machinery plus a resume
def test_no_restarts_left_names_the_checkpoint_then_resume_latest_ends_with_the_same_weights(uninterrupted,
                                                                                           tmp_path):
    out = tmp_path / "stopped"
    run = _sft([f"sft.output_dir={out}", "run.fault_injection=sft_kill@3", "sft.max_failures=0"], fault=True)
    assert run.returncode == 2, run.stderr[-3000:]
    message = run.stderr.strip().splitlines()[-1]
    assert message.startswith("sft_teacher: the Ray Train run teacher-") and "sft.max_failures=0" in message
    assert re.search(r"its newest checkpoint is \S+/step_000002 \(step 2\): resume with sft.resume_from=latest",
                     message), message
    assert "Traceback" not in run.stderr
    resumed = _sft([f"sft.output_dir={out}", "sft.resume_from=latest"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed at step 3/8 from \S+ \(sft.resume_from\)", resumed.stdout), resumed.stdout[-2000:]
    assert _steps(out) == list(range(8))
    assert _same(_weights(out), _weights(uninterrupted))


def test_resume_latest_refuses_another_shape(uninterrupted):
    run = _sft([f"sft.output_dir={uninterrupted}", "sft.resume_from=latest", "sft.epochs=3"])
    assert run.returncode == 2
    assert "config key 'sft.resume_from'" in run.stderr and "'epochs': 2" in run.stderr


def test_bad_storage_and_nothing_to_resume_fail_at_start_naming_the_key(tmp_path):
    from actors.sft_train import check_storage, plan_run
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="config key 'sft.storage_path': cannot write to"):
        check_storage(str(blocker / "sub"))
    with pytest.raises(ConfigError, match="config key 'sft.storage_path'"):
        check_storage("nosuchscheme://bucket/x")
    cfg = load_config(None, ["sft.resume_from=latest"], job="sft")
    with pytest.raises(ConfigError, match="config key 'sft.resume_from': latest, but .* does not exist"):
        plan_run(cfg, tmp_path / "fresh", "teacher", {})
    cfg = load_config(None, [f"sft.resume_from={tmp_path}"], job="sft")
    with pytest.raises(ConfigError, match="is not a complete SFT checkpoint"):
        plan_run(cfg, tmp_path / "fresh", "teacher", {})


def test_a_storage_that_refuses_writes_fails_the_job_at_start(tmp_path):
    """A folder that cannot be made (a file stands in its path; root ignores permission bits, so not chmod)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    t0 = time.time()
    run = _sft([f"sft.output_dir={tmp_path / 'out'}", f"sft.storage_path={blocker / 'checkpoints'}"])
    assert run.returncode == 2 and "config key 'sft.storage_path': cannot write to" in run.stderr
    assert "Traceback" not in run.stderr and time.time() - t0 < 120


@pytest.mark.slow
def test_submitted_sft_survives_a_killed_worker_shows_in_train_view_and_resumes_after_job_stop(tmp_path):
    """What the issue's operator does, on a cluster started as the README says: `ray job submit` the warm-up,
    kill a Train worker's process with -9 from outside, see the run in the dashboard's Train view, `ray job stop`
    it, submit it again with sft.resume_from=latest: the final weights equal an uninterrupted run's."""
    import urllib.request

    import psutil
    from helpers.cluster import loopback_cluster

    # 256 rows, 8 per step, 3 epochs: 96 steps of ~0.3 s, long enough to be stopped mid-run
    args = ["data.size=256", "sft.batch_size=8", "sft.epochs=3", "learner.lr=3e-3", "logging.trackers=[]",
            "sft.checkpoint_every=2"]
    reference = tmp_path / "reference"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    ref = subprocess.run([sys.executable, "jobs/sft_teacher.py", *args, f"sft.output_dir={reference}"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "submitted"
    with loopback_cluster() as cluster:
        env = {**cluster, "RAY_AUTH_MODE": "token"}
        address = f"http://127.0.0.1:{env['RLT_DASHBOARD_PORT']}"

        def submit(extra: list[str]) -> str:
            done = subprocess.run(["ray", "job", "submit", "--address", address, "--working-dir", ".", "--no-wait",
                                   "--", "python", "jobs/sft_teacher.py", *args, f"sft.output_dir={out}", *extra],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr[-2000:]
            return re.search(r"raysubmit_[A-Za-z0-9]+", done.stdout)[0]  # the output is coloured

        def wait_steps(n: int, deadline: float = 600) -> None:
            end = time.time() + deadline
            while time.time() < end:
                if (out / "metrics.jsonl").exists() and len(_steps(out)) >= n:
                    return
                time.sleep(0.5)
            raise AssertionError(f"fewer than {n} steps in {deadline} s")

        def status(job: str) -> str:
            done = subprocess.run(["ray", "job", "status", "--address", address, job], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=60)
            return (done.stdout + done.stderr).lower()  # "Job '...' was stopped", "... succeeded"

        job = submit([])
        wait_steps(5)
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
        assert workers, "no Ray Train worker process found"
        workers[-1].kill()
        wait_steps(12)
        runs = json.loads(urllib.request.urlopen(
            urllib.request.Request(f"{address}/api/train/v2/runs/v1",  # Train V2's route
                                   headers={"Authorization": f"Bearer {_token(env)}"}), timeout=30).read())
        record = json.loads((out / "train_run.json").read_text())
        assert record["name"] in json.dumps(runs)  # the dashboard's Train view lists the run
        subprocess.run(["ray", "job", "stop", "--address", address, job], cwd=ROOT, env=env, capture_output=True,
                       timeout=120)
        end = time.time() + 120
        while "stopped" not in status(job) and time.time() < end:
            time.sleep(1)
        assert "stopped" in status(job)
        assert len(_steps(out)) < 96
        again = submit(["sft.resume_from=latest"])
        end = time.time() + 900
        while not any(s in status(again) for s in ("succeeded", "failed", "stopped")) and time.time() < end:
            time.sleep(2)
        assert "succeeded" in status(again)
    assert _steps(out) == list(range(96))
    events = [json.loads(x)["why"] for x in (out / "events.jsonl").read_text().splitlines()]
    assert events == ["after a lost worker", "sft.resume_from"]
    assert _same(_weights(out), _weights(reference))


def _token(env: dict) -> str:
    """The cluster's auth token (scripts/cluster.sh writes it where Ray reads it)."""
    path = Path(env.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    return path.read_text().strip() if path.exists() else ""
