"""Per-step metrics: one dict of scalars, written to a JSONL file, TensorBoard and Ray's metrics endpoint.

Ray metrics are gauges named ``rlt_<key>`` (Prometheus shows them as ``ray_rlt_<key>``) tagged with the run name,
so the Ray dashboard's Grafana and any Prometheus scraping the cluster see reward, lengths, stage times and the
weights version while the run lives (a gauge disappears when its process exits).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def cpu_info() -> tuple[str, bool]:
    """The CPU model and whether it has AVX-512 (RL trajectories differ between CPUs: every figure names its
    CPU). Used by the benchmarks' machine line and the demo's summaries."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.machine()):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line
    except OSError:
        pass
    return cpu, " avx512f" in flags


def summarize(name: str, values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {}
    return {f"{name}_mean": float(v.mean()), f"{name}_std": float(v.std()), f"{name}_min": float(v.min()),
            f"{name}_max": float(v.max())}


def run_summary(metrics: Sequence[dict], keys: Sequence[str], window: int = 10) -> dict:
    """Where a run's curves started and ended: step 1's value, the mean of the first and of the last ``window``
    steps (at most a quarter of the run each), for each of ``keys`` the steps logged. A first-window mean can hide
    a fall right after step 1 (a fresh optimizer's first steps move every weight by about the learning rate), so
    both are reported. With validation (run.eval_every), the first and the last validation's val/* too."""
    validations = [{k: v for k, v in m.items() if k.startswith("val/")} for m in metrics]
    validations = [v for v in validations if v]
    # the steps' records: the last may hold a validation alone
    metrics = [m for m in metrics if any(not k.startswith("val/") and k not in ("step", "time") for k in m)]
    k = max(1, min(window, len(metrics) // 4))
    present = [key for key in keys if metrics and key in metrics[0]]
    curve = {key: [float(m[key]) for m in metrics] for key in present}
    out = {"steps": len(metrics), "window": k,
           "step1": {key: v[0] for key, v in curve.items()},
           "first": {key: sum(v[:k]) / k for key, v in curve.items()},
           "last": {key: sum(v[-k:]) / k for key, v in curve.items()}}
    if "reward_mean" in curve:
        out["reward_ended_above_step1"] = out["last"]["reward_mean"] > out["step1"]["reward_mean"]
    if validations:
        out["validation"] = {"first": validations[0], "last": validations[-1], "count": len(validations)}
    return out


def metric_name(key: str) -> str:
    return "rlt_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)


class RunLog:
    """A run's record on the driver: metrics.jsonl, samples.jsonl, events.jsonl, the trackers
    (rlt_ray.infra.tracking) and Ray's Prometheus gauges, all fed the same scalars."""

    def __init__(self, output_dir: str | Path, cfg: Any, run_name: str, job: str):
        from omegaconf import OmegaConf

        from rlt_ray.infra.tracking import Trackers

        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run_name = run_name
        self.cfg = logging_cfg = cfg.logging
        self._jsonl = open(self.dir / "metrics.jsonl", "a") if logging_cfg.jsonl else None
        self._samples = open(self.dir / "samples.jsonl", "a") if logging_cfg.completions_fraction > 0 else None
        self.trackers = Trackers(self.dir, logging_cfg, run_name, OmegaConf.to_container(cfg, resolve=True), job)
        self._gauges: dict[str, Any] = {}

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Every scalar; a non-finite one is written as null in JSONL and named in ``nonfinite`` (JSON has no
        NaN), and as itself to TensorBoard, never dropped."""
        values = {k: float(v) for k, v in scalars.items() if v is not None}
        clean = {k: v for k, v in values.items() if math.isfinite(v)}
        bad = sorted(set(values) - set(clean))
        if self._jsonl:
            record = {"step": step, "time": time.time(), **{k: clean.get(k) for k in values}}
            if bad:
                record["nonfinite"] = bad
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        self.trackers.log(step, values)
        if self.cfg.ray_metrics:
            self._ray_gauges(clean)

    def resume_at(self, step: int) -> None:
        """A run resumed at ``step``: drop the metrics and samples lines of steps >= step that an earlier
        attempt logged after its checkpoint (they are done again), so that every step is in the files once."""
        for name, handle in (("metrics.jsonl", "_jsonl"), ("samples.jsonl", "_samples")):
            f = getattr(self, handle)
            if f is None:
                continue
            f.flush()
            path = self.dir / name
            keep = [line for line in path.read_text().splitlines(keepends=True)
                    if line.strip() and json.loads(line).get("step", -1) < step]
            path.write_text("".join(keep))
            f.seek(0, 2)

    def event(self, step: int, kind: str, echo: bool = True, **info: Any) -> None:
        """Something that happened to the run (an actor replaced, an interrupt): events.jsonl and (``echo``)
        stdout; a caller with a line of its own to print passes echo=False."""
        with open(self.dir / "events.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "time": time.time(), "event": kind, **info}) + "\n")
        if echo:
            print(f"train_rlt: step {step + 1}: {kind} {info}", flush=True)

    def samples(self, step: int, records: Sequence[dict[str, Any]]) -> None:
        if not self._samples or not records:
            return
        keep = max(1, int(round(len(records) * self.cfg.completions_fraction)))
        stride = max(1, len(records) // keep)
        for rec in list(records)[::stride][:keep]:
            self._samples.write(json.dumps({"step": step, **rec}) + "\n")
        self._samples.flush()

    def _ray_gauges(self, scalars: dict[str, float]) -> None:
        from ray.util.metrics import Gauge

        for k, v in scalars.items():
            gauge = self._gauges.get(k)
            if gauge is None:
                gauge = self._gauges[k] = Gauge(metric_name(k), description=f"RLT {k}", tag_keys=("run",))
            gauge.set(v, tags={"run": self.run_name})

    def close(self) -> None:
        for f in (self._jsonl, self._samples):
            if f:
                f.close()
        self.trackers.close()
