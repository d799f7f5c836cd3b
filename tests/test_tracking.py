"""Experiment trackers (logging.trackers, rlt_ray.infra.tracking): TensorBoard, W&B offline and MLflow on SQLite get the
same steps as metrics.jsonl, a resumed run continues the same tracker run with no step twice, a broken tracker
is one warning and the run goes on; then the same on the real RL job (Ray, vLLM, DeepSpeed)."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlt_ray.errors import ConfigError
from rlt_ray.config import load_config
from rlt_ray.infra.tracking import Trackers
from tests.helpers.tracker_records import mlflow_history, tensorboard_history, wandb_history


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def _logging(tmp_path: Path, trackers: list[str], uri: str | None = None):
    return OmegaConf.create({"trackers": trackers, "project": "rlt-test", "group": None,
                             "mlflow_tracking_uri": uri or f"sqlite:///{tmp_path / 'mlflow.db'}"})


def test_every_tracker_gets_each_step_once_and_a_resumed_run_continues_the_same_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cfg = _logging(tmp_path, ["tensorboard", "wandb", "mlflow"])
    first = Trackers(out, cfg, "run", {"learner": {"lr": 1e-3}}, "test")
    assert first.names == ["tensorboard", "wandb", "mlflow"]
    for step in range(3):
        first.log(step, {"reward_mean": float(step)})
    ids = {name: first.run_id(name) for name in first.names}
    first.close()  # a crash after step 2; the checkpoint was at step 1: steps 1 and 2 are done again
    again = Trackers(out, cfg, "run", {"learner": {"lr": 1e-3}}, "test")
    assert {name: again.run_id(name) for name in again.names} == ids
    for step in range(1, 5):
        again.log(step, {"reward_mean": float(step)})
    again.artifact("checkpoint", out / "checkpoints" / "step_000005")
    again.close()

    want = [(s, float(s)) for s in range(5)]
    assert tensorboard_history(out, "reward_mean") == want
    assert mlflow_history(cfg.mlflow_tracking_uri, ids["mlflow"], "reward_mean") == want
    rows = wandb_history(out)
    assert {r["_run_id"] for r in rows if "_run_id" in r} == {ids["wandb"]}
    assert [(r["_step"], r["reward_mean"]) for r in rows if "reward_mean" in r] == want
    from mlflow.tracking import MlflowClient

    run = MlflowClient(cfg.mlflow_tracking_uri).get_run(ids["mlflow"])
    assert run.data.params["learner.lr"] == "0.001"
    assert run.data.tags["artifact.checkpoint"].endswith("step_000005")


def test_a_broken_tracker_is_one_warning_and_the_others_go_on(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    cfg = _logging(tmp_path, ["mlflow", "tensorboard"], uri="sqlite:////proc/no-such-dir/mlflow.db")
    trackers = Trackers(out, cfg, "run", {}, "train_rlt")
    for step in range(3):
        trackers.log(step, {"loss": 1.0})
    trackers.close()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "tracker mlflow is off" in line]
    assert len(warnings) == 1 and warnings[0].startswith("train_rlt: WARNING")
    assert tensorboard_history(out, "loss") == [(0, 1.0), (1, 1.0), (2, 1.0)]


def test_tracker_names_are_checked_at_start_and_the_old_key_says_where_it_went():
    with pytest.raises(ConfigError, match=r"logging.trackers.*'wandbb'"):
        load_config(None, ["logging.trackers=[tensorboard,wandbb]"])
    with pytest.raises(ConfigError, match=r"logging.tensorboard.*logging.trackers"):
        load_config(None, ["logging.tensorboard=false"])


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.vllm
def test_the_rl_job_logs_what_metrics_jsonl_holds_and_a_resume_continues_the_tracker_runs(ray_local, tmp_path):
    from jobs.train_rlt import main

    out, uri = tmp_path / "rl", f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"run.output_dir={out}", "logging.trackers=[wandb,mlflow]", f"logging.mlflow_tracking_uri={uri}",
              "run.checkpoint_every=2"]
    assert main(common + ["run.steps=3"]) == 0
    state = json.loads((out / "trackers.json").read_text())
    assert state["wandb"]["last_step"] == state["mlflow"]["last_step"] == 2
    # resumed from step 2 in the same folder: step index 2 is done again, and logged once
    assert main(common + ["run.steps=4", f"run.resume_from={out / 'checkpoints' / 'step_000002'}"]) == 0
    assert json.loads((out / "trackers.json").read_text())["mlflow"]["run_id"] == state["mlflow"]["run_id"]
    metrics = _metrics(out)
    assert [m["step"] for m in metrics] == [0, 1, 2, 3]
    for key in ("reward_mean", "loss", "r_ss_mean"):
        want = [(m["step"], pytest.approx(m[key], rel=1e-6)) for m in metrics]
        assert mlflow_history(uri, state["mlflow"]["run_id"], key) == want, key
        rows = [r for r in wandb_history(out) if key in r]
        assert [(r["_step"], r[key]) for r in rows] == want, key
    runs = {r["_run_id"] for r in wandb_history(out) if "_run_id" in r}
    assert runs == {state["wandb"]["run_id"]}
