"""The offline demo (README's first command): what one RLT step sees, on real models, on this machine.

Today it shows the data and formats, samples explanations from the teacher with real vLLM, scores every one with
the RLT reward under the student, and prints the GRPO advantages: everything of an RL step except the update
(which the distributed-training job adds). Defaults: SmolLM2-135M-Instruct (a real pretrained model shipped in a
PyPI wheel) as both teacher and student, reasoning-gym gsm_symbolic questions.

    python jobs/demo.py [--config PRESET] [key=value ...]
"""

from __future__ import annotations

import sys
import time

DEMO_DEFAULTS = [
    "model.teacher=smollm2-135m-instruct",
    "model.student=smollm2-135m-instruct",
    "data.size=16",
    "rollout.n=4",
    "rollout.max_new_tokens=96",
    "run.questions_per_step=2",
]


def main(argv: list[str]) -> int:
    import torch

    from rlt_ray.config import load_config, split_argv
    from rlt_ray.data import DataOrder, load_rows
    from rlt_ray.engine import build_llm, completion_logprobs, sampling_params
    from rlt_ray.formats import RLTFormat
    from rlt_ray.grpo import group_advantages
    from rlt_ray.models import load_causal_lm, load_tokenizer
    from rlt_ray.rewards import RewardSpec
    from rlt_ray.scoring import score_sequences
    from rlt_ray.spans import build_reward_sequence, check_same_vocabulary

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, DEMO_DEFAULTS + overrides)
    t0 = time.time()
    teacher_tok = load_tokenizer(cfg.model.teacher)
    student_tok = load_tokenizer(cfg.model.student)
    check_same_vocabulary(teacher_tok, student_tok)
    teacher_fmt, student_fmt = RLTFormat(cfg.format, teacher_tok), RLTFormat(cfg.format, student_tok)

    rows = load_rows(cfg.data.source, split=cfg.data.split, size=cfg.data.size, seed=cfg.data.seed,
                     max_rows=cfg.data.max_rows, fmt_cfg=cfg.format)
    batch = [rows[i] for i in DataOrder(len(rows), cfg.run.questions_per_step, cfg.run.seed).step_indices(0)]
    print(f"== data: {len(rows)} rows from {cfg.data.source}; step 0 uses rows {[r.id for r in batch]}")
    print("\n== the teacher's RL prompt (the teacher sees the solution, then explains):")
    print(teacher_fmt.teacher_prompt(batch[0])[-400:])

    llm = build_llm(cfg.model.teacher, cfg.rollout, device=cfg.resources.device, dtype=cfg.model.dtype)
    prompts = [teacher_tok(teacher_fmt.teacher_prompt(r), add_special_tokens=False)["input_ids"] for r in batch]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        sampling_params(cfg.rollout, n=cfg.rollout.n, seed=cfg.run.seed))
    seqs, teacher_lp = [], []
    for row, prompt, out in zip(batch, prompts, outs):
        for comp in out.outputs:
            seq = build_reward_sequence(row, prompt, list(comp.token_ids), teacher_fmt, student_fmt)
            a, b = seq.teacher_explanation
            seqs.append(seq)
            # vLLM's processed log-probs are the teacher's at the sampling temperature (reward.teacher_logprobs_from)
            teacher_lp.append(torch.tensor(completion_logprobs(comp))[a - len(prompt): b - len(prompt)])
    student = load_causal_lm(cfg.model.student, cfg.model.dtype).eval()
    parts = score_sequences(student, seqs, teacher_lp, RewardSpec.from_config(cfg.reward), student_tok.pad_token_id,
                            cfg.reward.student_temperature)
    adv = group_advantages(parts["total"], cfg.rollout.n, cfg.grpo.advantage_eps)

    print(f"\n== {len(seqs)} explanations from vLLM, scored by the student (reward = r_ss - r_kl + match):")
    print(f"{'q':>2} {'r_ss':>8} {'r_kl':>8} {'match':>6} {'total':>8} {'adv':>6}  explanation")
    for i, seq in enumerate(seqs):
        snippet = seq.explanation.replace("\n", " ")[:60]
        print(f"{i // cfg.rollout.n:>2} {parts['r_ss'][i]:8.3f} {parts['r_kl'][i]:8.3f} {parts['match'][i]:6.1f} "
              f"{parts['total'][i]:8.3f} {adv[i]:6.2f}  {snippet!r}")
    print(f"\nmean reward {parts['total'].mean():.3f}; closed tags {int((parts['match'] == 0).sum())}/{len(seqs)}; "
          f"{time.time() - t0:.0f}s")
    if not torch.isfinite(parts["total"]).all():
        print("demo: non-finite reward", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
