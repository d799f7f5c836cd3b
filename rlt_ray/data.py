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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from rlt_ray.config import FormatConfig
from rlt_ray.formats import FormatError, RLTFormat, Row

log = logging.getLogger(__name__)

REASONING_GYM_PREFIX = "reasoning_gym:"


class DataError(ValueError):
    pass


class _NoTokenizer:
    eos_token = None


def _parsers(fmt_cfg: Any) -> list[RLTFormat]:
    """The configured tags first, then Bespoke-Stratos' own (thought/solution), for conversations rows."""
    out = []
    if fmt_cfg is not None:
        out.append(RLTFormat(fmt_cfg, _NoTokenizer()))
    out.append(RLTFormat(FormatConfig(), _NoTokenizer()))  # the defaults are Bespoke-Stratos' tags
    return out


def rows_from_records(records: Iterable[dict], columns: list[str], fmt_cfg: Any = None, source: str = "data") -> list[Row]:
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
    rows, bad = [], []
    for i, rec in enumerate(records):
        try:
            if kind == "conversations":
                row = _row_from_conversation(rec, parsers, i)
            else:
                row = Row(
                    question=_text(rec, qcol),
                    solution=_text(rec, "solution"),
                    reasoning_trace=_opt_text(rec, "reasoning_trace"),
                    system=_opt_text(rec, "system"),
                    answer=_opt_text(rec, "answer"),
                    id=str(rec.get("id", i)),
                )
            rows.append(row)
        except (DataError, FormatError) as exc:
            bad.append(f"row {i}: {exc}")
    if bad:
        log.warning("%s: skipped %d bad rows, e.g. %s", source, len(bad), "; ".join(bad[:3]))
    if not rows:
        raise DataError(f"{source}: no usable rows ({len(bad)} bad), e.g. {'; '.join(bad[:3])}")
    return rows


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
        raise DataError("'conversations' must hold a user turn and an assistant turn")
    user = next((t for t in conv if t.get("from") in ("user", "human")), None)
    asst = next((t for t in conv if t.get("from") in ("assistant", "gpt")), None)
    if user is None or asst is None:
        raise DataError("'conversations' needs a turn from 'user' and one from 'assistant'")
    errors = []
    for p in parsers:
        try:
            trace, solution = p.parse_assistant(asst["value"])
            break
        except FormatError as exc:
            errors.append(str(exc))
    else:
        raise DataError("; ".join(errors))
    if not solution.strip():
        raise DataError("the assistant turn's solution block is empty")
    return Row(
        question=_text(user, "value"),
        solution=solution,
        reasoning_trace=trace,
        system=_opt_text(rec, "system"),
        id=str(rec.get("id", i)),
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
              max_rows: Optional[int] = None, fmt_cfg: Any = None) -> list[Row]:
    """Rows from a local file/folder, a reasoning_gym:<task> name, or a hub id (see module doc)."""
    if source.startswith(REASONING_GYM_PREFIX):
        return reasoning_gym_rows(source[len(REASONING_GYM_PREFIX):], size, seed)
    ds = _load_dataset(source, split)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return rows_from_records(ds, list(ds.column_names), fmt_cfg, source=source)


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
