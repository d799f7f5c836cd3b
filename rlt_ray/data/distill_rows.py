"""Distillation's pure parts (jobs/distill.py): which of a row's k explanations to keep, the records written for
it, which rows an output folder already holds (resume), and whether its explanations repeat across questions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence

REWARD_COLUMNS = ("total", "r_ss", "r_kl", "explanation_tokens", "solution_tokens")


def choose(scored: dict[str, Any], row_index: int, k: int, keep: str) -> list[int]:
    """Indices (within the row's k completions) to keep: closed tags only; best = the highest total."""
    totals = scored.get("total")
    if totals is None:
        return []
    closed = [j for j in range(k) if scored["match"][row_index * k + j] == 0.0
              and not scored["failed"][row_index * k + j]]
    if keep == "all" or not closed:
        return closed
    return [max(closed, key=lambda j: totals[row_index * k + j])]


def distilled(fmt: Any, rows: Sequence[Any], indices: Sequence[int], scored: dict[str, Any], k: int, keep: str,
              teacher: str) -> tuple[list[list[dict[str, Any]]], list[Optional[str]]]:
    """Per row: the Bespoke-Stratos records kept (``fmt.distill_record`` with the reward columns, the row's id
    and its index in the input, ``row_index``), and why there is none (None when there are)."""
    records, errors = [], []
    for local, row in enumerate(rows):
        kept = choose(scored, local, k, keep)
        if not kept:
            records.append([])
            errors.append(f"none of the {k} explanations closed its tag")
            continue
        mine = []
        for c in kept:
            flat = local * k + c
            extra = {col: float(scored[col][flat]) for col in REWARD_COLUMNS}
            mine.append(fmt.distill_record(row, scored["explanations"][flat], id=row.id, answer=row.answer,
                                           teacher=teacher, row_index=int(indices[local]), **extra))
        records.append(mine)
        errors.append(None)
    return records, errors


def done_rows(out: Path) -> set[int]:
    """Input rows an earlier run of this output folder finished: in a complete part file (``row_index``) or in
    errors.jsonl (``index``). A part file is written under a temporary name and renamed, so it is whole."""
    import pyarrow.parquet as pq

    done: set[int] = set()
    for part in sorted((out / "data").glob("part-*.parquet")):
        done.update(int(i) for i in pq.read_table(part, columns=["row_index"]).column("row_index").to_pylist())
    errors = out / "errors.jsonl"
    if errors.exists():
        for line in errors.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a stop
                continue
            if record.get("index") is not None and not record.get("completion_error"):
                done.add(int(record["index"]))
    return done


def repeated_explanations(records: Sequence[dict[str, Any]], max_shared_fraction: float) -> Optional[str]:
    """A console warning when more than ``max_shared_fraction`` of the distilled explanations (``id``,
    ``explanation``) were also written, word for word, for another question; None otherwise. An explanation
    depends on its question, so an honest teacher's rows share almost none (the demo at run 26: 0.000-0.002 at
    three of five seeds), while a teacher drifting to text the student finds likely whatever the question
    repeats across a whole data set (0.45-0.47 at the other three) more than any RL step shows (at most 0.22,
    since a step has far fewer questions): the RL job's watch (run.max_shared_fraction) does not see it."""
    from collections import Counter

    from rlt_ray.method.hack_watch import shared_explanation_fraction

    pairs = [(r["id"], " ".join(str(r["explanation"]).split())) for r in records]
    shared = shared_explanation_fraction(pairs)
    if shared <= max_shared_fraction:
        return None
    text, count = Counter(text for _, text in pairs).most_common(1)[0]
    return (f"warning: {shared:.0%} of the {len(pairs)} distilled explanations were also written for another "
            f"question (over distill.max_shared_fraction={max_shared_fraction}; the commonest, {count} times: "
            f"{text[:80]!r}): students trained on them learn text that does not depend on the question. The "
            f"teacher writes what the student finds likely whatever the question: check its RL run (docs/monitoring.md, "
            f"the reward-hacking watch), distil an earlier checkpoint, or train it with a larger grpo.beta (in the "
            f"demo that removed the copies, and the RL teacher's gain with them)")


def folder_explanations(out: Path) -> list[dict[str, Any]]:
    """The (id, explanation) of every row in an output folder's complete part files (this run's and earlier)."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = []
    for part in sorted((out / "data").glob("part-*.parquet")):
        rows.extend(pq.read_table(part, columns=["id", "explanation"]).to_pylist())
    return rows
