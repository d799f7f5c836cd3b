"""Experiment trackers (``logging.trackers``: any of tensorboard, wandb, mlflow): one run per job run, fed the
same scalars as metrics.jsonl from the driver only.

- Each tracker logs the resolved config once, every step's scalars under metrics.jsonl's names, and the paths of
  the run's artifacts (checkpoints, datasets, reports: paths, not uploads; a checkpoint is gigabytes).
- A resumed run continues the same tracker run: ``<output_dir>/trackers.json`` keeps each tracker's run id and the
  last step it logged, and a step at or below it is not logged again (an exact resume redoes the steps after its
  checkpoint with the same values).
- A tracker that fails (no account, a bad URI, a full disk) is switched off with ONE warning naming it and the
  cause; the run, metrics.jsonl and the other trackers go on.

W&B: ``WANDB_MODE=offline`` needs no account (files under ``<output_dir>/wandb``; ``wandb sync`` uploads them later).
MLflow: ``logging.mlflow_tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store beside the run's folder
(``<output_dir>/../mlflow.db``; ``mlflow ui --backend-store-uri sqlite:///…`` shows it).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any, Protocol

STATE_FILE = "trackers.json"


class Tracker(Protocol):
    run_id: str

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def artifact(self, name: str, path: str) -> None: ...

    def close(self) -> None: ...


def flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: the config keys as users write them on the command line."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_config(value, name + "."))
        else:
            out[name] = value
    return out


class TensorBoardTracker:
    def __init__(self, output_dir: Path, config: dict, run_id: str | None, **_: Any):
        from torch.utils.tensorboard import SummaryWriter

        self.run_id = run_id or "tensorboard"
        self._writer = SummaryWriter(str(output_dir / "tensorboard"))
        if run_id is None:  # the config once, not again on resume
            self._writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```", 0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def artifact(self, name: str, path: str) -> None:
        self._writer.add_text(f"artifact/{name}", path)

    def close(self) -> None:
        self._writer.close()


class WandbTracker:
    def __init__(self, output_dir: Path, config: dict, run_id: str | None, run_name: str, project: str,
                 group: str | None, **_: Any):
        import wandb

        self.run_id = run_id or uuid.uuid4().hex[:12]
        settings = wandb.Settings(silent=True, console="off", x_disable_stats=True)
        self._run = wandb.init(project=project, name=run_name, id=self.run_id, group=group, dir=str(output_dir),
                               config=config, resume="allow", settings=settings, reinit="create_new")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def artifact(self, name: str, path: str) -> None:
        self._run.summary[f"artifact/{name}"] = path

    def close(self) -> None:
        self._run.finish()


class MlflowTracker:
    def __init__(self, output_dir: Path, config: dict, run_id: str | None, run_name: str, project: str,
                 group: str | None, tracking_uri: str | None, **_: Any):
        from mlflow.tracking import MlflowClient

        uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
               or f"sqlite:///{(output_dir.resolve().parent / 'mlflow.db')}")
        self._client = MlflowClient(uri)
        if run_id is None:
            experiment = self._client.get_experiment_by_name(project)
            experiment_id = experiment.experiment_id if experiment else self._client.create_experiment(project)
            tags = {"mlflow.runName": run_name, **({"group": group} if group else {})}
            run_id = self._client.create_run(experiment_id, tags=tags).info.run_id
            params = {k: str(v)[:6000] for k, v in flat_config(config).items()}
            items = list(params.items())
            from mlflow.entities import Param

            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                self._client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), v, now, step) for k, v in scalars.items()]
        self._client.log_batch(self.run_id, metrics=metrics)

    def artifact(self, name: str, path: str) -> None:
        self._client.set_tag(self.run_id, f"artifact.{name}", path)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, _ - . space : / only."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)


BUILDERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker}


class Trackers:
    """The run's trackers (``logging.trackers``), with resume and failure handling (module docstring)."""

    def __init__(self, output_dir: str | Path, logging_cfg: Any, run_name: str, config: dict, job: str):
        self.dir = Path(output_dir)
        self.job = job
        state_path = self.dir / STATE_FILE
        self._state: dict[str, dict] = json.loads(state_path.read_text()) if state_path.exists() else {}
        self._live: dict[str, Tracker] = {}
        for name in logging_cfg.trackers:
            previous = self._state.get(name, {})
            try:
                os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # its INFO lines are not the user's
                self._live[name] = BUILDERS[name](
                    output_dir=self.dir, config=config, run_id=previous.get("run_id"), run_name=run_name,
                    project=logging_cfg.project, group=logging_cfg.group,
                    tracking_uri=logging_cfg.mlflow_tracking_uri)
            except ImportError as exc:
                self._warn(name, ImportError(f"{exc}; install it with: pip install 'rlt-ray[tracking]'"))
                continue
            except Exception as exc:  # noqa: BLE001 — any failure of a tracker's library switches it off
                self._warn(name, exc)
                continue
            self._state[name] = {"run_id": self._live[name].run_id, "last_step": previous.get("last_step", -1)}
        self._save()

    @property
    def names(self) -> list[str]:
        return list(self._live)

    def run_id(self, name: str) -> str | None:
        return self._state.get(name, {}).get("run_id")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for name, tracker in list(self._live.items()):
            if step <= self._state[name]["last_step"]:
                continue  # logged before a resume: once only
            try:
                tracker.log(step, scalars)
            except Exception as exc:  # noqa: BLE001
                self._drop(name, exc)
                continue
            self._state[name]["last_step"] = step
        self._save()

    def artifact(self, name: str, path: str | Path) -> None:
        for tracker_name, tracker in list(self._live.items()):
            try:
                tracker.artifact(name, str(path))
            except Exception as exc:  # noqa: BLE001
                self._drop(tracker_name, exc)

    def close(self) -> None:
        for name, tracker in list(self._live.items()):
            try:
                tracker.close()
            except Exception as exc:  # noqa: BLE001
                self._warn(name, exc)
        self._live.clear()

    def _drop(self, name: str, exc: BaseException) -> None:
        self._live.pop(name, None)
        self._warn(name, exc)

    def _warn(self, name: str, exc: BaseException) -> None:
        print(f"{self.job}: WARNING: tracker {name} is off for this run: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0] if str(exc) else ''} (metrics.jsonl and the other trackers go on)",
              file=sys.stderr, flush=True)

    def _save(self) -> None:
        tmp = self.dir / f".{STATE_FILE}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(self._state))
        tmp.replace(self.dir / STATE_FILE)



def record_result(cfg: Any, output_dir: str | Path, job: str, scalars: dict[str, Any],
                  artifacts: dict[str, str | Path]) -> None:
    """A job without steps (distill, evaluate): a new tracker run each time, with its config, the numbers of its
    result at step 0 and its outputs' paths."""
    from omegaconf import OmegaConf

    out = Path(output_dir)
    (out / STATE_FILE).unlink(missing_ok=True)
    trackers = Trackers(out, cfg.logging, out.name, OmegaConf.to_container(cfg, resolve=True), job)
    trackers.log(0, {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and v is not None})
    for name, path in artifacts.items():
        trackers.artifact(name, path)
    trackers.close()
