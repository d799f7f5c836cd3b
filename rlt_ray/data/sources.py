"""Question/solution data: loading from files, the hub or reasoning-gym, and the seeded, resumable RL order.

Accepted row shapes (checked in this order):
1. Bespoke-Stratos: ``conversations`` ([user, assistant] with thought/solution tags) and optional ``system``.
2. Plain: ``question`` (or ``prompt``, what the reference really reads) + ``solution``, optional
   ``reasoning_trace``, ``system``, ``answer``.
Anything else is a DataError that lists the columns found.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from rlt_ray.config.schema import FormatConfig
from rlt_ray.errors import FormatError
from rlt_ray.method.formats import RLTFormat, Row
from rlt_ray.errors import DataError

log = logging.getLogger(__name__)

REASONING_GYM_PREFIX = "reasoning_gym:"


class _NoTokenizer:
    eos_token = None


def _parsers(fmt_cfg: Any) -> list[RLTFormat]:
    """The configured tags first, then Bespoke-Stratos' own (thought/solution), for conversations rows."""
    out = []
    if fmt_cfg is not None:
        out.append(RLTFormat(fmt_cfg, _NoTokenizer()))
    out.append(RLTFormat(FormatConfig(), _NoTokenizer()))  # the defaults are Bespoke-Stratos' tags
    return out


@dataclass
class LoadReport:
    """What loading did to the rows: skipped ones by reason, and the repairs (printed as the load summary)."""

    source: str = "data"
    rows: int = 0
    skipped: dict = field(default_factory=dict)  # reason -> count
    padding_stripped: int = 0  # custom rows padded the reference's way ("\n\n" + text + "\n\n")
    without_trace: int = 0  # rows with no reasoning trace (the teacher warm-up then uses the solution)
    examples: list = field(default_factory=list)  # a few "row i: reason" lines

    def skip(self, i: int, reason: str) -> None:
        key = reason.split(":")[0] if reason.startswith("column") else reason
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if len(self.examples) < 3:
            self.examples.append(f"row {i}: {reason}")

    def summary(self) -> str:
        parts = [f"{self.source}: {self.rows} rows"]
        if self.skipped:
            parts.append(f"skipped {sum(self.skipped.values())} (" + "; ".join(
                f"{n} {reason}" for reason, n in sorted(self.skipped.items())) + ")")
        if self.padding_stripped:
            parts.append(f"reference-style padding stripped from {self.padding_stripped}")
        if self.without_trace:
            parts.append(f"{self.without_trace} without a reasoning trace")
        return ", ".join(parts)


def rows_from_records(records: Iterable[dict], columns: list[str], fmt_cfg: Any = None, source: str = "data",
                      report: Optional[LoadReport] = None) -> list[Row]:
    """Rows from records; a bad record is skipped and counted with its reason (``report``), never fatal unless no
    row is usable."""
    cols = set(columns)
    if "conversations" in cols:
        kind = "conversations"
    elif ("question" in cols or "prompt" in cols) and "solution" in cols:
        kind = "plain"
    else:
        raise DataError(
            f"{source}: cannot find question/solution columns. Need 'question' (or 'prompt') and 'solution', "
            f"or Bespoke-Stratos 'conversations'; found columns {sorted(cols)}"
        )
    qcol = "question" if "question" in cols else "prompt"
    parsers = _parsers(fmt_cfg)
    report = report if report is not None else LoadReport()
    report.source = source
    rows = []
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, dict):
                raise DataError(f"record is a {type(rec).__name__}, not a mapping")
            if kind == "conversations":
                row = _row_from_conversation(rec, parsers, i)
            else:
                row = _row_from_plain(rec, qcol, parsers[0], i, report)
            rows.append(row)
            report.without_trace += row.reasoning_trace is None
        except (DataError, FormatError) as exc:
            report.skip(i, str(exc))
    report.rows = len(rows)
    if report.skipped:
        log.warning("%s; e.g. %s", report.summary(), "; ".join(report.examples))
    if not rows:
        column = "conversations" if kind == "conversations" else f"{qcol}/solution"
        raise DataError(f"{source}: no usable row in column(s) '{column}' ({sum(report.skipped.values())} bad), "
                        f"e.g. {'; '.join(report.examples)}")
    return rows


def _row_from_plain(rec: dict, qcol: str, fmt: RLTFormat, i: int, report: LoadReport) -> Row:
    solution = _text(rec, "solution")
    trace = _opt_text(rec, "reasoning_trace")
    # The reference needs custom rows wrapped as "\n\n" + text + "\n\n"; rows stored that way
    # are unwrapped here, or the padding would be there twice.
    padded = fmt.is_padded(solution) or (trace is not None and fmt.is_padded(trace))
    if padded:
        report.padding_stripped += 1
        solution = fmt.strip_pad(solution) if fmt.is_padded(solution) else solution
        trace = fmt.strip_pad(trace) if trace is not None and fmt.is_padded(trace) else trace
        if not solution.strip():
            raise DataError("column 'solution' is empty once its padding is stripped")
    return Row(question=_text(rec, qcol), solution=solution, reasoning_trace=trace, system=_opt_text(rec, "system"),
               answer=_opt_text(rec, "answer"), id=str(rec.get("id", i)))


def _text(rec: dict, col: str) -> str:
    value = rec.get(col)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"column '{col}' is empty or not text ({type(value).__name__})")
    return value


def _opt_text(rec: dict, col: str) -> Optional[str]:
    value = rec.get(col)
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value if value.strip() else None


def _row_from_conversation(rec: dict, parsers: list[RLTFormat], i: int) -> Row:
    conv = rec.get("conversations")
    if not isinstance(conv, (list, tuple)) or len(conv) < 2:
        raise DataError("column 'conversations' must hold a user turn and an assistant turn")
    for j, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise DataError(f"column 'conversations': turn {j} is a {type(turn).__name__}, not a mapping")
        if not isinstance(turn.get("value"), str):
            raise DataError(f"column 'conversations': turn {j} has no text 'value' "
                            f"({type(turn.get('value')).__name__})")
    user = next((t for t in conv if t.get("from") in ("user", "human")), None)
    asst = next((t for t in conv if t.get("from") in ("assistant", "gpt")), None)
    if user is None or asst is None:
        raise DataError("column 'conversations' needs a turn from 'user' and one from 'assistant'")
    errors = []
    for p in parsers:
        try:
            trace, solution, explanation = p.parse_assistant_blocks(asst["value"])
            break
        except FormatError as exc:
            errors.append(str(exc))
    else:
        raise DataError("column 'conversations': " + "; ".join(errors))
    if not solution.strip():
        raise DataError("column 'conversations': the assistant turn's solution block is empty")
    return Row(
        question=_text(user, "value"),
        solution=solution,
        reasoning_trace=trace,
        system=_opt_text(rec, "system"),
        id=str(rec.get("id", i)),
        trace_explanation=explanation,
    )


# ----------------------------------------------------------------------------------------------- sources


def reasoning_gym_rows(task: str, size: int, seed: int) -> list[Row]:
    """Offline question/solution pairs from reasoning-gym, seeded.

    gsm_symbolic: trace = the worked steps, solution = the final answer in a box. countdown (the paper's transfer
    task): solution = the reference expression. Other tasks: solution = the answer.
    """
    import reasoning_gym

    try:
        ds = reasoning_gym.create_dataset(task, size=size, seed=seed)
    except Exception as exc:
        raise DataError(f"data.source 'reasoning_gym:{task}': reasoning-gym cannot create it: {exc}") from exc
    rows = []
    for i, item in enumerate(ds):
        meta = item.get("metadata") or {}
        answer = str(item["answer"])
        trace = None
        if task == "gsm_symbolic" and meta.get("answer_cot"):
            trace = meta["answer_cot"].split("\n####")[0].strip()
            solution = f"The final answer is \\boxed{{{answer}}}."
        elif task == "countdown":
            solution = f"{meta.get('expression', answer)}"
        else:
            solution = answer
        rows.append(Row(question=item["question"], solution=solution, reasoning_trace=trace, answer=answer,
                        id=f"{task}-{seed}-{i}"))
    return rows


def load_rows(source: str, *, split: str = "train", size: int = 256, seed: int = 42,
              max_rows: Optional[int] = None, fmt_cfg: Any = None, report: Optional[LoadReport] = None) -> list[Row]:
    """Rows from a local file/folder, a reasoning_gym:<task> name, or a hub id (see module doc). ``report``
    collects the load summary (skipped rows by reason, repairs)."""
    if source.startswith(REASONING_GYM_PREFIX):
        rows = reasoning_gym_rows(source[len(REASONING_GYM_PREFIX):], size, seed)
        if report is not None:
            report.source, report.rows = source, len(rows)
            report.without_trace = sum(r.reasoning_trace is None for r in rows)
        return rows
    ds = _load_dataset(source, split)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return rows_from_records(ds, list(ds.column_names), fmt_cfg, source=source, report=report)


def _load_dataset(source: str, split: str):
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            if (path / "dataset_info.json").exists() or (path / "state.json").exists() or (path / "dataset_dict.json").exists():
                ds = datasets.load_from_disk(str(path))
                return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
            files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".jsonl", ".json", ".arrow"))
            if not files:
                raise DataError(f"data.source {source!r}: folder has no .parquet/.jsonl/.json/.arrow files")
            return _load_files([str(p) for p in files], files[0].suffix)
        if path.exists():
            return _load_files([str(path)], path.suffix)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data.source {source!r}: could not read it: {exc}") from exc
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise DataError(f"data.source {source!r}: no such file or folder")
    try:
        return datasets.load_dataset(source, split=split)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = " (offline: the hub cannot be reached here; use a local file or reasoning_gym:<task>)" if offline else ""
        raise DataError(f"data.source {source!r}: not a local file and not loadable from the hub{hint}: {exc}") from exc


def _load_files(files: list[str], suffix: str):
    import datasets

    if suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=files, split="train")
    if suffix in (".jsonl", ".json"):
        return datasets.load_dataset("json", data_files=files, split="train")
    if suffix == ".arrow":
        return datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in files])
    raise DataError(f"unsupported data file type {suffix!r} (.parquet, .jsonl, .json, .arrow)")


# ----------------------------------------------------------------------------------------------- RL order


@dataclass(frozen=True)
class DataOrder:
    """Which rows each RL step uses: a fresh seeded permutation per epoch, questions_per_step rows per step.

    A pure function of (num_rows, seed, step): resuming at step k needs only k, and no row is skipped or repeated
    inside an epoch. A step never holds the same row twice (unless the data set is smaller than a step).
    """

    num_rows: int
    questions_per_step: int
    seed: int

    def step_indices(self, step: int) -> list[int]:
        q, n = self.questions_per_step, self.num_rows
        if n < q:
            raise DataError(f"run.questions_per_step={q} is larger than the data set ({n} rows)")
        per_epoch = n // q  # incomplete tail batches are dropped, as the reference's sampler does
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(n)
        return perm[k * q:(k + 1) * q].tolist()
