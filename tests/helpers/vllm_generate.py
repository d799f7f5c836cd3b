"""Run in a fresh process (vLLM engines are per process): generate from a model with vLLM on this machine's
device and compare the processed log-probs with rlt_ray.method.logprobs on the HF model. Prints one JSON line."""
import json
import sys

import torch


def main(model_name: str) -> None:
    from rlt_ray.config import load_config
    from rlt_ray.models.vllm_engine import build_llm, completion_logprobs, sampling_params
    from rlt_ray.method.formats import RLTFormat, Row
    from rlt_ray.method.scoring import range_logprobs
    from rlt_ray.models.registry import load_causal_lm, load_tokenizer

    cfg = load_config(None, [f"model.teacher={model_name}", "rollout.max_new_tokens=24", "rollout.max_prompt_tokens=512"])
    tok = load_tokenizer(model_name)
    fmt = RLTFormat(cfg.format, tok)
    row = Row(question="What is 2+3?", solution="The answer is \\boxed{5}.")
    prompt_ids = tok(fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
    llm = build_llm(model_name, cfg.rollout, device="cpu")
    out = llm.generate([{"prompt_token_ids": prompt_ids}], sampling_params(cfg.rollout, n=2, seed=0))[0]
    hf = load_causal_lm(model_name).eval()
    diffs, texts = [], []
    for comp in out.outputs:
        vllm_lp = torch.tensor(completion_logprobs(comp))
        ids = prompt_ids + list(comp.token_ids)
        ((hf_lp,),) = range_logprobs(hf, [ids], [[(len(prompt_ids), len(ids))]], tok.pad_token_id,
                                     temperature=cfg.rollout.temperature)
        diffs.append(float((vllm_lp - hf_lp).abs().max()))
        texts.append(comp.text)
    print(json.dumps({"n": len(out.outputs), "tokens": [len(c.token_ids) for c in out.outputs],
                      "max_logprob_diff": max(diffs), "texts": texts}))


if __name__ == "__main__":
    main(sys.argv[1])
