"""GPU checks of the memory plan, the weight sync's learner side and the reward numerics, needing only torch and
transformers (a lent GPU machine has no vLLM, Ray or DeepSpeed, and no network).

    python scripts/gpu_check.py [--json FILE]            # a random-init Qwen2.5-7B-shaped model, every layer, on cuda
    python scripts/gpu_check.py --device cpu --smoke --dtype float32 --tokens 128 --batch-tokens 512  # smoke run

On one GPU it measures, and prints next to the memory plan's numbers (rlt_ray.memory), as one JSON line each:
1. the learner's log-prob forward + backward of one sequence (the learner's own path, rlt_ray.models.deepspeed_engine.
   PolicyLogprobs) at each --tokens length with gradient checkpointing, and at the first without: peak memory
   above the weights and their gradients (a learner keeps both), against the plan's learner_rank items
   (activations + logits chunk);
2. a scorer forward (no grad, no KV cache) at reward.max_batch_tokens: peak above the weights, against the plan's
   scorer items; and P2: packed, length-sorted scoring (rlt_ray.method.scoring.range_logprobs) vs one at a time;
3. the weight sync's learner side: packing one bucket at a time (rlt_ray.infra.weight_sync.pack_bucket) vs every bucket
   at once; the object-store export as it packed before (each tensor to the host on its own) and as it packs now
   (pack_to_host: on the device, then one copy per bucket to pinned memory), checked to hold the same tensors;
   raw copies of one bucket between device and pinned / pageable host memory;
4. bf16 vs fp32 reward error on the same tokens (rlt_ray.method.rewards.rlt_reward).
The 7B model's weights and gradients (30 GB) fit one H200 with room for 32k tokens; --layers keeps fewer of its
layers on a smaller GPU (the plan's numbers are then for the model as built). docs/lab-notes/benchmarks-record.md ("On a GPU") has
the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GIB = 1 << 30


SMOKE = {"num_hidden_layers": 1, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 4096, "bos_token_id": 0, "eos_token_id": 1}  # --smoke's shape


def shape_config(model: str, layers: int | None = None, smoke: bool = False):
    from transformers import Qwen2Config

    data = json.loads((ROOT / "rlt_ray" / "model_configs" / (model.replace("/", "__") + ".json")).read_text())
    data.update(SMOKE if smoke else {})
    if layers:
        data["num_hidden_layers"] = layers
    data["use_cache"] = False
    return Qwen2Config(**{k: v for k, v in data.items() if k not in ("architectures", "model_type")})


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peak_above(device: str, fn) -> tuple[float, float]:
    """(peak bytes above what was allocated before fn, seconds); nan bytes on CPU (no allocator statistics)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    seconds = time.perf_counter() - t0
    if device == "cuda":
        return float(torch.cuda.max_memory_allocated() - base), seconds
    return float("nan"), seconds


def timed(device: str, fn, repeat: int) -> float:
    """The median seconds of ``repeat`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        synchronize(device)
        t = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def plan_cfg(tokens: int, batch_tokens: int, bucket_mb: int, checkpointing: bool, dtype: str):
    """The parts of the config the plan's formulas read (no omegaconf on a lent GPU machine): one learner rank
    holding the whole model (the check's own layout), the paper preset's scorer batch."""
    return SimpleNamespace(
        learner=SimpleNamespace(dtype=dtype, zero_stage=0, micro_batch_size=1, gradient_checkpointing=checkpointing,
                                offload_optimizer=False),
        resources=SimpleNamespace(learner_ranks=1, sync_bucket_mb=bucket_mb, scorer_workers=1),
        rollout=SimpleNamespace(max_prompt_tokens=tokens // 2, max_new_tokens=tokens - tokens // 2),
        reward=SimpleNamespace(max_batch_tokens=batch_tokens), model=SimpleNamespace(dtype=dtype),
        grpo=SimpleNamespace(beta=0.0), sft=SimpleNamespace(max_seq_tokens=tokens))


def planned(device, prefixes: tuple[str, ...]) -> float:
    return sum(v for name, v in device.items if name.startswith(prefixes))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-7B-Instruct", help="a shape shipped in rlt_ray/model_configs")
    p.add_argument("--layers", type=int, default=None, help="keep this many layers (default: all)")
    p.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384, 32768])
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="a one-layer model of hidden size 256, for a run on CPU")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="the weights' dtype (float32 for a smoke run on a CPU without bf16 kernels)")
    p.add_argument("--json", default=None, help="also write every line's figures to this file")
    a = p.parse_args(argv)
    from transformers import Qwen2ForCausalLM

    from rlt_ray.models.deepspeed_engine import PolicyLogprobs
    from rlt_ray.method.logprobs import token_logprobs
    from rlt_ray.memory import Shape, _shape_from_config, learner_rank, scorer, sync_bucket_bytes
    from rlt_ray.method.rewards import RewardSpec, left_align, rlt_reward
    from rlt_ray.method.scoring import range_logprobs
    from rlt_ray.infra.weight_sync import BufferMeter, bucket_nbytes, layout_for, pack_bucket, pack_to_host, spec_of, unpack

    dev, dtype = a.device, getattr(torch, a.dtype)
    config = shape_config(a.model, a.layers, a.smoke)
    config._attn_implementation = "sdpa"
    shape: Shape = _shape_from_config(config.to_dict())
    torch.manual_seed(0)
    with torch.device(dev):  # built where it runs: a 7B model's fp32 init on the host would take minutes
        model = Qwen2ForCausalLM(config).to(dtype)
    results: list[dict] = []

    def report(line: dict) -> None:
        results.append(line)
        print(json.dumps(line), flush=True)

    report({"check": "setup", "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "model": a.model,
            "layers": shape.layers, "params": shape.params, "torch": torch.__version__})

    # 1. learner activations: a learner keeps its weights and their gradients, so the peak is taken above both
    policy = PolicyLogprobs(model)
    model.train()
    for n, checkpointing in [(n, True) for n in a.tokens] + [(a.tokens[0], False)]:
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        ids = torch.randint(0, config.vocab_size, (1, n), device=dev)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, n // 2:] = True  # the completion: half the sequence

        def step():
            logp = policy(ids, torch.ones_like(ids), mask, 0.7)
            (-(logp * mask).sum() / mask.sum()).backward()
        plan = planned(learner_rank(plan_cfg(n, a.batch_tokens, a.bucket_mb, checkpointing, a.dtype), shape, sft=True),
                       ("activations", "logits"))
        try:
            step()  # the gradients now exist, as in a learner between micro-batches
            measured, seconds = peak_above(dev, step)
        except torch.cuda.OutOfMemoryError as exc:
            measured, seconds = float("nan"), float("nan")
            print(f"out of memory at {n} tokens, checkpointing {checkpointing}: {str(exc)[:200]}", flush=True)
        model.zero_grad(set_to_none=False)
        if dev == "cuda":
            torch.cuda.empty_cache()
        report({"check": "learner_activations", "tokens": n, "checkpointing": checkpointing,
                "measured_gib": measured / GIB, "planned_gib": plan / GIB, "measured_over_plan": measured / plan,
                "seconds": seconds})
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_disable()

    model.eval()  # 2. scorer forward at the planned batch tokens, and P2
    rows = max(2, a.batch_tokens // 512)
    seqs = [torch.randint(0, config.vocab_size, (512,)).tolist() for _ in range(rows)]
    ranges = [[(256, 512)] for _ in seqs]
    measured, seconds = peak_above(dev, lambda: range_logprobs(model, seqs, ranges, 0, 0.7, a.batch_tokens, dev))
    plan = planned(scorer(plan_cfg(512, a.batch_tokens, a.bucket_mb, True, a.dtype), shape), ("forward", "logits"))
    report({"check": "scorer_batch", "batch_tokens": a.batch_tokens, "measured_gib": measured / GIB,
            "planned_gib": plan / GIB, "measured_over_plan": measured / plan, "seconds": seconds})
    packed_s = timed(dev, lambda: range_logprobs(model, seqs, ranges, 0, 0.7, a.batch_tokens, dev), 3)
    single_s = timed(dev, lambda: [range_logprobs(model, [s], [r], 0, 0.7, a.batch_tokens, dev)
                                   for s, r in zip(seqs, ranges)], 3)
    report({"check": "P2", "sequences": rows, "packed_s": packed_s, "one_at_a_time_s": single_s,
            "speedup": single_s / packed_s})

    named = dict(model.named_parameters())  # 3. the weight sync's learner side
    layout = layout_for(spec_of(named.items(), a.dtype), a.bucket_mb << 20)
    meter = BufferMeter()

    def per_bucket():
        for metas in layout:
            meter.track(pack_bucket(named, metas, dev))
    measured_one, _ = peak_above(dev, per_bucket)
    measured_all, _ = peak_above(dev, lambda: [pack_bucket(named, m, dev) for m in layout])
    report({"check": "sync_buffers", "buckets": len(layout), "per_bucket_gib": measured_one / GIB,
            "all_at_once_gib": measured_all / GIB, "meter_peak_gib": meter.peak / GIB,
            "planned_gib": sync_bucket_bytes(plan_cfg(a.tokens[0], a.batch_tokens, a.bucket_mb, True, a.dtype),
                                             shape) / GIB})
    size = max(bucket_nbytes(m) for m in layout)
    total = sum(bucket_nbytes(m) for m in layout)
    pageable = torch.zeros(size, dtype=torch.uint8)  # touched: no page faults in the timings
    on_device = torch.empty(size, dtype=torch.uint8, device=dev)
    pinned = torch.empty(size, dtype=torch.uint8, pin_memory=True) if dev == "cuda" else None
    for metas in layout:  # the same tensors either way (not the alignment gaps, never written)
        before = unpack(metas, pack_bucket(named, metas, "cpu", out=pageable))
        now = unpack(metas, pack_to_host(named, metas, on_device, pinned))
        if not all(torch.equal(x, y) for (_, x), (_, y) in zip(before, now)):
            raise AssertionError(f"pack_to_host packs other tensors than pack_bucket (bucket of {metas[0][0]})")
    export = {"check": "sync_export", "buckets": len(layout), "gib": total / GIB}
    for name, fn in (("before", lambda: [pack_bucket(named, m, "cpu", out=pageable) for m in layout]),
                     ("now", lambda: [pack_to_host(named, m, on_device, pinned) for m in layout])):
        export[f"{name}_s"] = timed(dev, fn, 1)
        export[f"{name}_gb_per_s"] = total / export[f"{name}_s"] / 1e9
    if dev == "cuda":  # the bound: one bucket's copy each way
        bucket = on_device[:size]
        for name, fn in (("d2h_pinned", lambda: pinned.copy_(bucket)),
                         ("d2h_pageable", lambda: pageable.copy_(bucket)),
                         ("h2d_pinned", lambda: bucket.copy_(pinned)),
                         ("h2d_pageable", lambda: bucket.copy_(pageable))):
            export[f"{name}_gb_per_s"] = size / timed(dev, fn, 5) / 1e9
    report(export)

    # 4. bf16 vs fp32 reward on the same tokens: the numerics of the reward's inputs
    ids = torch.randint(0, config.vocab_size, (4, 2048), device=dev)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 1024:1536] = True
    sol = torch.zeros_like(mask)
    sol[:, 1536:] = True
    with torch.no_grad():
        lp16 = token_logprobs(model, ids, torch.ones_like(ids), mask | sol, 0.7)
        lp32 = token_logprobs(model.float(), ids, torch.ones_like(ids), mask | sol, 0.7)

    def reward(lp):
        s, sm = left_align([lp[i][sol[i]].cpu() for i in range(4)])
        e, em = left_align([lp[i][mask[i]].cpu() for i in range(4)])
        return rlt_reward(RewardSpec(), s, sm, e, e * 0.9, em, torch.ones(4, dtype=torch.bool))["total"]
    err = (reward(lp16) - reward(lp32)).abs().max().item()
    report({"check": "bf16_vs_fp32_reward", "max_abs_error": err,
            "max_abs_logprob_error": (lp16 - lp32).abs().max().item()})
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
