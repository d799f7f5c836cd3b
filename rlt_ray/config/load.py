"""The one config tree: OmegaConf structured dataclasses, YAML presets in configs/, dotted overrides, validated once.

    cfg = load_config("configs/tiny_cpu.yaml", ["grpo.beta=0.02", "run.steps=5"])

Unknown keys, wrong types and bad values raise ConfigError naming the full key.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rlt_ray.config.checks import validate
from rlt_ray.config.schema import RLTConfig
from rlt_ray.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PRESET = REPO_ROOT / "configs" / "tiny_cpu.yaml"


def _wrap(exc: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).splitlines()[0]
    return ConfigError(f"config key '{key}' ({where}): {msg}")


# keys that were renamed: a config that still sets one is told where it went, not "not in the schema"
RENAMED = {"logging.tensorboard": "'logging.trackers', a list of tensorboard, wandb, mlflow (e.g. logging.trackers=[])"}


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None, job: str = "rl") -> DictConfig:
    """Schema ← preset YAML ← dotted overrides, then validate(). Returns a read-only DictConfig. ``job``: "rl"
    (training, distillation, evaluation, Serve) or "sft" (the SFT jobs, which skip the checks of the RL batch)."""
    cfg = OmegaConf.structured(RLTConfig)
    layers: list[tuple[str, DictConfig]] = []
    if preset is not None:
        path = Path(preset)
        if not path.exists() and (REPO_ROOT / "configs" / f"{preset}.yaml").exists():
            path = REPO_ROOT / "configs" / f"{preset}.yaml"  # a preset's name: "paper_7b"
        elif not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
            path = REPO_ROOT / path  # "configs/paper_7b.yaml" from another folder than the repo's
        if not path.exists():
            raise ConfigError(f"config preset {str(preset)!r} does not exist")
        try:
            layers.append((str(path), OmegaConf.load(path)))
        except Exception as exc:
            raise ConfigError(f"config preset {path}: not valid YAML: {exc}") from exc
    for item in overrides or []:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected key=value, e.g. grpo.beta=0.02")
    if overrides:
        layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
    for where, layer in layers:
        for old, new in RENAMED.items():
            if OmegaConf.select(layer, old, default=None) is not None:
                raise ConfigError(f"{where}: config key '{old}' is now {new}")
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except OmegaConfBaseException as exc:
            raise _wrap(exc, where) from exc
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise _wrap(exc, "resolving") from exc
    validate(cfg, job)
    OmegaConf.set_readonly(cfg, True)
    return cfg


def split_argv(argv: list[str], default: str = str(DEFAULT_PRESET)) -> tuple[Optional[str], list[str]]:
    """`[--config PRESET | --config=PRESET | -c PRESET] [--allow-cpu-preset] key=value ...` → (preset, overrides).
    Without --config the preset is ``default`` (configs/tiny_cpu.yaml, a CPU toy; the demo's scripts pass "demo"),
    and a line on the console says so: a job never trains the toy in silence. --allow-cpu-preset lets a CPU
    config run on a cluster that has GPUs (resources.allow_cpu_preset; refused otherwise, checks.check_cluster)."""
    preset: Optional[str] = None
    overrides = []
    it = iter(argv)
    for arg in it:
        if arg in ("--config", "-c"):
            preset = next(it, None)
            if preset is None:
                raise ConfigError("--config needs a preset path or name")
        elif arg.startswith("--config="):
            preset = arg.split("=", 1)[1]
        elif arg == "--allow-cpu-preset":
            overrides.append("resources.allow_cpu_preset=true")
        else:
            overrides.append(arg)
    if preset is None:
        preset = default
        job = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "rlt-ray"
        print(f"{job}: no --config given: using the preset {preset} (pass --config PRESET, e.g. "
              f"configs/paper_7b.yaml; --help lists the presets)", flush=True)
    return preset, overrides


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
