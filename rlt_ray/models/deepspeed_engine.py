"""The one builder of the DeepSpeed model that learns: the RL learner ranks (actors.learner) and Ray Train's SFT
workers (actors/sft_train.py) both call ``build_engine``, and save HF folders with ``save_hf``.

One code path for CPU (gloo) and GPU (nccl): ``resources.device`` and ``resources.backend`` decide. The process
group is the caller's when it already exists (Ray Train sets one up), else DeepSpeed opens it over TCP.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence

import torch


class PolicyLogprobs(torch.nn.Module):
    """The HF causal LM behind one forward that returns token log-probs, so the DeepSpeed engine's forward
    (and ZeRO-3's parameter gathering) wraps exactly what the loss needs."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, target_mask, temperature: float, packed: bool = False,
                chunks: int | None = None):
        from rlt_ray.method.logprobs import token_logprobs

        return token_logprobs(self.model, input_ids, attention_mask, target_mask, temperature, packed=packed,
                              chunks=chunks)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return f


def learner_device(cfg: Any) -> torch.device:
    if cfg.resources.device == "cuda":
        torch.cuda.set_device(0)  # Ray gives each rank its own GPU (CUDA_VISIBLE_DEVICES)
        return torch.device("cuda", 0)
    return torch.device("cpu")


def init_distributed(cfg: Any, rank: int, world: int, master_addr: Optional[str] = None,
                     master_port: Optional[int] = None) -> None:
    """The process group: DeepSpeed adopts one that exists (Ray Train's), or opens one at master_addr:port."""
    import deepspeed

    if torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=cfg.resources.backend, auto_mpi_discovery=False)
        return
    deepspeed.init_distributed(dist_backend=cfg.resources.backend, auto_mpi_discovery=False,
                               init_method=f"tcp://{master_addr}:{master_port}", rank=rank, world_size=world)


def build_engine(cfg: Any, model_name: str, world: int, batch_size: Optional[int] = None,
                 total_steps: Optional[int] = None) -> tuple[Any, Any]:
    """The policy as a DeepSpeed engine (ZeRO stage, dtype, clipping, accumulation from ``learner``), with AdamW
    and the learning-rate schedule over ``total_steps`` optimizer steps; returns (engine, zero3_init): keep the
    second alive as long as models are built under ZeRO-3 (transformers reads it)."""
    import deepspeed

    from rlt_ray.models.registry import load_causal_lm

    lc = cfg.learner
    ds_config = deepspeed_config(cfg, world, batch_size)
    zero3_init = None
    if lc.zero_stage == 3:
        # transformers builds models under zero.Init while this object lives: each rank holds 1/N of the
        # policy (and of the reference) from the start, never a full copy (the memory plan counts on it)
        from transformers.integrations import HfDeepSpeedConfig

        zero3_init = HfDeepSpeedConfig(ds_config)
    # DeepSpeed casts to learner.dtype and keeps the fp32 master; under zero.Init the partitions stay in place
    model = load_causal_lm(model_name, "float32", None if lc.zero_stage == 3 else "cpu",
                           cfg.model.attention)
    if lc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=tuple(lc.adam_betas), eps=lc.adam_eps,
                                  weight_decay=lc.weight_decay)
    total = max(1, total_steps or cfg.run.steps * cfg.grpo.updates_per_batch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(lc.lr_schedule, int(lc.warmup_ratio * total),
                                                                       total))
    engine, _, _, _ = deepspeed.initialize(model=PolicyLogprobs(model), optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    return engine, zero3_init


def build_reference(cfg: Any, name: str, world: int, device: torch.device) -> torch.nn.Module:
    """The frozen reference model: a ZeRO-3 inference engine (1/N per rank) under ZeRO-3, else a full copy."""
    import deepspeed

    from rlt_ray.models.registry import load_causal_lm

    lc = cfg.learner
    if lc.zero_stage == 3:
        # gathered layer by layer in forward
        ref = load_causal_lm(name, "float32", None, cfg.model.attention).eval().requires_grad_(False)
        return deepspeed.initialize(model=ref, config=deepspeed_config(cfg, world))[0].module
    return load_causal_lm(name, lc.dtype, str(device), cfg.model.attention).eval().requires_grad_(False)


def gathered(params: Sequence[torch.nn.Parameter], zero_stage: int):
    """Full parameters on every rank for the duration of the block (ZeRO-3 only; all ranks must enter)."""
    if zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
    return nullcontext()


def full_state(module: torch.nn.Module, rank: int, zero_stage: int,
               dtype: Optional[torch.dtype] = None) -> Optional[dict[str, torch.Tensor]]:
    """``module``'s full parameters on rank 0 (CPU, in ``dtype``), gathered one parameter at a time under
    ZeRO-3, never the whole model at once; every rank must call this. None on the other ranks."""
    state = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        with gathered([p], zero_stage):
            if rank == 0:
                state[name] = p.detach().to("cpu", dtype).clone()
    return state if rank == 0 else None


def rng_file(folder: Path, rank: int) -> Path:
    return folder / f"rng_rank{rank}.pt"


def save_rng(folder: Path, rank: int) -> None:
    """This rank's RNG states (torch's, and CUDA's on a GPU) into a checkpoint folder: exact resume."""
    torch.save({"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}, rng_file(folder, rank))


def load_rng(folder: Path, rank: int) -> None:
    rng = torch.load(rng_file(folder, rank), weights_only=False)
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])


def save_hf(cfg: Any, model: torch.nn.Module, tokenizer: Any, path: str, rank: int) -> None:
    """The model in HF format (config, safetensors in model.dtype, tokenizer); loads in transformers and vLLM.
    Every rank must call this."""
    from rlt_ray.infra.weight_sync import DTYPES

    state = full_state(model, rank, cfg.learner.zero_stage, DTYPES[cfg.model.dtype])
    if rank == 0:
        model.save_pretrained(path, state_dict=state)
        tokenizer.save_pretrained(path)
    torch.distributed.barrier()


def deepspeed_config(cfg: Any, world: int, batch: Optional[int] = None) -> dict[str, Any]:
    """The DeepSpeed config of the learner group. One optimizer step per batch (RL: questions_per_step x n;
    SFT: sft.batch_size): gradient accumulation over every micro-batch of the rank's shard."""
    lc = cfg.learner
    batch = cfg.run.questions_per_step * cfg.rollout.n if batch is None else int(batch)
    gas = batch // (world * lc.micro_batch_size)
    zero: dict[str, Any] = {"stage": int(lc.zero_stage)}
    if lc.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": batch,
        "train_micro_batch_size_per_gpu": int(lc.micro_batch_size),
        "gradient_accumulation_steps": gas,
        "gradient_clipping": float(lc.max_grad_norm),
        "zero_optimization": zero,
        "bf16": {"enabled": lc.dtype == "bfloat16"},
        "fp16": {"enabled": lc.dtype == "float16"},
        # torch.optim.AdamW as the client optimizer: no DeepSpeed op to compile, works with every stage
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
