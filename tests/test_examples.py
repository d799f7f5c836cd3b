"""examples/: each launch script a user copies loads its config and passes the memory plan (--dry-run), with the
submit command replaced by a plain run (RLT_LAUNCH="")."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "examples").glob("*.sh"))


def test_the_examples_are_the_four_a_user_looks_for():
    assert SCRIPTS == ["bring_your_own_data.sh", "grpo_with_checker.sh", "rlt_7b_one_node.sh", "rlt_7b_two_nodes.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_example_loads_its_config_and_fits_its_gpus(script, tmp_path):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"question": "What is 1+1?", "solution": "2"}\n')
    env = {**os.environ, "RLT_LAUNCH": "", "DATA": str(data), "OUT": str(tmp_path / "out"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ROOT / "examples" / script), "--dry-run"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "dry run: the config loads and the memory plan fits" in run.stdout and "Nothing was started" in run.stdout


def test_a_bad_key_in_an_example_is_a_clear_error(tmp_path):
    env = {**os.environ, "RLT_LAUNCH": "", "OUT": str(tmp_path / "out"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run = subprocess.run(["bash", str(ROOT / "examples" / "rlt_7b_one_node.sh"), "--dry-run", "run.stepz=3"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 2 and "run.stepz" in run.stderr and "Traceback" not in run.stderr
