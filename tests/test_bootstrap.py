"""scripts/bootstrap.sh, the set-up every command sources: pip's output goes to a file, and a failing pip step
stops the set-up (run or sourced, as scripts/test.sh and scripts/demo.sh do) with the file named, and never
writes the stamp that would skip the install next time. The failing pip is a real process exiting non-zero."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _venv_whose_pip_fails_at(tmp_path: Path, step: str) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    # every pip call before `step` succeeds quietly; `step` prints to pip's output and exits 3
    python.write_text(f'#!/bin/sh\ncase "$*" in *"{step}"*) echo "pip: no such package" >&2; exit 3;; esac\n'
                      'echo "pip: noise that belongs in the log"\nexit 0\n')
    python.chmod(0o755)
    return venv


def test_a_failing_pip_step_stops_the_set_up_names_the_log_and_writes_no_stamp(tmp_path):
    venv = _venv_whose_pip_fails_at(tmp_path, "-e ")
    env = {**os.environ, "RLT_VENV": str(venv)}
    for command in (["bash", "scripts/bootstrap.sh"],
                    ["bash", "-c", "source scripts/bootstrap.sh || exit 7; echo went on"]):
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode in (1, 7) and "went on" not in proc.stdout, (proc.stdout, proc.stderr)
        log = venv / "bootstrap.log"
        assert f"pip install -q -e {ROOT}[cpu,dev,tracking] failed; see {log}" in proc.stderr
        assert "pip: no such package" in proc.stderr  # the log's end, on the console
        assert not (venv / ".rlt-bootstrap").exists()


def test_pip_s_output_goes_to_the_log_and_the_console_gets_one_line(tmp_path):
    venv = _venv_whose_pip_fails_at(tmp_path, "no step fails")
    proc = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=ROOT, env={**os.environ, "RLT_VENV": str(venv)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr.splitlines() == [
        f"bootstrap: installing rlt-ray (cpu) into {venv} (a few minutes; pip's output: {venv / 'bootstrap.log'})"]
    # the three pip steps and the DeepSpeed op build
    assert (venv / "bootstrap.log").read_text().count("noise that belongs in the log") == 4
    assert (venv / ".rlt-bootstrap").exists()


def test_each_venv_builds_its_c_ops_in_its_own_folder(tmp_path):
    """A build's flags name the venv's paths: venvs sharing one folder rebuilt each other's op on every switch."""
    def extensions_dir(venv: Path) -> str:
        env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
        proc = subprocess.run(["bash", "-c", "source scripts/bootstrap.sh >/dev/null 2>&1 || exit 7; "
                               "echo $TORCH_EXTENSIONS_DIR"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**env, "RLT_VENV": str(venv), "RLT_CACHE": str(tmp_path / "cache")})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    one, two = (_venv_whose_pip_fails_at(tmp_path / name, "no step fails") for name in ("one", "two"))
    assert extensions_dir(one) == extensions_dir(one) != extensions_dir(two)
    assert all(Path(extensions_dir(v)).parent == tmp_path / "cache" / "torch_extensions" for v in (one, two))


def test_the_op_is_built_with_the_venv_s_ninja(tmp_path):
    """The jobs find the venv's ninja first on PATH; a build by another ninja leaves a log theirs discards, and
    the op is compiled again in the first DeepSpeed stage."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\ncase "$*" in *ShareMemCommBuilder*) echo "build PATH=$PATH";; esac\nexit 0\n')
    python.chmod(0o755)
    proc = subprocess.run(["bash", "scripts/bootstrap.sh"], cwd=ROOT, env={**os.environ, "RLT_VENV": str(venv)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    build = [line for line in (venv / "bootstrap.log").read_text().splitlines() if line.startswith("build PATH=")]
    assert len(build) == 1 and build[0].split("=", 1)[1].split(":")[0] == str(venv / "bin")
