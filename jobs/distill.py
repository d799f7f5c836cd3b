"""Distil a teacher's explanations into an SFT data set (METHOD.md §1 step 3).

For every question/solution row the rollout workers sample ``distill.k`` explanations (rows split across
workers, data-parallel); the student scorer gives each its RLT reward; ``distill.keep=best`` keeps the
highest-reward explanation whose tag was closed (the reference's best-of-N data scorer), ``all`` keeps every
closed one. Output: Parquet shards in the Bespoke-Stratos conversation format (system, conversations with the
thought and solution blocks) plus reward columns, loadable with ``datasets`` and by any SFT tool:

    <distill.output_dir>/data/shard_00000.parquet ...   done shards are skipped when the job is run again
                                                         (shard_N.empty: a shard none of whose rows succeeded)
    <distill.output_dir>/errors.jsonl                    rows that produced nothing usable, and why

    python jobs/distill.py model.teacher=runs/rl/checkpoints/step_000100/hf distill.k=4 [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

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


def shard_done(path: Path) -> bool:
    return path.exists() or path.with_suffix(".empty").exists()


def write_shard(path: Path, records: list[dict[str, Any]]) -> None:
    """Write atomically. A shard whose rows all failed leaves a ``.empty`` marker instead (a Parquet file with
    no rows and no schema would break readers of the folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not records:
        path.with_suffix(".empty").write_text("")
        return
    tmp = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pylist(records), tmp)
    os.replace(tmp, path)  # a shard exists only when complete


def main(argv: list[str]) -> int:
    from tqdm import tqdm

    from actors import ActorSlots, actor_options, run_on_slots
    from actors.rollout import RolloutWorker, worker_options
    from actors.student import StudentScorer
    from rlt_ray.batch import step_seeds
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import check_cluster, load_config, split_argv, to_yaml
    from rlt_ray.data import load_rows
    from rlt_ray.formats import RLTFormat, prompt_ids
    from rlt_ray.memory import check_memory
    from rlt_ray.models import load_tokenizer

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides)
    check_memory(cfg, ("rollout", "scorer"))  # GPU layouts: refuse one that does not fit (rlt_ray.memory)
    dc = cfg.distill
    teacher = dc.teacher or cfg.model.teacher
    fmt = RLTFormat(cfg.format, load_tokenizer(cfg.model.tokenizer or teacher))
    rows = load_rows(cfg.data.source, split=cfg.data.split, size=cfg.data.size, seed=cfg.data.seed,
                     max_rows=cfg.data.max_rows, fmt_cfg=cfg.format)
    out = Path(dc.output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    shards = [(a, min(a + dc.shard_rows, len(rows))) for a in range(0, len(rows), dc.shard_rows)]
    todo = [(i, a, b) for i, (a, b) in enumerate(shards) if not shard_done(out / "data" / f"shard_{i:05d}.parquet")]
    print(f"distill: {len(rows)} rows in {len(shards)} shards, {len(shards) - len(todo)} already done; "
          f"k={dc.k}, keep={dc.keep}, teacher {teacher}", flush=True)
    if not todo:
        return 0

    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources(), roles=("rollout", "scorer"))
    # named, like training's, so operators (and the fault tests) can find them; a dead one is replaced in its slot
    name = f"rlt:distill:{out.name}"
    workers = ActorSlots(lambda i, g: RolloutWorker.options(
        name=f"{name}:rollout:{i}" + (f":r{g}" if g else ""), **worker_options(cfg)).remote(cfg, i, teacher),
        cfg.rollout.num_workers, "rollout worker", cfg.resources.ready_timeout_s)
    scorers = ActorSlots(lambda i, g: StudentScorer.options(
        name=f"{name}:scorer:{i}" + (f":r{g}" if g else ""), **actor_options(cfg, role="scorer")).remote(cfg, i),
        cfg.resources.scorer_workers, "scorer", cfg.resources.ready_timeout_s)
    kept_total, errors_total = 0, 0
    try:
        with open(out / "errors.jsonl", "a") as errors_file:
            for shard_index, a, b in tqdm(todo, desc="distill shards", file=sys.stderr):
                rows_in, prompts, indices = [], [], []
                shard_ids = prompt_ids(fmt.tokenizer, [fmt.teacher_prompt(rows[i]) for i in range(a, b)],
                                       cfg.rollout.max_prompt_tokens)
                for i, ids in zip(range(a, b), shard_ids):
                    if ids is None:
                        errors_file.write(json.dumps({"row": rows[i].id, "error": "teacher prompt longer than "
                                                      f"rollout.max_prompt_tokens={cfg.rollout.max_prompt_tokens}"}) + "\n")
                        continue
                    rows_in.append(rows[i])
                    prompts.append(ids)
                    indices.append(i)
                parts = [p for p in np.array_split(np.arange(len(prompts)), len(workers)) if len(p)]
                # the same seeds whoever samples a part: a replaced worker samples what the dead one would have
                generated = run_on_slots(workers, parts, lambda w, part: w.generate.remote(
                    [prompts[j] for j in part], step_seeds(cfg.run.seed, 0, [indices[j] for j in part]), 0, dc.k))
                # the prompt's closing padding is left out of the explanation span here: its teacher log-probs
                # would need an HF forward of the teacher (vLLM gives prompt log-probs only at temperature 1),
                # and it is the same for every candidate of a row (docs/design.md)
                scored = run_on_slots(scorers, list(zip(generated, parts)), lambda s, item: s.score.remote(
                    [rows_in[j] for j in item[1]], item[0], explanation_span="sampled"))
                records, rows_done = [], 0
                for part, result in zip(parts, scored):
                    for e in result["errors"]:
                        errors_file.write(json.dumps(e) + "\n")
                    for local, j in enumerate(part):
                        row = rows_in[j]
                        keep = choose(result, local, dc.k, dc.keep)
                        if not keep:
                            errors_file.write(json.dumps({"row": row.id, "error": f"none of the {dc.k} explanations "
                                                          "closed its tag"}) + "\n")
                            continue
                        rows_done += 1
                        for c in keep:
                            flat = local * dc.k + c
                            extra = {col: float(result[col][flat]) for col in REWARD_COLUMNS}
                            records.append(fmt.distill_record(row, result["explanations"][flat], id=row.id,
                                                              answer=row.answer, teacher=teacher, **extra))
                errors_file.flush()
                errors_total += (b - a) - rows_done
                kept_total += len(records)
                write_shard(out / "data" / f"shard_{shard_index:05d}.parquet", records)
    finally:
        workers.kill_all()
        scorers.kill_all()
    print(f"distill: wrote {kept_total} explanations to {out / 'data'}; {errors_total} rows without one "
          f"(see {out / 'errors.jsonl'})", flush=True)
    return 0


if __name__ == "__main__":
    from rlt_ray.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "distill"))
