"""Checks only a GPU can make, on one lent CUDA GPU with torch and transformers (no Ray, vLLM or DeepSpeed needed):

    python bench/gpu_check.py [--model Qwen/Qwen2.5-7B-Instruct] [--seqs 4096,16384,32768] [--json FILE]

1. **The memory plan's learner activations** (rlt_ray.memory.learner_rank: "activations" + "logits chunk") against
   what the learner's own forward and backward allocate (rlt_ray.learner_model.PolicyLogprobs over a random-init
   model of the preset's shape, bf16, SDPA attention, micro-batch 1): torch.cuda.max_memory_allocated above the
   parameters and gradients, with gradient checkpointing at each length and without it at the shortest.
2. **The weight sync's learner side on a GPU**: every bucket of the model (rlt_ray.weight_sync's layout, 256 MiB
   buckets) packed as the object-store export packed it before (pack_bucket(..., "cpu"): each tensor copied to
   the host, then into the flat buffer) and as it packs now (pack_to_host: on the GPU, then one copy of the flat
   bucket to pinned host memory), checked to hold the same tensors; and raw copies of one bucket (device -> pinned /
   pageable host, host -> device) for the bound.

Prints one line per figure and writes them as JSON (--json). docs/benchmarks.md ("On a GPU") has the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GIB = 1 << 30


def plan_activations(shape, seq: int, checkpointing: bool) -> float:
    """The plan's own items for one SFT-like learner rank: activations + the logits chunk (bytes)."""
    from rlt_ray.memory import learner_rank

    cfg = SimpleNamespace(
        learner=SimpleNamespace(dtype="bfloat16", zero_stage=0, micro_batch_size=1, offload_optimizer=False,
                                gradient_checkpointing=checkpointing),
        resources=SimpleNamespace(learner_ranks=1), sft=SimpleNamespace(max_seq_tokens=seq),
        grpo=SimpleNamespace(beta=0.0))
    items = dict(learner_rank(cfg, shape, sft=True).items)
    return sum(v for k, v in items.items() if k.startswith(("activations", "logits")))


def build_model(name: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlt_ray.memory import SHIPPED

    config = AutoConfig.for_model(**{k: v for k, v in json.loads(
        (SHIPPED / (name.replace("/", "__") + ".json")).read_text()).items() if k not in ("architectures",)})
    config._attn_implementation = "sdpa"
    config.use_cache = False
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


def activation_peak(model, seq: int, checkpointing: bool) -> dict:
    """Peak bytes allocated above parameters + gradients for one forward and backward of the learner's loss."""
    from rlt_ray.learner_model import PolicyLogprobs

    if checkpointing:
        model.gradient_checkpointing_enable()
    else:
        model.gradient_checkpointing_disable()
    model.train()
    policy = PolicyLogprobs(model)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, seq), device="cuda", generator=gen)
    mask = torch.ones_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    target[:, seq // 2:] = True  # the completion: half the sequence, as a prompt + explanation of equal length

    def step() -> float:
        t = time.perf_counter()
        out = policy(ids, mask, target, 0.7)
        (out.sum() / target.sum()).backward()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    step()  # gradients now exist (a learner keeps them between micro-batches), allocator warm
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    seconds = step()
    peak = torch.cuda.max_memory_allocated() - base
    model.zero_grad(set_to_none=False)
    return {"measured_gib": peak / GIB, "step_s": seconds}


def timed(fn, repeat: int = 3) -> float:
    """Median seconds of ``fn`` (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def sync_export(model) -> dict:
    from rlt_ray.weight_sync import bucket_nbytes, layout_for, pack_bucket, pack_to_host, spec_of, unpack

    params = dict(model.named_parameters())
    layout = layout_for(spec_of(params.items()), 256 << 20)
    size = max(bucket_nbytes(m) for m in layout)
    total = sum(bucket_nbytes(m) for m in layout)
    pageable = torch.empty(size, dtype=torch.uint8)
    pageable.fill_(0)  # touched: no page faults in the timing
    pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True)
    on_gpu = torch.empty(size, dtype=torch.uint8, device="cuda")

    def host_pack():  # what actors.learner.export_weights did before pack_to_host
        for metas in layout:
            pack_bucket(params, metas, "cpu", out=pageable)

    def gpu_pack_then_copy():  # what it does now
        for metas in layout:
            pack_to_host(params, metas, on_gpu, pinned)

    for metas in layout:  # the same tensors either way (not the alignment gaps, never written)
        a = unpack(metas, pack_bucket(params, metas, "cpu", out=pageable))
        b = unpack(metas, pack_to_host(params, metas, on_gpu, pinned))
        if not all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b)):
            raise AssertionError(f"pack_to_host differs from pack_bucket on the bucket of {metas[0][0]}")

    one = on_gpu[:size]
    out = {"buckets": len(layout), "bytes_gib": total / GIB}
    for name, fn, nbytes in (("pack_on_host (before)", host_pack, total), ("pack_to_host (now)", gpu_pack_then_copy,
                                                                           total),
                             ("d2h_pinned", lambda: pinned.copy_(one), size),
                             ("d2h_pageable", lambda: pageable.copy_(one), size),
                             ("h2d_pinned", lambda: one.copy_(pinned), size),
                             ("h2d_pageable", lambda: one.copy_(pageable), size)):
        s = timed(fn, 1 if nbytes == total else 5)
        out[name] = {"seconds": s, "gb_per_s": nbytes / s / 1e9}
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="Qwen/Qwen2.5-7B-Instruct")
    parser.add_argument("--seqs", default="4096,16384,32768")
    parser.add_argument("--json", default=None)
    a = parser.parse_args(argv)
    from rlt_ray.memory import model_shape

    props = torch.cuda.get_device_properties(0)
    result = {"gpu": props.name, "gpu_gib": props.total_memory / GIB, "torch": torch.__version__, "model": a.model}
    print(f"{props.name}, {props.total_memory / GIB:.0f} GiB, torch {torch.__version__}; {a.model} (random init, "
          "bf16, SDPA)", flush=True)
    shape = model_shape(a.model)
    model = build_model(a.model)
    p = sum(t.numel() for t in model.parameters())
    result["params"] = p
    print(f"parameters: {p / 1e9:.2f} B (the plan's shape: {shape.params / 1e9:.2f} B)", flush=True)
    seqs = [int(s) for s in a.seqs.split(",")]
    rows = []
    for seq, ckpt in [(s, True) for s in seqs] + [(seqs[0], False)]:
        try:
            m = activation_peak(model, seq, ckpt)
        except torch.cuda.OutOfMemoryError as exc:
            m = {"measured_gib": None, "error": str(exc).split("\n")[0][:200]}
        torch.cuda.empty_cache()
        row = {"seq": seq, "checkpointing": ckpt, "plan_gib": plan_activations(shape, seq, ckpt) / GIB, **m}
        rows.append(row)
        ratio = f"{row['measured_gib'] / row['plan_gib']:.2f}x the plan" if row["measured_gib"] else row["error"]
        print(f"activations, {seq} tokens, checkpointing {'on ' if ckpt else 'off'}: plan {row['plan_gib']:.2f} GiB, "
              f"measured {row['measured_gib'] or float('nan'):.2f} GiB ({ratio}), step {m.get('step_s', 0):.2f} s",
              flush=True)
    result["activations"] = rows
    model.zero_grad(set_to_none=True)
    torch.cuda.empty_cache()
    sync = sync_export(model)
    result["weight_sync_export"] = sync
    print(f"weight-sync export, {sync['buckets']} buckets, {sync['bytes_gib']:.1f} GiB:", flush=True)
    for k, v in sync.items():
        if isinstance(v, dict):
            print(f"  {k:30} {v['seconds']:8.3f} s  {v['gb_per_s']:8.1f} GB/s", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
