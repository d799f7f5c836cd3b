"""The demo's task family: chained sums of single digits, with R1-like reference traces generated in code.

    python -m rlt_ray.data.demo_task OUT_DIR [--train N] [--test N] [--seed S]

writes OUT_DIR/train.jsonl (question, solution, reasoning_trace), OUT_DIR/train_answer_only.jsonl (no trace: the
student SFT then learns question -> solution) and OUT_DIR/test.jsonl (held-out questions, disjoint from train).

Why this task: a 4-layer model trained from scratch on 2 CPU cores learns it in minutes, a program checks it, and a
chain of partial sums ("3+5=8. 8+8=16. ...") makes the answer much easier than adding four digits at once,
so explanations matter. The reference traces play R1's part: always correct, but long-winded and oddly ordered
(an opener, an irrelevant detour, the terms added in a shuffled order, a re-check), so that a better explanation
exists for an RL teacher to find.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TERMS = 4
OPENERS = ("Okay, let me add these up.", "Alright, I need the total.", "Hmm, let me think about this sum.",
           "Let me work this out carefully.", "So we want the sum of the numbers.")
DETOURS = ("Hmm, wait.", "Actually, let me redo that.", "Wait, let me start again.")
CHECKS = ("Let me check: {q} = {a}.", "Double-checking, {q} = {a}. Yes.")
CLOSERS = ("So the answer is {a}.", "That gives {a}.", "Therefore the total is {a}.")


def question_text(terms: list[int]) -> str:
    return "What is " + "+".join(map(str, terms)) + "?"


def chain(terms: list[int]) -> str:
    """The partial sums in the given order: '3+5=8. 8+8=16. 16+2=18.' (no spaces around the digits: the demo
    tokenizer makes every digit a token, and a space would be one more)"""
    total, steps = terms[0], []
    for t in terms[1:]:
        steps.append(f"{total}+{t}={total + t}.")
        total += t
    return " ".join(steps)


def reference_trace(terms: list[int], rng: random.Random) -> str:
    """Correct but long-winded: an opener, sometimes a detour, the terms in a shuffled order (in the question's
    order 40 % of the time), sometimes a re-check, a closer."""
    answer, q = sum(terms), "+".join(map(str, terms))
    parts = [rng.choice(OPENERS)]
    if rng.random() < 0.5:
        i, j = rng.sample(range(len(terms)), 2)
        parts += [f"{terms[i]}+{terms[j]}={terms[i] + terms[j]}.", rng.choice(DETOURS)]
    order = list(terms)
    if rng.random() >= 0.4:
        rng.shuffle(order)
    parts.append(chain(order))
    if rng.random() < 0.5:
        parts.append(rng.choice(CHECKS).format(q=q, a=answer))
    parts.append(rng.choice(CLOSERS).format(a=answer))
    return " ".join(parts)


def make_rows(n: int, seed: int, exclude: set[tuple[int, ...]] = frozenset(), terms: int = TERMS) -> list[dict]:
    """n distinct questions of ``terms`` digits (none in ``exclude``), each with its solution and one reference
    trace. The demo trains on 4 terms; 5 is its transfer task (docs/demo.md), which the teachers never see."""
    count = terms
    rng, seen, rows = random.Random(seed), set(exclude), []
    if n > 9 ** count - len(seen):
        raise ValueError(f"demo task: only {9 ** count - len(seen)} distinct questions are left, asked for {n}")
    while len(rows) < n:
        terms = tuple(rng.randint(1, 9) for _ in range(count))
        if terms in seen:
            continue
        seen.add(terms)
        rows.append({"id": "sum-" + "".join(map(str, terms)), "question": question_text(list(terms)),
                     "solution": str(sum(terms)), "reasoning_trace": reference_trace(list(terms), rng)})
    return rows


EQUATION = r"(\d+)\+(\d+)=(\d+)"


def explanation_features(question: str, solution: str, text: str) -> dict[str, float]:
    """What a student can learn from one explanation of a chained sum (docs/lab-notes/demo-runs.md, "Why (d) wins"): whether
    the last number is the solution, every step is true, the solution appears at all, the first step adds the
    question's first two terms (its order), every term a step brings in is one of the question's, whether every
    step goes on from the previous step's result (a chain, no detour), its steps and words."""
    import re

    terms = [int(t) for t in re.findall(r"\d+", question)]
    numbers = re.findall(r"\d+", text)
    steps = [tuple(int(x) for x in m) for m in re.findall(EQUATION, text)]
    # the terms each step brings in: both operands of the first, the second of a step that goes on from the
    # previous step's result (a chain), both of any other step (a detour or a restart)
    chained_steps = [later[0] == earlier[2] for earlier, later in zip(steps, steps[1:])]
    brought = list(steps[0][:2]) if steps else []
    for on, step in zip(chained_steps, steps[1:]):
        brought += [step[1]] if on else list(step[:2])
    return {
        "answer_last": float(bool(numbers) and numbers[-1] == solution),
        "answer_anywhere": float(solution in numbers),
        "steps_right": float(bool(steps) and all(a + b == c for a, b, c in steps)),
        "any_step_right": float(any(a + b == c for a, b, c in steps)),
        "question_order": float(bool(steps) and steps[0][:2] == tuple(terms[:2])),
        "terms_from_question": float(bool(steps) and all(x in terms for x in brought)),
        "chained": float(len(steps) >= 2 and all(chained_steps)),
        "steps": float(len(steps)),
        "words": float(len(text.split())),
    }


def describe_explanations(rows: list[dict]) -> dict[str, float]:
    """The mean of each feature over distilled rows (question, solution, explanation), and how alike the rows
    are: the share of the most common opening (the text before the first step) and of the most common closing,
    and of the rows whose whole explanation was also written for another question (``shared``: copies that do
    not depend on the question, docs/lab-notes/demo-runs.md run 24)."""
    import re
    from collections import Counter

    from rlt_ray.method.hack_watch import shared_explanation_fraction

    if not rows:
        return {}
    feats = [explanation_features(r["question"], r["solution"], r["explanation"]) for r in rows]
    out = {k: sum(f[k] for f in feats) / len(feats) for k in feats[0]}
    openers = Counter(re.split(r"\d", r["explanation"].strip(), maxsplit=1)[0].strip() for r in rows)
    closers = Counter(re.sub(r"\d+", "N", r["explanation"].strip().rsplit(".", 2)[-2] if r["explanation"].count(".")
                             >= 2 else r["explanation"]).strip() for r in rows)
    out["top_opener_share"] = openers.most_common(1)[0][1] / len(rows)
    out["top_closer_share"] = closers.most_common(1)[0][1] / len(rows)
    out["shared"] = shared_explanation_fraction((r["question"], r["explanation"]) for r in rows)
    out["rows"] = float(len(rows))
    return out


def write_task(out: Path, train: int, test: int, seed: int, terms: int = TERMS) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    test_rows = make_rows(test, seed + 1, terms=terms)
    train_rows = make_rows(train, seed, exclude={tuple(int(c) for c in r["id"][4:]) for r in test_rows},
                           terms=terms)
    files = {"train": out / "train.jsonl", "train_answer_only": out / "train_answer_only.jsonl",
             "test": out / "test.jsonl"}
    for name, rows in (("train", train_rows), ("test", test_rows),
                       ("train_answer_only", [{k: v for k, v in r.items() if k != "reasoning_trace"}
                                              for r in train_rows])):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return files


def tokenizer_corpus() -> list[str]:
    """Text for the demo models' tokenizer (digits are always single tokens there): the task's text, the chat roles,
    the format tags and the demo's system prompts (each tag still takes a few tokens: the byte-level
    pre-tokenizer splits it at its punctuation before BPE merges anything)."""
    rows = make_rows(400, 0)
    lines = [r["question"] + " " + r["reasoning_trace"] for r in rows]
    for tag in ("thought", "solution", "explanation"):
        lines += [f"<|begin_of_{tag}|>", f"<|end_of_{tag}|>"] * 200
    lines += ["system\n", "user\n", "assistant\n", "Explain how to reach the given solution.",
              "Work out the answer, then give it."] * 200
    return lines


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m rlt_ray.data.demo_task")
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=1024)
    p.add_argument("--test", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for name, path in write_task(a.out, a.train, a.test, a.seed).items():
        print(f"demo_task: {name} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
