"""Accuracy of a (student) model: greedy vLLM generation in the student format, answers checked by math-verify
(MATH500, AIME24, GPQA-Diamond or any file/hub set with an answer or solution column) or by reasoning-gym's own
scorer (``reasoning_gym:countdown``, ``reasoning_gym:gsm_symbolic``, ...).

    python jobs/evaluate.py eval.model=runs/sft_student/final eval.source=reasoning_gym:gsm_symbolic
    python jobs/evaluate.py eval.model=... eval.source=HuggingFaceH4/MATH-500 eval.split=test

Writes <eval.output_dir>/results.jsonl (one line per item) and summary.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rlt_ray.infra.cluster import use_project_root

use_project_root(__file__)  # actors/, serve/, jobs/: the repo's folders, not installed packages


def evaluate(cfg: Any, model: str, source: str, out: Path) -> dict[str, Any]:
    """Generate and check; returns the summary (also written under ``out``)."""
    from actors.rollout import SampleStage
    from jobs.distill import data_context, stage_options
    from rlt_ray.infra.cluster import connect_ray
    from rlt_ray.config import check_cluster
    from rlt_ray.data.sources import load_rows
    from actors.verifier import CheckStage
    from rlt_ray.method.answers import AnswerChecker, summarize_results
    from rlt_ray.method.formats import RLTFormat, prompt_ids
    from rlt_ray.models.registry import load_tokenizer
    from rlt_ray.infra.tracking import record_result

    ec = cfg.eval
    tokenizer = load_tokenizer(model)
    fmt = RLTFormat(cfg.format, tokenizer)
    rows = load_rows(source, split=ec.split, size=ec.size, seed=ec.seed, max_rows=ec.max_rows, fmt_cfg=cfg.format)
    prompts = prompt_ids(tokenizer, [fmt.student_prompt(r) for r in rows], cfg.rollout.max_prompt_tokens)
    long = [i for i, p in enumerate(prompts) if p is None]

    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources(), roles=("rollout",))
    data_context()
    # greedy answers: a replica that dies is restarted by Ray Data and its batch asked again, with the same answers
    ds = ray.data.from_items([{"index": i, "prompt_ids": p, "seed": 0} for i, p in enumerate(prompts) if p is not None],
                             override_num_blocks=max(1, -(-(len(rows) - len(long)) // int(ec.batch_rows))))
    ds = ds.map_batches(SampleStage, fn_constructor_kwargs={"cfg": cfg, "model": model, "k": 1, "temperature": 0.0,
                                                            "max_tokens": int(ec.max_new_tokens)},
                        **stage_options(cfg, "rollout", int(cfg.rollout.num_workers), ec.batch_rows))
    ds = ds.map_batches(CheckStage, fn_constructor_kwargs={"cfg": cfg, "model": model, "source": source,
                                                           "rows": rows},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=int(ec.batch_rows), num_cpus=0.1)
    items: list[dict[str, Any]] = []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for j, i in enumerate(batch["index"]):
            i = int(i)
            items.append({"index": i, "id": rows[i].id, "question": rows[i].question,
                          "gold": rows[i].answer or rows[i].solution,
                          "prediction": str(batch["prediction"][j]) if batch["has_prediction"][j] else None,
                          "correct": bool(batch["correct"][j]), "check_error": str(batch["check_error"][j]) or None,
                          "finish_reason": str(batch["finish_reason"][j]),
                          "tokens": int(batch["tokens"][j]), "completion": str(batch["completion"][j])})
    for i in long:
        items.append({"index": i, "id": rows[i].id, "question": rows[i].question,
                      "gold": rows[i].answer or rows[i].solution, "prediction": None, "correct": False,
                      "finish_reason": "prompt_too_long", "tokens": 0, "completion": ""})
    items.sort(key=lambda it: it["index"])
    summary = {"model": model, "source": source, "checker": AnswerChecker.method_for(source),
               **summarize_results(items)}
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "w") as f:
        for it in items:
            f.write(json.dumps(it) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    record_result(cfg, out, "evaluate", summary, {"results": out / "results.jsonl", "summary": out / "summary.json"})
    return summary


def main(argv: list[str]) -> int:
    from rlt_ray.config import load_config, split_argv

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides)
    if cfg.rollout.max_new_tokens != cfg.eval.max_new_tokens:  # the engine's context must fit the answers
        cfg = load_config(preset, overrides + [f"rollout.max_new_tokens={cfg.eval.max_new_tokens}"])
    summary = evaluate(cfg, cfg.eval.model or cfg.model.student, cfg.eval.source or cfg.data.source,
                       Path(cfg.eval.output_dir))
    print(f"evaluate: {summary['model']} on {summary['source']}: accuracy {summary['accuracy']:.3f} "
          f"({summary['correct']}/{summary['n']}, checker {summary['checker']}, "
          f"{summary['no_solution_block']} without a solution block)", flush=True)
    return 0


if __name__ == "__main__":
    from rlt_ray.infra.cluster import run_cli

    sys.exit(run_cli(main, sys.argv[1:], "evaluate"))
