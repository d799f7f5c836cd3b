"""How much the reward's student depends on the explanation: its log-likelihood of each row's solution (r_SS, the
mean over the solution's tokens) given the row's own explanation, another question's (shuffled), the reference
trace, and none. (docs/lab-notes/demo-runs.md, run 28)

    python scripts/explanation_dependence.py RUN_DIR DISTILL_DIR [--rows N]

RUN_DIR is a finished demo's run.output_dir (its student_b/final scores; its task/train.jsonl has the reference
traces); DISTILL_DIR a distillation folder of it (distill_warmup, distill_rl, seeds/<seed>/distill_rl). Prints the
mean r_SS of each of the four, and own - shuffled: near 0, the student's likelihood of the solution hardly depends
on what the explanation says, so the reward cannot tell a teacher's explanation for this question from another.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)


def solution_logprobs(model, tokenizer, fmt, triples: list[tuple[str, str, str]]) -> list[float]:
    """For each (question, solution, explanation): the mean log-probability of the solution's tokens in the
    student's chat after the explanation (r_SS's tokens: rlt_ray.method.formats.RLTFormat.student_chat's ``solution``
    span), in packed forwards (rlt_ray.method.scoring.range_logprobs, as the reward scores)."""
    import torch

    from rlt_ray.method.formats import Row
    from rlt_ray.models.registry import pad_token_id
    from rlt_ray.method.scoring import range_logprobs
    from rlt_ray.method.spans import encode_with_offsets, span_token_range

    sequences, ranges = [], []
    for question, solution, explanation in triples:
        chat = fmt.student_chat(Row(question=question, solution=solution), explanation)
        ids, offsets = encode_with_offsets(tokenizer, chat.text)
        sequences.append(ids)
        ranges.append([span_token_range(offsets, chat.spans["solution"])])
    with torch.no_grad():
        scored = range_logprobs(model, sequences, ranges, pad_token_id(tokenizer), 1.0)
    return [float(lp.mean()) if lp.numel() else 0.0 for (lp,) in scored]


def explanation_dependence(model, tokenizer, fmt, rows: list[dict], traces: dict, seed: int = 0) -> dict[str, float]:
    """Mean r_SS over ``rows`` (question, solution, explanation, id) with each row's own explanation, a shuffled
    one (another row's), the reference trace (``traces[id]``) and an empty one; and own - shuffled."""
    others = rows[:]
    random.Random(seed).shuffle(others)
    given = {"own": lambda r, o: r["explanation"], "shuffled": lambda r, o: o["explanation"],
             "reference": lambda r, o: traces.get(r["id"], ""), "empty": lambda r, o: ""}
    means = {}
    for name, pick in given.items():
        scores = solution_logprobs(model, tokenizer, fmt,
                                   [(r["question"], r["solution"], pick(r, o)) for r, o in zip(rows, others)])
        means[name] = sum(scores) / max(1, len(scores))
    means["own_minus_shuffled"] = means["own"] - means["shuffled"]
    return means


def main(argv: list[str]) -> int:
    from transformers import AutoModelForCausalLM

    from jobs.demo import distilled_rows
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config
    from rlt_ray.method.formats import RLTFormat
    from rlt_ray.models.registry import load_tokenizer

    if len(argv) < 2:
        raise ConfigError("usage: python scripts/explanation_dependence.py RUN_DIR DISTILL_DIR [--rows N]")
    run, folder = Path(argv[0]), Path(argv[1])
    limit = 200
    if "--rows" in argv:
        value = argv[argv.index("--rows") + 1:][:1]
        if not value or not value[0].isdigit() or int(value[0]) < 1:
            raise ConfigError(f"--rows needs a positive number of rows, got {value[0] if value else 'nothing'}")
        limit = int(value[0])
    student = run / "student_b" / "final"
    rows = distilled_rows(folder)[:limit] if student.is_dir() else []
    if not rows:
        raise ConfigError(f"need {student} (a finished demo) and parquet parts in {folder / 'data'} (a distillation)")
    traces = {}
    for line in (run / "task" / "train.jsonl").read_text().splitlines():
        r = json.loads(line)
        traces[r["id"]] = r["reasoning_trace"]
    tokenizer = load_tokenizer(str(student))
    fmt = RLTFormat(load_config("demo", []).format, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(student)).eval()
    means = explanation_dependence(model, tokenizer, fmt, rows, traces)
    print(f"{folder} ({len(rows)} rows), mean r_SS of student (b): "
          + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "explanation_dependence"))
