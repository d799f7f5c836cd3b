"""P2: student scoring, batched and packed by length (rlt_ray.method.scoring) ÷ the reference's one-sequence-at-a-time
loop, on the same RewardSequences in one run; the rewards must be equal (fp32).

    python bench/scoring_batched_vs_loop.py [--model tiny-student] [--sequences 64] [--max-new 128] [--device cpu] [--rounds 5]

The two sides run in interleaved rounds (bench/common.py): min and median of each, the ratios of the minima and
of the medians, and a last JSON line with the machine. Target (issue 7): speed-up >= 5x with max |reward difference| <= 1e-4.
"""

from __future__ import annotations

import argparse
import random
import sys

from common import emit, interleaved, ratios


def make_sequences(model: str, count: int, max_new: int, seed: int):
    """Real RewardSequences: gsm_symbolic rows, teacher prompts, completions of random length made of the
    row's own trace (so explanations are text-like) with a close tag on most of them."""
    import torch

    from rlt_ray.config import load_config
    from rlt_ray.data.sources import reasoning_gym_rows
    from rlt_ray.method.formats import RLTFormat
    from rlt_ray.models.registry import load_tokenizer
    from rlt_ray.method.spans import build_reward_sequence

    cfg = load_config(None, [])
    tok = load_tokenizer(model)
    fmt = RLTFormat(cfg.format, tok)
    rng = random.Random(seed)
    rows = reasoning_gym_rows("gsm_symbolic", count, seed)
    seqs, teacher_lp = [], []
    for row in rows:
        prompt = tok(fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
        body = tok(fmt.explanation_from_trace(row.reasoning_trace), add_special_tokens=False)["input_ids"]
        body = body[: rng.randint(8, max_new)]
        tail = tok(fmt.explanation[1] + tok.eos_token, add_special_tokens=False)["input_ids"] if rng.random() < 0.8 else []
        seq = build_reward_sequence(row, prompt, body + tail, fmt, fmt)
        seqs.append(seq)
        a, b = seq.teacher_explanation
        teacher_lp.append(-torch.rand(b - a) * 3)
    return seqs, teacher_lp, tok.pad_token_id


def main(argv: list[str]) -> int:
    import torch

    from rlt_ray.models.registry import load_causal_lm
    from rlt_ray.method.rewards import RewardSpec
    from rlt_ray.method.scoring import score_sequences

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-student")
    p.add_argument("--sequences", type=int, default=64)
    p.add_argument("--max-new", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    seqs, teacher_lp, pad = make_sequences(a.model, a.sequences, a.max_new, a.seed)
    student = load_causal_lm(a.model, "float32", a.device).eval()
    spec = RewardSpec()
    score_sequences(student, seqs[:2], teacher_lp[:2], spec, pad, 0.7, device=a.device)  # warm-up

    out = {}

    def batched() -> None:
        out["batched"] = score_sequences(student, seqs, teacher_lp, spec, pad, 0.7, device=a.device)["total"]

    def one_at_a_time() -> None:
        out["single"] = torch.cat([score_sequences(student, [s], [t], spec, pad, 0.7, device=a.device)["total"]
                                   for s, t in zip(seqs, teacher_lp)])

    times = interleaved({"batched_packed": batched, "one_at_a_time": one_at_a_time}, a.rounds)
    r = ratios(times, "one_at_a_time", "batched_packed")
    diff = float((out["batched"] - out["single"]).abs().max())
    tokens = sum(len(s.student_ids) for s in seqs)
    print(f"P2 scoring {len(seqs)} sequences ({tokens} student tokens, {a.model}): one at a time min "
          f"{times['one_at_a_time']['min_s']:.2f}s, batched+packed min {times['batched_packed']['min_s']:.2f}s -> "
          f"{r['ratio_of_min']:.2f}x (min) / {r['ratio_of_median']:.2f}x (median) / "
          f"{r['median_of_round_ratios']:.2f}x (median of the rounds' ratios); max |reward diff| {diff:.2e}",
          file=sys.stderr)
    emit({"bench": "P2", "model": a.model, "sequences": len(seqs), "student_tokens": tokens, "rounds": a.rounds,
          **times, "speedup": r, "max_reward_diff": diff, "target_speedup": 5.0,
          "met": r["ratio_of_min"] >= 5.0 and diff <= 1e-4})
    return 0 if diff <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
