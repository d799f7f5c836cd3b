"""A loopback Ray cluster started by scripts/cluster.sh, as the README starts one, for the tests that operate the
project from outside (`ray job submit`, `serve deploy`)."""

import os
import socket
import subprocess
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    """A page's text, or "" while it does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


@contextmanager
def loopback_cluster(**extra_env: str):
    """Start a cluster on free ports (4 CPUs, metrics every second) with ``extra_env`` in its environment; yield
    that environment; stop it and check that none of its processes is left behind."""
    env = {**os.environ, "RLT_RAY_TMP": f"/tmp/rlt-{uuid.uuid4().hex[:6]}", "RLT_RAY_PORT": str(free_port()),
           "RLT_DASHBOARD_PORT": str(free_port()), "RLT_METRICS_PORT": str(free_port()),
           "RLT_AGENT_PORT": str(free_port()), "RLT_RAY_CPUS": "4",
           "RAY_metrics_report_interval_ms": "1000", **extra_env}
    env.pop("RAY_ADDRESS", None)
    start = subprocess.run(["bash", "scripts/cluster.sh", "start"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-3000:]
        yield env
    finally:
        subprocess.run(["bash", "scripts/cluster.sh", "stop"], cwd=ROOT, env=env, timeout=60)
        left = subprocess.run(["pgrep", "-f", env["RLT_RAY_TMP"]], capture_output=True, text=True).stdout
        assert not left.strip(), f"cluster processes left behind: {left}"
