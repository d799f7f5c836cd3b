"""Which failures replace a worker (worker_lost) and which let a stopped run restart (restartable): the cause
chain of Ray's own exceptions, without a cluster."""

import ray

from rlt_ray.cluster import LearnerLost, RunStopped, cause_chain, restartable, worker_lost


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
