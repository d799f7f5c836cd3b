"""Peak memory of a real learner's steady-state step on CPU, for the memory plan's formulas (tests/test_memory.py).

A random-init Qwen2 model of the given shape, fp32, gradient checkpointing on, AdamW: two steps (forward/backward of
the GRPO loss through the learner's own log-prob path (rlt_ray.method.logprobs.token_logprobs) on SEQ tokens, then the
optimizer step). Prints {"peak_bytes": peak RSS - RSS before the model was built, "params": ...} as JSON.
"""
import json
import resource
import sys

import psutil
import torch


def main(hidden: int, layers: int, intermediate: int, vocab: int, seq: int) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlt_ray.method.logprobs import token_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(2)
    before = psutil.Process().memory_info().rss
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                         intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=seq,
                         tie_word_embeddings=False, use_cache=False)
    model = Qwen2ForCausalLM(config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = torch.randint(0, vocab, (1, seq))
    attn = torch.ones_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, seq // 2:] = True  # a completion of half the sequence, as in RL
    for _ in range(2):  # the second step is a learner's steady state: Adam's moments exist during its backward
        logp = token_logprobs(model, ids, attn, mask, 0.7)
        loss = -(logp * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # DeepSpeed keeps its gradient buffers between steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak - before, "params": sum(p.numel() for p in model.parameters())}))


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))
