"""What the distribution installs: only rlt_ray (with its shipped model configs). actors/, jobs/ and serve/ are
the repo's folders (generic names that would collide in site-packages); the entrypoints find them from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("rlt_ray-*.whl")
    return built


def test_the_wheel_holds_only_rlt_ray_and_its_model_configs(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"rlt_ray"}, top
    assert {"rlt_ray/model_configs/Qwen__Qwen2.5-7B-Instruct.json", "rlt_ray/config/schema.py",
            "rlt_ray/method/rewards.py"} <= set(names)


def test_installed_it_puts_only_rlt_ray_into_site_packages(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")}
    assert installed == {"rlt_ray"}, installed
    # the installed copy works on its own: its memory plan reads the shipped model configs
    proc = subprocess.run([sys.executable, "-c", "import rlt_ray.memory as m; print(m.__file__); "
                           "print(m.SHIPPED.is_dir())"], env={**os.environ, "PYTHONPATH": str(site)},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == [str(site / "rlt_ray" / "memory.py"), "True"], proc.stderr[-2000:]


def test_a_job_run_from_another_folder_finds_the_repos_folders(tmp_path):
    """No PYTHONPATH, another working folder: the job script puts the repo root on its path itself."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "train_rlt.py"), "--config",
                           str(ROOT / "configs" / "paper_7b.yaml"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dry run: the config loads and the memory plan fits" in proc.stdout
    # and without the script's own help, `import actors` would fail there
    bare = subprocess.run([sys.executable, "-c", "import actors"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert bare.returncode != 0 and "No module named 'actors'" in bare.stderr


@pytest.mark.slow
@pytest.mark.ray
def test_a_one_step_run_from_another_folder_imports_the_actors_on_rays_workers(tmp_path):
    """Ray's workers get the repo root through PYTHONPATH (rlt_ray.infra.cluster.use_project_root), not from an
    installed package: one RL step, started outside the repo with no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "train_rlt.py"), "run.steps=1",
                           f"run.output_dir={tmp_path / 'out'}", "logging.trackers=[]"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert (tmp_path / "out" / "summary.json").is_file()
