"""The supervised fine-tuning loop that jobs/sft_teacher.py and jobs/sft_student.py share: examples built with
character-span masks (rlt_ray.sft), the DeepSpeed learner group of the RL job (no reference model), one
optimizer step per sft.batch_size sequences, the model saved in HF format at the end of every epoch."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def run_sft(argv: list[str], role: str) -> int:
    import numpy as np
    from tqdm import tqdm

    from actors.learner import LearnerGroup
    from rlt_ray.cluster import connect_ray
    from rlt_ray.config import ConfigError, check_cluster, check_sft_batch, load_config, split_argv, to_yaml
    from rlt_ray.data import LoadReport, load_rows
    from rlt_ray.formats import RLTFormat
    from rlt_ray.metrics import RunLog
    from rlt_ray.models import load_tokenizer
    from rlt_ray.sft import build_examples, epoch_batches

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides, job="sft")
    check_sft_batch(cfg)
    model = cfg.sft.model or (cfg.model.teacher if role == "teacher" else cfg.model.student)
    fmt = RLTFormat(cfg.format, load_tokenizer(cfg.model.tokenizer or model))
    report = LoadReport()
    rows = load_rows(cfg.data.source, split=cfg.data.split, size=cfg.data.size, seed=cfg.data.seed,
                     max_rows=cfg.data.max_rows, fmt_cfg=cfg.format, report=report)
    examples = build_examples(fmt, rows, role, cfg.sft.max_seq_tokens)
    print(f"sft_{role}: {report.summary()}", flush=True)
    if examples.solution_as_trace:
        print(f"sft_{role}: warning: {examples.solution_as_trace} rows have no reasoning_trace; their solution is "
              f"used as the trace (as the reference does)", flush=True)
    print(f"sft_{role}: {len(examples.ids)} examples from {len(rows)} rows of {cfg.data.source}; "
          f"skipped {examples.skipped or 'none'}", flush=True)
    if len(examples.ids) < cfg.sft.batch_size:
        raise ConfigError(f"config key 'sft.batch_size': {cfg.sft.batch_size} is more than the "
                          f"{len(examples.ids)} usable examples of data.source={cfg.data.source!r}")
    steps_per_epoch = len(examples.ids) // cfg.sft.batch_size
    out = Path(cfg.sft.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))

    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources(), roles=("learner",))
    learners = LearnerGroup(cfg, model=model, with_reference=False, batch_size=cfg.sft.batch_size,
                            total_steps=cfg.sft.epochs * steps_per_epoch)
    log = RunLog(out, cfg.logging, out.name)
    try:
        ray.get(learners.call("set_sft_examples", ray.put(examples)))
        step, first_nll = 0, None
        bar = tqdm(total=cfg.sft.epochs * steps_per_epoch, desc=f"sft_{role}", file=sys.stderr, leave=False)
        for epoch in range(cfg.sft.epochs):
            for batch in epoch_batches(len(examples.ids), cfg.sft.batch_size, cfg.run.seed, epoch):
                t0 = time.perf_counter()
                parts = ray.get(learners.call("sft_step", batch))
                tokens = sum(p["tokens"] for p in parts)
                metrics = {"nll": sum(p["nll_sum"] for p in parts) / max(1, tokens), "target_tokens": tokens,
                           "grad_norm": parts[0]["grad_norm"], "lr": parts[0]["lr"], "epoch": epoch,
                           "tokens_per_s": tokens / max(1e-9, max(p["seconds"] for p in parts)),
                           "step_seconds": time.perf_counter() - t0}
                if not np.isfinite(metrics["nll"]):
                    raise RuntimeError(f"sft_{role}: non-finite loss at step {step}")
                log.log(step, metrics)
                first_nll = metrics["nll"] if first_nll is None else first_nll
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, nll=f"{metrics['nll']:.4f}")
            final = out / ("final" if epoch + 1 == cfg.sft.epochs else f"epoch_{epoch + 1}")
            ray.get(learners.call("save_hf", str(final)))
        bar.close()
        print(f"sft_{role}: {cfg.sft.epochs} epochs, {step} steps, nll {first_nll:.4f} -> {metrics['nll']:.4f}; "
              f"saved {out / 'final'} (and epoch_N/)", flush=True)
    finally:
        log.close()
        learners.shutdown()
    return 0
