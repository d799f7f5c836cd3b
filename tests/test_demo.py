"""The README's first command, end to end: warm-ups, RL with a rising reward, distillation, student SFT and
evaluation, all on this machine (the demo's own exit code says whether the reward rose)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.vllm]


def test_demo_runs_the_pipeline_and_the_reward_rises(tmp_path):
    out = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "jobs/demo.py", f"run.output_dir={out}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reward_rose"] and summary["reward_last10"] > summary["reward_first10"]
    assert summary["seconds"] < 15 * 60
    assert (out / "reward_curve.png").stat().st_size > 10_000
    assert any((out / "rl" / "tensorboard").iterdir())
    assert summary["distilled_shards"] >= 1 and summary["eval_n"] == 32
    assert summary["served_weights_version"] == 40 and "POST /v1/explain -> weights version 40" in proc.stdout
    assert "=== demo: summary" in proc.stdout and "rose" in proc.stdout
