import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cfg():
    from rlt_ray.config import load_config

    return load_config("configs/tiny_cpu.yaml")


@pytest.fixture(scope="session")
def tok():
    from rlt_ray.models.registry import load_tokenizer

    return load_tokenizer("tiny-teacher")


@pytest.fixture(scope="session")
def fmt(cfg, tok):
    from rlt_ray.method.formats import RLTFormat

    return RLTFormat(cfg.format, tok)


@pytest.fixture(scope="session")
def teacher():
    from rlt_ray.models.registry import load_causal_lm

    return load_causal_lm("tiny-teacher").eval()


@pytest.fixture(scope="session")
def student():
    from rlt_ray.models.registry import load_causal_lm

    return load_causal_lm("tiny-student").eval()


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray of the test module's own (never someone else's cluster on the machine)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False)
    yield ray
    ray.shutdown()
