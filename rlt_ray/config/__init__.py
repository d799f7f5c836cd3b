"""The one config tree (the public API of the config): a schema of dataclasses (schema.py), YAML presets in
configs/, dotted overrides (load.py), checks across keys and against the cluster (checks.py, placement.py).

    from rlt_ray.config import load_config
    cfg = load_config("configs/tiny_cpu.yaml", ["grpo.beta=0.02", "run.steps=5"])
"""

from rlt_ray.config.checks import (check_cluster, check_sft_batch, resource_needs, temperatures, trained_model,
                                   trained_model_key, validate)
from rlt_ray.config.load import DEFAULT_PRESET, REPO_ROOT, load_config, split_argv, to_yaml
from rlt_ray.config.schema import RLTConfig
from rlt_ray.errors import ConfigError

__all__ = ["ConfigError", "DEFAULT_PRESET", "REPO_ROOT", "RLTConfig", "check_cluster", "check_sft_batch",
           "load_config", "resource_needs", "split_argv", "temperatures", "to_yaml", "trained_model",
           "trained_model_key", "validate"]
