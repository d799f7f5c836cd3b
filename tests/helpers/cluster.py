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


@contextmanager
def deployed_app(env: dict, overrides: list[str], tmp_dir: Path, readiness: list[int] | None = None,
                 timeout_s: float = 480):
    """serve/config.yaml deployed with `serve deploy` (the README's way) on a free port, with ``overrides`` added;
    yields its URL once /readyz says ready (as a load balancer would: /healthz and /v1/models may answer before
    the engine is up), appending every /readyz status to ``readiness``; shuts the app down after."""
    import sys
    import time

    import requests
    import yaml

    serve_cli = str(Path(sys.executable).parent / "serve")  # the venv's, as scripts/bootstrap.sh puts it on PATH
    raw = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    port = free_port()
    raw["http_options"]["port"] = port
    raw["applications"][0]["args"]["overrides"] += overrides
    path = tmp_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    address = f"http://127.0.0.1:{env['RLT_DASHBOARD_PORT']}"
    deploy = subprocess.run([serve_cli, "deploy", str(path), "-a", address], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout_s
    try:
        while time.time() < deadline:
            try:
                ready = requests.get(f"{url}/readyz", timeout=10)
                if readiness is not None:
                    readiness.append(ready.status_code)
                if ready.status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        else:
            status = subprocess.run([serve_cli, "status", "-a", address], env=env, capture_output=True, text=True)
            raise AssertionError(f"the app did not come up within {timeout_s:g} s: {status.stdout[-3000:]}")
        yield url
    finally:
        subprocess.run([serve_cli, "shutdown", "-a", address, "-y"], env=env, capture_output=True, timeout=120)


def serve_status(env: dict) -> dict:
    """`serve status` of the cluster, parsed."""
    import sys

    import yaml

    serve_cli = str(Path(sys.executable).parent / "serve")
    out = subprocess.run([serve_cli, "status", "-a", f"http://127.0.0.1:{env['RLT_DASHBOARD_PORT']}"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return yaml.safe_load(out.stdout)
