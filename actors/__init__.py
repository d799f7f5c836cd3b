"""One Ray actor per file: learner.py (DeepSpeed rank + LearnerGroup), rollout.py (vLLM), student.py (scorer)."""

from __future__ import annotations

import os
from typing import Any

# Forwarded from the driver to every actor: caches (no recompiles, no downloads) and offline switches.
FORWARDED_ENV = ("RLT_CACHE", "TORCH_EXTENSIONS_DIR", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                 "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")


def actor_options(cfg: Any, gpus: float | None = None, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """num_cpus / num_gpus / runtime_env for one actor of the run (merged with a submitted job's runtime_env)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra_env or {})
    return {
        "num_cpus": float(cfg.resources.cpus_per_actor),
        "num_gpus": float(cfg.resources.gpus_per_actor if gpus is None else gpus),
        "runtime_env": {"env_vars": env},
    }
