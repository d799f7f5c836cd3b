"""GPU checks of the memory plan and the reward numerics, needing only torch and transformers (a lent GPU machine
has no vLLM, Ray or DeepSpeed, and no network).

    python scripts/gpu_check.py                          # a random-init Qwen2.5-7B-shaped model, on cuda
    python scripts/gpu_check.py --device cpu --layers 1 --vocab 4096 --dtype float32 --tokens 256  # smoke run

On one GPU it measures, and prints next to the memory plan's numbers (rlt_ray.memory), as one JSON line each:
1. log-prob forward + backward of one sequence with gradient checkpointing at each --tokens length (bf16 weights,
   the learner's own path, rlt_ray.logprobs.token_logprobs): peak memory above the weights;
2. a scorer forward (no grad, no KV cache) at reward.max_batch_tokens: peak above the weights;
3. the weight-sync buffers: packing one bucket at a time (rlt_ray.weight_sync.pack_bucket) vs every bucket at once;
4. bf16 vs fp32 reward error on the same tokens (rlt_ray.rewards.rlt_reward);
5. P2: packed, length-sorted scoring (rlt_ray.scoring.range_logprobs) vs one sequence at a time.
A full 7B model does not fit training state on one GPU; the check keeps --layers of its 28 layers (default 4) and
scales the per-layer activation figures, which is what the plan's formulas are made of.
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


def shape_config(model: str, layers: int, vocab: int | None = None):
    from transformers import Qwen2Config

    data = json.loads((ROOT / "rlt_ray" / "model_configs" / (model.replace("/", "__") + ".json")).read_text())
    data["num_hidden_layers"] = layers
    if vocab:
        data["vocab_size"] = vocab
    data["use_cache"] = False
    return Qwen2Config(**{k: v for k, v in data.items() if k not in ("architectures", "model_type")})


def peak_above(device: str, fn) -> tuple[float, float]:
    """(peak bytes above what was allocated before fn, seconds)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - base), time.perf_counter() - t0
    return float("nan"), time.perf_counter() - t0


def plan_cfg(tokens: int, batch_tokens: int, bucket_mb: int):
    """The parts of the config the plan's formulas read (no omegaconf on a lent GPU machine)."""
    return SimpleNamespace(
        learner=SimpleNamespace(dtype="bfloat16", zero_stage=3, micro_batch_size=1, gradient_checkpointing=True,
                                offload_optimizer=False),
        resources=SimpleNamespace(learner_ranks=4, sync_bucket_mb=bucket_mb, scorer_workers=1),
        rollout=SimpleNamespace(max_prompt_tokens=tokens // 2, max_new_tokens=tokens - tokens // 2),
        reward=SimpleNamespace(max_batch_tokens=batch_tokens), model=SimpleNamespace(dtype="bfloat16"),
        grpo=SimpleNamespace(beta=0.04))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen/Qwen2.5-7B-Instruct", help="a shape shipped in rlt_ray/model_configs")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab", type=int, default=None, help="a smaller vocabulary, for a smoke run on CPU")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                   help="the weights' dtype (float32 for a smoke run on a CPU without bf16 kernels)")
    a = p.parse_args(argv)
    from transformers import Qwen2ForCausalLM

    from rlt_ray.logprobs import token_logprobs
    from rlt_ray.memory import LOGIT_CHUNK, Shape, _shape_from_config
    from rlt_ray.rewards import RewardSpec, left_align, rlt_reward
    from rlt_ray.scoring import range_logprobs
    from rlt_ray.weight_sync import BufferMeter, layout_for, pack_bucket, spec_of

    dev, dtype = a.device, getattr(torch, a.dtype)
    config = shape_config(a.model, a.layers, a.vocab)
    shape: Shape = _shape_from_config(config.to_dict())
    full = _shape_from_config(json.loads((ROOT / "rlt_ray" / "model_configs" /
                                          (a.model.replace("/", "__") + ".json")).read_text()))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dev, dtype)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    device_info = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    print(json.dumps({"check": "setup", "device": device_info, "model": a.model, "layers": a.layers,
                      "params": shape.params, "torch": torch.__version__}), flush=True)

    w = 2 if dtype == torch.bfloat16 else 4
    for n in a.tokens:  # 1. learner activations with checkpointing
        ids = torch.randint(0, config.vocab_size, (1, n), device=dev)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, n // 2:] = True

        def step():
            model.train()
            logp = token_logprobs(model, ids, torch.ones_like(ids), mask, 0.7)
            (-(logp * mask).sum() / mask.sum()).backward()
            model.zero_grad(set_to_none=True)
        measured, seconds = peak_above(dev, step)
        per_layer_saved = n * shape.hidden * w
        planned_layers = shape.layers * per_layer_saved + n * shape.layer_activation_bytes_per_token(w)
        planned = planned_layers + 3 * LOGIT_CHUNK * shape.vocab * 4 + shape.params * w  # + this model's gradients
        print(json.dumps({"check": "learner_activations", "tokens": n, "measured_gib": measured / GIB,
                          "planned_gib": planned / GIB, "seconds": seconds,
                          "planned_full_model_activations_gib": (full.layers * per_layer_saved + n *
                                                                 full.layer_activation_bytes_per_token(w)) / GIB}),
              flush=True)

    model.eval()  # 2. scorer forward at the planned batch tokens
    rows = max(2, a.batch_tokens // 512)
    seqs = [torch.randint(0, config.vocab_size, (512,)).tolist() for _ in range(rows)]
    ranges = [[(256, 512)] for _ in seqs]
    measured, seconds = peak_above(dev, lambda: range_logprobs(model, seqs, ranges, 0, 0.7, a.batch_tokens, dev))
    planned = a.batch_tokens * (shape.layer_activation_bytes_per_token(w) + 2 * shape.hidden * w) + \
        2 * LOGIT_CHUNK * shape.vocab * 4
    print(json.dumps({"check": "scorer_batch", "batch_tokens": a.batch_tokens, "measured_gib": measured / GIB,
                      "planned_gib": planned / GIB, "seconds": seconds}), flush=True)
    _, packed_s = peak_above(dev, lambda: range_logprobs(model, seqs, ranges, 0, 0.7, a.batch_tokens, dev))
    _, single_s = peak_above(dev, lambda: [range_logprobs(model, [s], [r], 0, 0.7, a.batch_tokens, dev)
                                           for s, r in zip(seqs, ranges)])
    print(json.dumps({"check": "P2", "sequences": rows, "packed_s": packed_s, "one_at_a_time_s": single_s,
                      "speedup": single_s / packed_s}), flush=True)

    named = dict(model.named_parameters())  # 3. sync buffers: one bucket at a time vs all at once
    layout = layout_for(spec_of(named.items(), a.dtype), a.bucket_mb << 20)
    meter = BufferMeter()

    def per_bucket():
        for metas in layout:
            meter.track(pack_bucket(named, metas, dev))
    measured_one, _ = peak_above(dev, per_bucket)
    measured_all, _ = peak_above(dev, lambda: [pack_bucket(named, m, dev) for m in layout])
    print(json.dumps({"check": "sync_buffers", "buckets": len(layout), "per_bucket_gib": measured_one / GIB,
                      "all_at_once_gib": measured_all / GIB, "meter_peak_gib": meter.peak / GIB,
                      "planned_gib": min(max(a.bucket_mb << 20, max(shape.vocab, shape.intermediate) *
                                         shape.hidden * w), shape.params * w) / GIB}), flush=True)

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
    print(json.dumps({"check": "bf16_vs_fp32_reward", "max_abs_error": err,
                      "max_abs_logprob_error": (lp16 - lp32).abs().max().item()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
