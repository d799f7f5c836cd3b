"""The one config tree: OmegaConf structured dataclasses, YAML presets in configs/, dotted overrides, validated once.

    cfg = load_config("configs/tiny_cpu.yaml", ["grpo.beta=0.02", "run.steps=5"])

Unknown keys, wrong types and bad values raise ConfigError naming the full key.
"""

from __future__ import annotations

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
            path = REPO_ROOT / "configs" / f"{preset}.yaml"
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
    """`[--config PRESET | --config=PRESET | -c PRESET] key=value ...` → (preset, overrides); without one, the
    preset is ``default`` (configs/tiny_cpu.yaml; the demo's scripts pass "demo")."""
    preset: Optional[str] = default
    overrides = []
    it = iter(argv)
    for arg in it:
        if arg in ("--config", "-c"):
            preset = next(it, None)
            if preset is None:
                raise ConfigError("--config needs a preset path or name")
        elif arg.startswith("--config="):
            preset = arg.split("=", 1)[1]
        else:
            overrides.append(arg)
    return preset, overrides


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg)
