"""Which failures replace a worker (worker_lost) and which let a stopped run restart (restartable): the cause
chain of Ray's own exceptions, without a cluster."""

import ray

import pytest

from rlt_ray.infra.cluster import ALIVE, cause_chain, collective_error, DEAD, describe_lost, lost, NODE_LOST, ping, restartable, UNRESPONSIVE, who_is_alive, worker_lost
from rlt_ray.errors import LearnerLost, RunStopped


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


def test_a_stopped_run_restarts_only_after_a_lost_node_or_learner():
    lost = ray.exceptions.ActorDiedError()
    assert restartable(_raised_from(RunStopped("step 4 failed"), lost))
    assert restartable(LearnerLost("a learner rank died"))
    assert restartable(_raised_from(RunStopped("step 4 failed"), ray.exceptions.ObjectLostError("ab" * 14, "", "")))
    assert not restartable(_raised_from(RunStopped("step 4 failed"), ValueError("a bug")))
    assert not restartable(RunStopped("stopped at step 2 (run.stop_on_hack): ..."))


def test_worker_lost_sees_a_dead_actor_or_an_engine_core_deep_in_the_chain():
    class EngineDeadError(RuntimeError):
        pass

    assert worker_lost(ray.exceptions.ActorDiedError())
    assert worker_lost(_raised_from(RuntimeError("wrapped"), EngineDeadError()))
    assert not worker_lost(_raised_from(RuntimeError("wrapped"), ValueError("a bug")))
    chain = list(cause_chain(_raised_from(RuntimeError("outer"), ValueError("inner"))))
    assert [type(c) for c in chain] == [RuntimeError, ValueError]


# --- who died decides (rlt_ray.infra.cluster.who_is_alive), and what a collective error is -------------------------------

GLOO_PEER_GONE = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Read error [127.0.0.1]:41237: "
                  "Connection closed by peer [127.0.0.1]:29500")
NCCL_PEER_GONE = ("NCCL error in: ProcessGroupNCCL.cpp:3356, remote process exited or there was a network error, "
                  "NCCL version 2.27.5\nncclRemoteError: A call failed possibly due to a network error or a remote "
                  "process exiting prematurely.")
NCCL_WATCHDOG = ("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=42, OpType=ALLREDUCE, "
                 "NumelIn=1, NumelOut=1, Timeout(ms)=600000) ran for 600012 milliseconds before timing out.")


def test_the_collective_errors_of_gloo_nccl_and_torch_distributed_are_named():
    import torch.distributed as dist

    assert collective_error(_raised_from(RuntimeError("accumulate failed"), RuntimeError(GLOO_PEER_GONE)))
    assert collective_error(RuntimeError(NCCL_PEER_GONE))
    assert collective_error(RuntimeError(NCCL_WATCHDOG))
    assert collective_error(dist.DistBackendError("unhandled system error"))  # torch's own type, any text
    assert collective_error(dist.DistNetworkError("connect timed out"))
    assert not collective_error(_raised_from(RuntimeError("step 3 failed"), ValueError("shapes (3,) and (4,)")))


def test_lost_members_are_every_one_not_found_alive():
    status = [ALIVE, DEAD, NODE_LOST, UNRESPONSIVE]
    assert lost(status) == [1, 2, 3]
    assert lost([ALIVE, ALIVE]) == []
    assert describe_lost([ALIVE, NODE_LOST], "learner rank") == "learner rank 1 (node lost)"
    assert describe_lost([DEAD, NODE_LOST], "learner rank") == "learner ranks 0 (dead), 1 (node lost)"


@pytest.mark.ray
def test_who_is_alive_tells_alive_dead_node_lost_and_silent_actors_apart(ray_local):
    """Real Ray: a ping answered, an actor killed, a silent actor whose node is not in Ray's node table, and a
    silent actor on a live node (busy in a call that blocks it, no probe thread) past the timeout."""
    import time

    @ray.remote(num_cpus=0)
    class Member:
        def block(self, seconds):
            time.sleep(seconds)

    alive, dead, elsewhere, busy = (Member.remote() for _ in range(4))
    ray.get([ping(a) for a in (alive, dead, elsewhere, busy)])
    ray.kill(dead, no_restart=True)
    busy.block.remote(30)
    elsewhere.block.remote(30)  # it cannot answer either; its node (as the caller recorded it) is gone
    here = ray.get_runtime_context().get_node_id()
    t0 = time.monotonic()
    status = who_is_alive(ray, [ping(alive), ping(dead), ping(elsewhere), ping(busy)],
                          [here, here, "f" * 56, here], timeout_s=2.0)
    assert status == [ALIVE, DEAD, NODE_LOST, UNRESPONSIVE]
    assert 2.0 <= time.monotonic() - t0 < 10


@pytest.mark.ray
@pytest.mark.vllm
def test_a_learner_rank_answers_its_ping_while_it_waits_in_a_collective(ray_local, tmp_path, monkeypatch):
    """The learner ranks' ping runs on a thread of its own: rank 1 held before its gradient collective
    (run.fault_injection=learner_hold) and rank 0 waiting in that collective both answer, so an error while
    every rank is alive is told from a lost one without waiting for Ray's health checks."""
    import time

    import numpy as np

    from actors.learner import LearnerGroup
    from rlt_ray.config import load_config

    monkeypatch.setenv("RLT_ALLOW_FAULT_INJECTION", "1")
    cfg = load_config("configs/tiny_cpu.yaml", ["run.fault_injection=learner_hold@0", f"run.output_dir={tmp_path}"])
    group = LearnerGroup(cfg)
    try:
        n = cfg.rollout.n  # one batch of the preset's shape: questions_per_step groups of n completions
        completions = [np.arange(5, 9 + i, dtype=np.int32) for i in range(cfg.run.questions_per_step * n)]
        rollout = {"version": 0, "n": n, "prompt_ids": [[11, 12, 13]] * cfg.run.questions_per_step,
                   "completion_ids": completions, "finish_reason": ["stop"] * len(completions),
                   "logprobs": [np.full(len(c), -1.0, dtype=np.float32) for c in completions]}
        scored = {"total": np.arange(len(completions), dtype=np.float64)}
        steps = group.call("train_step", [ray.put(rollout)], [ray.put(scored)])
        while not (tmp_path / "fault_hold").exists():
            time.sleep(0.1)
        assert group.who_is_alive(timeout_s=5.0) == [ALIVE, ALIVE]
        assert not ray.wait(steps, timeout=0.5)[0]  # both still in the step: rank 0 in the collective
    finally:
        group.shutdown()
