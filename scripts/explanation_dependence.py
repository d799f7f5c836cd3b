"""How much the reward's student depends on the explanation: its log-likelihood of each row's solution (r_SS, the
mean over the solution's tokens) given the row's own explanation, another question's (shuffled), the reference
trace, and none. (docs/demo.md, run 28)

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def solution_logprob(model, tokenizer, fmt, question: str, solution: str, explanation: str) -> float:
    """Mean log-probability of the solution's tokens in the student's chat after ``explanation`` (r_SS's
    tokens: the solution content after the explanation, rlt_ray.formats.RLTFormat.student_chat)."""
    import torch

    from rlt_ray.formats import Row

    chat = fmt.student_chat(Row(question=question, solution=solution), explanation)
    enc = tokenizer(chat.text, return_offsets_mapping=True, add_special_tokens=False)
    ids = torch.tensor([enc["input_ids"]])
    a, b = chat.spans["solution"]
    positions = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if a <= s and e <= b and e > s and i > 0]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return float(sum(logp[i - 1, ids[0, i]] for i in positions) / max(1, len(positions)))


def explanation_dependence(model, tokenizer, fmt, rows: list[dict], traces: dict, seed: int = 0) -> dict[str, float]:
    """Mean r_SS over ``rows`` (question, solution, explanation, id) with each row's own explanation, a shuffled
    one (another row's), the reference trace (``traces[id]``) and an empty one; and own - shuffled."""
    others = rows[:]
    random.Random(seed).shuffle(others)
    given = {"own": lambda r, o: r["explanation"], "shuffled": lambda r, o: o["explanation"],
             "reference": lambda r, o: traces.get(r["id"], ""), "empty": lambda r, o: ""}
    means = {}
    for name, pick in given.items():
        scores = [solution_logprob(model, tokenizer, fmt, r["question"], r["solution"], pick(r, o))
                  for r, o in zip(rows, others)]
        means[name] = sum(scores) / max(1, len(scores))
    means["own_minus_shuffled"] = means["own"] - means["shuffled"]
    return means


def main(argv: list[str]) -> int:
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    from rlt_ray.config import ConfigError, load_config
    from rlt_ray.formats import RLTFormat
    from rlt_ray.models import load_tokenizer

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
    parts = sorted((folder / "data").glob("*.parquet"))
    if not student.is_dir() or not parts:
        raise ConfigError(f"need {student} (a finished demo) and parquet parts in {folder / 'data'} (a distillation)")
    rows = [r for p in parts for r in pq.read_table(p, columns=["id", "question", "solution", "explanation"])
            .to_pylist()][:limit]
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
    from rlt_ray.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "explanation_dependence"))
