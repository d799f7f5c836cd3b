"""Distil a teacher's explanations into an SFT data set, as a Ray Data pipeline.

The rows stream through two actor-pool stages: the teacher's vLLM engine samples ``distill.k`` explanations per
row (``actors.rollout.SampleStage``, ``distill.teacher_replicas`` replicas), and the student scorer gives each its
RLT reward (``actors.student.ScoreStage``, ``distill.scorer_replicas``); ``distill.keep=best`` keeps the
highest-reward explanation whose tag was closed (the reference's best-of-N data scorer), ``all`` every closed
one. Ray Data spreads the replicas over the cluster, restarts a replica that dies and retries its batch, and
shows the pipeline in the dashboard. Output, in the Bespoke-Stratos conversation format plus reward columns:

    <distill.output_dir>/data/part-*.parquet   one file per batch of distill.batch_rows rows, written whole
    <distill.output_dir>/errors.jsonl          rows that gave nothing usable, and why (and unscorable samples)

Every input row ends up once: in a part file (its ``row_index``) or in errors.jsonl. Run it again with the same
output folder and the rows already there are skipped: a stop costs at most one batch per replica, the one it
holds (started, or sampled and waiting for a scorer: rlt_ray.data.backpressure keeps a replica from starting another).

    python jobs/distill.py model.teacher=runs/rl/checkpoints/step_000100/hf distill.k=4 [key=value ...]
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)  # actors/, serve/, jobs/: the repo's folders, not installed packages


def write_part(folder: Path, records: list[dict[str, Any]]) -> Path:
    """One part file, written under a temporary name and renamed: a part file that exists is whole. Its rows
    in input order, its name from its first row's index: the folder read in name order is in the input's order
    (batches are runs of consecutive rows), whichever batch finished first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = sorted(records, key=lambda r: r["row_index"])
    path = folder / f"part-{records[0]['row_index']:09d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{path.name}.tmp"
    pq.write_table(pa.Table.from_pylist(records), tmp)
    os.replace(tmp, path)
    return path


def stage_options(cfg: Any, role: str, replicas: int, batch_rows: int) -> dict[str, Any]:
    """map_batches' arguments for an actor-pool stage of ``replicas`` actors with a role's resources and
    placement (actors.actor_options): one batch at a time per replica, so a stop redoes at most that."""
    from ray.data import ActorPoolStrategy

    from actors import actor_options
    from actors.rollout import worker_options

    options = worker_options(cfg) if role == "rollout" else actor_options(cfg, role=role)
    return {"compute": ActorPoolStrategy(size=int(replicas), max_tasks_in_flight_per_actor=1),
            "batch_size": int(batch_rows), **options}


def quiet_ray_data() -> None:
    """Ray Data's own progress bars and INFO lines stay off the console (our bar counts rows); --verbose
    brings them back."""
    import logging

    import ray.data

    from rlt_ray.infra.cluster import verbose

    if not verbose():
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray.data.DataContext.get_current().enable_progress_bars = False


def data_context() -> None:
    """The driver's Ray Data settings for the distill and evaluate pipelines: quiet, and one batch at most per
    replica between stages (rlt_ray.data.backpressure: what a stop redoes)."""
    from rlt_ray.data.backpressure import hold_one_batch_between_stages

    quiet_ray_data()
    hold_one_batch_between_stages()


def main(argv: list[str]) -> int:
    from rlt_ray.config import load_config, split_argv, to_yaml
    from rlt_ray.data.sources import load_rows
    from rlt_ray.data.distill_rows import done_rows, folder_explanations, repeated_explanations
    from rlt_ray.memory import check_memory
    from rlt_ray.infra.tracking import record_result

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides)
    check_memory(cfg, ("rollout", "scorer"))  # GPU layouts: refuse one that does not fit (rlt_ray.memory)
    dc = cfg.distill
    teacher = dc.teacher or cfg.model.teacher
    teachers = int(dc.teacher_replicas or cfg.rollout.num_workers)
    scorers = int(dc.scorer_replicas or cfg.resources.scorer_workers)
    rows = load_rows(cfg.data.source, split=cfg.data.split, size=cfg.data.size, seed=cfg.data.seed,
                     max_rows=cfg.data.max_rows, fmt_cfg=cfg.format)
    out = Path(dc.output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    done = done_rows(out)
    todo = [i for i in range(len(rows)) if i not in done]
    print(f"distill: {len(rows)} rows, {len(done)} already done; k={dc.k}, keep={dc.keep}, teacher {teacher}; "
          f"{teachers} teacher and {scorers} scorer replicas, {dc.batch_rows} rows per batch", flush=True)
    if todo:
        distil(cfg, rows, todo, out, teacher, teachers, scorers)
    # the whole folder, earlier runs' rows too: what a student will train on
    explanations = folder_explanations(out)
    warning = repeated_explanations(explanations, float(dc.max_shared_fraction))
    if warning:
        print(warning, flush=True)
    record_result(cfg, out, "distill", {"rows": len(rows), "explanations": len(explanations)},
                  {"data": out / "data", "errors": out / "errors.jsonl"})
    return 0


def distil(cfg: Any, rows: list, todo: list[int], out: Path, teacher: str, teachers: int, scorers: int) -> None:
    """Sample and score the rows ``todo`` on Ray Data, appending part files to ``out / "data"``."""
    from tqdm import tqdm

    from actors.rollout import SampleStage
    from actors.student import ScoreStage
    from rlt_ray.data.rollout_batch import step_seeds
    from rlt_ray.infra.cluster import connect_ray
    from rlt_ray.config import check_cluster
    from rlt_ray.method.formats import RLTFormat, prompt_ids
    from rlt_ray.models.registry import load_tokenizer

    dc = cfg.distill
    fmt = RLTFormat(cfg.format, load_tokenizer(cfg.model.tokenizer or teacher))
    with open(out / "errors.jsonl", "a") as errors_file:
        items = []
        for i, ids in zip(todo, prompt_ids(fmt.tokenizer, [fmt.teacher_prompt(rows[i]) for i in todo],
                                           cfg.rollout.max_prompt_tokens)):
            if ids is None:
                errors_file.write(json.dumps({"index": i, "row": rows[i].id, "error": "teacher prompt longer than "
                                              f"rollout.max_prompt_tokens={cfg.rollout.max_prompt_tokens}"}) + "\n")
            else:
                # the row's own seed: the same samples whichever replica and batch take it
                items.append({"index": i, "prompt_ids": ids, "seed": step_seeds(cfg.run.seed, 0, [i])[0]})
        errors_file.flush()

        ray = connect_ray()
        check_cluster(cfg, ray.cluster_resources(), roles=("rollout", "scorer"))
        data_context()
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // int(dc.batch_rows))))
        ds = ds.map_batches(SampleStage, fn_constructor_kwargs={"cfg": cfg, "model": teacher, "k": int(dc.k)},
                            **stage_options(cfg, "rollout", teachers, dc.batch_rows))
        ds = ds.map_batches(ScoreStage, fn_constructor_kwargs={"cfg": cfg, "rows": rows, "k": int(dc.k),
                                                               "keep": dc.keep, "teacher": teacher},
                            **stage_options(cfg, "scorer", scorers, dc.batch_rows))
        kept, failed = 0, len(todo) - len(items)
        bar = tqdm(total=len(items), desc="distill rows", file=sys.stderr, leave=False)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                records = []
                for index, rec, error, sample_errors in zip(batch["index"], batch["records"], batch["error"],
                                                            batch["sample_errors"]):
                    for e in json.loads(sample_errors):  # a sample that could not be scored: its row goes on
                        errors_file.write(json.dumps({"index": int(index), "completion_error": True, **e}) + "\n")
                    if error:
                        errors_file.write(json.dumps({"index": int(index), "row": rows[int(index)].id,
                                                      "error": str(error)}) + "\n")
                        failed += 1
                    records.extend(json.loads(rec))
                errors_file.flush()  # before the part file: a row is never both redone and in errors.jsonl twice
                if records:
                    write_part(out / "data", records)
                kept += len(records)
                bar.update(len(batch["index"]))
        finally:
            bar.close()
    print(f"distill: wrote {kept} explanations to {out / 'data'}; {failed} rows without one "
          f"(see {out / 'errors.jsonl'})", flush=True)


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "distill"))
