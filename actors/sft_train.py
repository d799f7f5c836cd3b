"""The supervised fine-tuning loop that jobs/sft_teacher.py and jobs/sft_student.py share, on Ray Train.

The driver (``run_sft``) loads the rows, builds the examples (character-span masks, rlt_ray.data.sft_rows) and starts a
``TorchTrainer``: ``resources.learner_ranks`` workers, each with the DeepSpeed engine of the RL learner
(rlt_ray.models.deepspeed_engine.build_engine, one builder), one optimizer step per ``sft.batch_size`` sequences.
Ray Train restarts the worker group from the newest checkpoint when a worker or its node is lost
(``sft.max_failures``); a checkpoint holds the whole DeepSpeed state (model, optimizer, scheduler), each rank's RNG
and the data position, so a restarted run ends with the weights of an uninterrupted one. Checkpoints go to
``sft.storage_path`` (a folder or a pyarrow URI); the outputs the other jobs read stay in ``sft.output_dir``:
metrics.jsonl, TensorBoard, and the HF folders ``epoch_N/`` and ``final/``.

Rank 0 sends each step's metrics to the driver through a Ray queue (the console's progress bar and one line per
epoch, metrics.jsonl) as well as to ``ray.train.report`` (the dashboard's Train view).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

RUN_FILE = "train_run.json"  # in sft.output_dir: the Ray Train run's name and storage, for sft.resume_from=latest


def check_storage(uri: str) -> str:
    """``sft.storage_path`` as Ray Train takes it (an absolute folder, or the URI), after writing and deleting a
    probe there: a storage that cannot be reached or refuses writes fails at start, naming the key."""
    import pyarrow.fs as pafs

    from rlt_ray.errors import ConfigError

    try:
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
            target = uri
        else:
            fs, path = pafs.LocalFileSystem(), os.path.abspath(uri)
            target = path
        fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.rlt_write_probe"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # pyarrow raises OSError, ValueError, ArrowInvalid... by scheme
        raise ConfigError(f"config key 'sft.storage_path': cannot write to {uri!r}: {exc}") from None
    return target


def checkpoint_complete(path: Path, world: int) -> Optional[int]:
    """The step of the SFT checkpoint in ``path`` when every rank's part is there, else None."""
    try:
        position = json.loads((path / "position.json").read_text())
    except (OSError, ValueError):
        return None
    from rlt_ray.models.deepspeed_engine import rng_file

    if all(rng_file(path, r).exists() for r in range(world)):
        return int(position["step"])
    return None


def newest_checkpoint(run_dir: Path, world: int) -> Optional[tuple[Path, int]]:
    """(folder, step) of the newest complete checkpoint of a Ray Train run kept in a local folder."""
    found = [(step, p) for p in run_dir.glob("step_*") if (step := checkpoint_complete(p, world)) is not None]
    if not found:
        return None
    step, path = max(found)
    return path, step


def plan_run(cfg: Any, out: Path, role: str, shape: dict[str, int]) -> tuple[str, str, Optional[str]]:
    """(run name, storage, checkpoint to start from). A new run gets a new name, so it never resumes an old
    one by accident; sft.resume_from=latest takes the name in ``out``/train_run.json (Ray Train then restores
    that run from its newest checkpoint); a folder starts a new run from that checkpoint."""
    from rlt_ray.errors import ConfigError

    storage = check_storage(cfg.sft.storage_path or str(out / "train"))
    resume = cfg.sft.resume_from
    record = out / RUN_FILE
    if resume == "latest":
        if not record.exists():
            raise ConfigError(f"config key 'sft.resume_from': latest, but {record} does not exist (no earlier "
                              f"run in sft.output_dir={str(out)!r})")
        earlier = json.loads(record.read_text())
        changed = {k: (earlier["shape"].get(k), v) for k, v in shape.items() if earlier["shape"].get(k) != v}
        if changed:
            raise ConfigError(f"config key 'sft.resume_from': the run in {out} had another shape "
                              f"{ {k: a for k, (a, b) in changed.items()} }, this one "
                              f"{ {k: b for k, (a, b) in changed.items()} }: same data, sft.batch_size, "
                              f"sft.epochs and resources.learner_ranks are needed to resume")
        if earlier["storage"] != storage:
            raise ConfigError(f"config key 'sft.storage_path': the run to resume keeps its checkpoints in "
                              f"{earlier['storage']!r}, not {storage!r}")
        return earlier["name"], storage, None
    start_from = None
    if resume is not None:
        if checkpoint_complete(Path(resume), int(cfg.resources.learner_ranks)) is None:
            raise ConfigError(f"config key 'sft.resume_from': {resume!r} is not a complete SFT checkpoint "
                              f"(position.json and every rank's rng_rank<r>.pt) for "
                              f"resources.learner_ranks={cfg.resources.learner_ranks}")
        start_from = str(Path(resume).resolve())
    name = f"{role}-{time.strftime('%Y%m%d-%H%M%S')}"
    record.write_text(json.dumps({"name": name, "storage": storage, "shape": shape}) + "\n")
    return name, storage, start_from


def run_sft(argv: list[str], role: str) -> int:
    from rlt_ray.config import check_cluster, check_sft_batch, load_config, split_argv, to_yaml
    from rlt_ray.errors import RunStopped
    from rlt_ray.infra.cluster import connect_ray
    from rlt_ray.memory import check_memory

    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides, job="sft")
    check_sft_batch(cfg)
    check_memory(cfg, roles=(f"sft_{role}",))  # GPU layouts: refuse one that will not fit, with the arithmetic
    model = cfg.sft.model or (cfg.model.teacher if role == "teacher" else cfg.model.student)
    examples = load_examples(cfg, role, model)
    total = cfg.sft.epochs * (len(examples.ids) // cfg.sft.batch_size)
    out = Path(cfg.sft.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    shape = {"examples": len(examples.ids), "batch_size": int(cfg.sft.batch_size), "epochs": int(cfg.sft.epochs),
             "ranks": int(cfg.resources.learner_ranks)}
    name, storage, start_from = plan_run(cfg, out, role, shape)
    (out / "config.yaml").write_text(to_yaml(cfg))

    ray = connect_ray()
    check_cluster(cfg, ray.cluster_resources(), roles=("learner",), nodes=ray.nodes())
    from ray.util.queue import Queue

    progress = Queue(actor_options={"num_cpus": 0})
    trainer = make_trainer(cfg, {"cfg": cfg, "role": role, "model": model, "examples": ray.put(examples),
                                 "out": str(out), "start_from": start_from, "progress": progress}, name, storage)
    print(f"sft_{role}: Ray Train run {name}: {cfg.resources.learner_ranks} workers, {total} steps, checkpoints in "
          f"{storage}/{name}", flush=True)
    view = ProgressView(cfg, role, out, total, progress)
    try:
        trainer.fit()
    except Exception as exc:
        newest = (newest_checkpoint(Path(storage) / name, int(cfg.resources.learner_ranks))
                  if "://" not in storage else None)
        where = (f"its newest checkpoint is {newest[0]} (step {newest[1]}): resume with sft.resume_from=latest"
                 if newest else "no checkpoint was written: start it again")
        raise RunStopped(f"the Ray Train run {name} failed after sft.max_failures={cfg.sft.max_failures} "
                         f"restarts ({_cause(exc)}); {where}") from exc
    finally:
        view.close()
        ray.kill(progress.actor)
    last = view.last
    if last is None:
        print(f"sft_{role}: nothing to do: the run had finished all {total} steps", flush=True)
        return 0
    since = f" (this run from step {view.first_step + 1})" if view.first_step else ""
    print(f"sft_{role}: {cfg.sft.epochs} epochs, {total} steps{since}, nll {view.first_nll:.4f} -> "
          f"{last['nll']:.4f}; saved {out / 'final'} (and epoch_N/)", flush=True)
    return 0


def load_examples(cfg: Any, role: str, model: str):
    """The rows of data.source as the role's SFT examples (rlt_ray.data.sft_rows), with the console's account of
    what was kept; too few for one batch is a config error naming sft.batch_size."""
    from rlt_ray.data.sft_rows import build_examples
    from rlt_ray.data.sources import LoadReport, load_rows
    from rlt_ray.errors import ConfigError
    from rlt_ray.method.formats import RLTFormat
    from rlt_ray.models.registry import load_tokenizer

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
    return examples


def make_trainer(cfg: Any, loop_config: dict[str, Any], name: str, storage: str):
    """Ray Train's TorchTrainer for sft_worker: resources.learner_ranks workers placed as the RL learners."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rlt_ray.config.placement import placement

    # ray.train.report blocks until Train's controller polls the workers, every 2 s by default: 4x the demo's step.
    # Train passes this variable on from the driver to its controller (any cluster); an operator's value wins
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    # the dashboard's Train view lists a run only with Train's state tracking on (off by default in Ray 2.60)
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")
    r = cfg.resources
    labels, custom = placement(cfg, "learner")  # resources.learner_placement, as the RL learners
    per_worker = {"CPU": float(r.cpus_per_actor), **custom}
    if r.gpus_per_actor:
        per_worker["GPU"] = float(r.gpus_per_actor)
    return TorchTrainer(
        sft_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend=str(r.backend)),
        scaling_config=ScalingConfig(num_workers=int(r.learner_ranks), use_gpu=r.device == "cuda",
                                     resources_per_worker=per_worker, placement_strategy=str(r.learner_strategy),
                                     label_selector=dict(labels) or None),
        run_config=RunConfig(name=name, storage_path=storage,
                             checkpoint_config=CheckpointConfig(num_to_keep=int(cfg.sft.keep_checkpoints)),
                             failure_config=FailureConfig(max_failures=int(cfg.sft.max_failures))))


class ProgressView:
    """The driver's side of rank 0's progress queue, read on a thread while the run goes: the progress bar, a
    console line per epoch and per restart, metrics.jsonl and the trackers (rlt_ray.infra.metrics.RunLog)."""

    def __init__(self, cfg: Any, role: str, out: Path, total: int, progress: Any):
        from tqdm import tqdm

        from rlt_ray.infra.metrics import RunLog

        self.cfg, self.role, self.total, self.progress = cfg, role, total, progress
        self.log = RunLog(out, cfg, out.name, f"sft_{role}")
        self.bar = tqdm(total=total, desc=f"sft_{role}", file=sys.stderr, leave=False)
        self.starts, self.first_nll, self.first_step, self.last = 0, None, 0, None
        self.done = threading.Event()
        self.reader = threading.Thread(target=self.consume, daemon=True)
        self.reader.start()

    def consume(self) -> None:
        while not (self.done.is_set() and self.progress.empty()):
            try:
                self.show(self.progress.get(timeout=0.5))
            except Exception:  # queue.Empty, or the queue actor gone at shutdown
                continue

    def show(self, item: dict) -> None:
        """One message from rank 0: the start of an attempt, a step's metrics, an epoch's end."""
        from tqdm import tqdm

        role, log, bar = self.role, self.log, self.bar
        if "start" in item:
            self.starts += 1
            log.resume_at(item["start"])
            bar.reset(total=self.total)
            bar.update(item["start"])
            if self.starts > 1 or item["start"]:
                why = "after a lost worker" if self.starts > 1 else "sft.resume_from"
                log.event(item["start"], "restarted", echo=False, why=why, checkpoint=item.get("checkpoint"))
                tqdm.write(f"sft_{role}: resumed at step {item['start'] + 1}/{self.total} from "
                           f"{item.get('checkpoint')} ({why})", file=sys.stdout)
            return
        m = item["metrics"]
        log.log(item["step"], m)
        if self.first_nll is None:
            self.first_nll, self.first_step = m["nll"], item["step"]
        self.last = m
        bar.update(1)
        bar.set_postfix(epoch=int(m["epoch"]) + 1, nll=f"{m['nll']:.4f}")
        if "saved" in item:
            log.trackers.artifact("checkpoint", item["saved"])
            tqdm.write(f"sft_{role}: epoch {int(m['epoch']) + 1}/{self.cfg.sft.epochs}: nll {m['nll']:.4f}, "
                       f"{m['tokens_per_s']:.0f} tokens/s; saved {item['saved']}", file=sys.stdout)

    def close(self) -> None:
        self.done.set()
        self.reader.join(timeout=10)
        self.bar.close()
        self.log.close()


def _cause(exc: BaseException) -> str:
    """The first line of what failed a Train run, without Ray's wrapping."""
    text = str(exc).strip().splitlines()
    lines = [t.strip() for t in text if t.strip() and not t.strip().startswith(("Traceback", "File ", "^"))]
    return "; ".join(lines[-2:])[:300] if lines else type(exc).__name__


def sft_worker(config: dict) -> None:
    """One Ray Train worker: the DeepSpeed engine over Train's process group, resumed from Train's checkpoint
    (or sft.resume_from's), then the steps from there to the end."""
    import signal
    import tempfile

    import numpy as np
    import ray
    import ray.train
    import torch

    from rlt_ray.models.deepspeed_engine import build_engine, init_distributed, save_hf
    from rlt_ray.models.registry import load_tokenizer, pad_token_id
    from rlt_ray.data.sft_rows import checkpoint_due, epoch_batches, sft_step, step_position

    cfg, role, out = config["cfg"], config["role"], Path(config["out"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if cfg.resources.device == "cuda":
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    init_distributed(cfg, rank, world)
    torch.manual_seed(cfg.run.seed + rank)
    examples = ray.get(config["examples"])
    tokenizer = load_tokenizer(cfg.model.tokenizer or config["model"])
    pad_id = pad_token_id(tokenizer)
    steps_per_epoch = len(examples.ids) // cfg.sft.batch_size
    total = cfg.sft.epochs * steps_per_epoch
    engine, _zero3_init = build_engine(cfg, config["model"], world, cfg.sft.batch_size, total)

    start, source = 0, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start, source = load_position(engine, Path(d), rank), checkpoint.path
    elif config["start_from"]:
        start, source = load_position(engine, Path(config["start_from"]), rank), config["start_from"]
    progress = config["progress"] if rank == 0 else None
    if progress is not None:
        progress.put({"start": start, "checkpoint": source})

    for step in range(start, total):
        if cfg.run.fault_injection == f"sft_kill@{step}" and rank == world - 1:  # tests only (rlt_ray.config)
            marker = out / f".injected_sft_kill@{step}"
            if not marker.exists():
                marker.write_text("")
                os.kill(os.getpid(), signal.SIGKILL)
        epoch, k = step_position(step, steps_per_epoch)
        batch = epoch_batches(len(examples.ids), cfg.sft.batch_size, cfg.run.seed, epoch)[k]
        part = sft_step(engine, examples, batch, rank, world, pad_id, cfg.learner.micro_batch_size, device)
        sums = torch.tensor([part["nll_sum"], part["tokens"]], dtype=torch.float64)
        slowest = torch.tensor([part["seconds"]], dtype=torch.float64)
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        nll, tokens = float(sums[0] / max(1.0, float(sums[1]))), int(sums[1])
        if not np.isfinite(nll):
            raise RuntimeError(f"sft_{role}: non-finite loss at step {step}")
        metrics = {"nll": nll, "target_tokens": tokens, "grad_norm": part["grad_norm"], "lr": part["lr"],
                   "epoch": epoch, "tokens_per_s": tokens / max(1e-9, float(slowest[0])),
                   "step_seconds": float(slowest[0])}
        item: dict[str, Any] = {"step": step, "metrics": metrics}
        if k == steps_per_epoch - 1:  # the epoch's HF folder, which distillation and the RL job read
            folder = out / ("final" if epoch + 1 == cfg.sft.epochs else f"epoch_{epoch + 1}")
            save_hf(cfg, engine.module.model, tokenizer, str(folder), rank)
            item["saved"] = str(folder)
        if checkpoint_due(step, steps_per_epoch, cfg.sft.checkpoint_every):
            with tempfile.TemporaryDirectory() as d:
                save_position(engine, Path(d), rank, world, step + 1)
                ray.train.report({**metrics, "step": step}, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"step_{step + 1:06d}")
        else:
            ray.train.report({**metrics, "step": step})
        if progress is not None:
            progress.put(item)


def save_position(engine, folder: Path, rank: int, world: int, step: int) -> None:
    """This rank's part of a checkpoint after ``step`` optimizer steps: its DeepSpeed shard (model, optimizer,
    scheduler), its RNG; rank 0 adds the data position. Ray Train merges the ranks' folders into one."""
    from rlt_ray.models.deepspeed_engine import save_rng

    engine.save_checkpoint(str(folder / "deepspeed"), tag="state", client_state={"step": step})
    save_rng(folder, rank)
    if rank == 0:
        (folder / "position.json").write_text(json.dumps({"step": step, "world": world}) + "\n")


def load_position(engine, folder: Path, rank: int) -> int:
    """Restore this rank from a checkpoint written by save_position; returns the step to continue at."""
    from rlt_ray.models.deepspeed_engine import load_rng

    _, client = engine.load_checkpoint(str(folder / "deepspeed"), tag="state")
    load_rng(folder, rank)
    return int((client or {})["step"])
