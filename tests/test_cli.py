"""What a user meets at a job's command line: --help, no silent toy preset, the config reference."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlt_ray.config import ConfigError, check_cluster, load_config, split_argv

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted(p.stem for p in (ROOT / "jobs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("job", JOBS)
def test_every_job_answers_help_with_what_it_does_its_presets_and_where_the_keys_are(job):
    out = subprocess.run([sys.executable, str(ROOT / "jobs" / f"{job}.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: {job} [--config PRESET]")
    assert "configs/paper_7b.yaml" in out.stdout and "python -m rlt_ray.config" in out.stdout


def test_without_config_a_job_says_which_preset_it_took(capsys):
    preset, overrides = split_argv(["run.steps=2"])
    assert preset.endswith("configs/tiny_cpu.yaml") and overrides == ["run.steps=2"]
    assert "no --config given: using the preset" in capsys.readouterr().out
    split_argv(["--config", "configs/paper_7b.yaml"])
    assert capsys.readouterr().out == ""


def test_a_cpu_preset_on_a_cluster_with_gpus_is_refused_unless_asked():
    cfg = load_config(*split_argv(["--config", "configs/tiny_cpu.yaml"]))
    gpus = {"CPU": 64.0, "GPU": 8.0}
    with pytest.raises(ConfigError, match=r"resources.device.*8 GPUs.*--config.*--allow-cpu-preset"):
        check_cluster(cfg, gpus)
    allowed = load_config(*split_argv(["--config", "configs/tiny_cpu.yaml", "--allow-cpu-preset"]))
    check_cluster(allowed, gpus)  # asked for: it runs on the CPUs
    check_cluster(cfg, {"CPU": 8.0})  # no GPU in the cluster: the CPU preset is what it is for


def test_the_config_reference_in_docs_is_the_generated_one_and_lists_every_key():
    from rlt_ray.config.reference import DOC, keys, render

    assert DOC.read_text() == render(), "run: python -m rlt_ray.config --write"
    listed = {key for rows in keys().values() for key, *_ in rows}
    assert not [key for rows in keys().values() for key, _, _, help_text in rows if not help_text], "keys with no help"
    cfg = load_config(None, [])
    from omegaconf import OmegaConf

    def leaves(node, prefix=""):
        for k, v in node.items():
            yield from (leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"])
    # section.key for every leaf (a nested section, like resources.learner_placement, is one row)
    assert listed == {".".join(leaf.split(".")[:2]) for leaf in leaves(OmegaConf.to_container(cfg))}


def test_a_preset_path_relative_to_the_repo_is_found_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("configs/demo.yaml").model.teacher == "demo-teacher"
    assert load_config("demo").model.teacher == "demo-teacher"
    with pytest.raises(ConfigError, match="config preset 'configs/nope.yaml' does not exist"):
        load_config("configs/nope.yaml")
