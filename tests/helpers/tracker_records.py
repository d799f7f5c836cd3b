"""What the trackers wrote, read back from their own offline files: W&B's .wandb log (a LevelDB-style record
log of protobuf records; wandb 0.31 ships no reader), MLflow's store through its client, TensorBoard's events."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768


def wandb_history(run_dir: Path) -> list[dict]:
    """Every history row of every offline run folder under ``run_dir``/wandb (a resumed run: one folder per
    attempt, same run id), in order; plus the run ids seen, as rows {"_run_id": id}."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows: list[dict] = []
    for path in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        data = path.read_bytes()
        assert data[:4] == b":W&B", path
        pos, buf = 7, b""
        while pos + 7 <= len(data):
            if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
                pos += BLOCK - pos % BLOCK
                continue
            _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
            pos += 7
            if kind == 0 and length == 0:
                pos += BLOCK - pos % BLOCK
                continue
            buf += data[pos:pos + length]
            pos += length
            if kind in (1, 4):  # a whole record, or the last piece of one
                record = pb.Record()
                record.ParseFromString(buf)
                buf = b""
                which = record.WhichOneof("record_type")
                if which == "run":
                    rows.append({"_run_id": record.run.run_id})
                elif which == "history":
                    rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                 for i in record.history.item})
    return rows


def mlflow_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def tensorboard_history(run_dir: Path, key: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps: list[tuple[int, float]] = []
    for events in sorted((run_dir / "tensorboard").glob("events.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if key in acc.Tags()["scalars"]:
            steps += [(e.step, e.value) for e in acc.Scalars(key)]
    return sorted(steps)
