import pytest

from rlt_ray.errors import CheckpointError
from rlt_ray.infra.checkpoint import check_resume_compatible, latest, prune, read_state, resolve_resume, step_dir, write_state


def test_only_complete_checkpoints_are_resumed(tmp_path):
    for step in (2, 4):
        d = step_dir(tmp_path, step)
        d.mkdir(parents=True)
        write_state(d, {"step": step, "data_seed": 1, "questions_per_step": 2})
    half = step_dir(tmp_path, 6)
    half.mkdir(parents=True)  # interrupted while being written: no COMPLETE
    assert latest(tmp_path) == step_dir(tmp_path, 4)
    assert resolve_resume("latest", tmp_path) == step_dir(tmp_path, 4)
    assert resolve_resume(None, tmp_path) is None
    with pytest.raises(CheckpointError, match="incomplete"):
        read_state(half)
    with pytest.raises(CheckpointError, match="run.resume_from"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    assert resolve_resume("latest", tmp_path / "empty") is None  # nothing yet: a fresh run


def test_resume_refuses_a_different_data_order():
    state = {"step": 2, "data_seed": 1, "questions_per_step": 2}
    check_resume_compatible(state, 1, 2)
    with pytest.raises(CheckpointError, match="data.seed"):
        check_resume_compatible(state, 7, 2)
    with pytest.raises(CheckpointError, match="run.questions_per_step"):
        check_resume_compatible(state, 1, 4)


def test_pruning_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        d = step_dir(tmp_path, step)
        d.mkdir(parents=True)
        if step != 2:  # step 2 was interrupted while being written
            write_state(d, {"step": step})
    half = step_dir(tmp_path, 5)
    half.mkdir()  # being written now: newer than the newest complete one, left alone
    assert prune(tmp_path, 0) == []  # 0 keeps everything
    assert prune(tmp_path, 2) == [step_dir(tmp_path, 1), step_dir(tmp_path, 2)]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000003", "step_000004",
                                                                         "step_000005"]
    assert prune(tmp_path, 1) == [step_dir(tmp_path, 3)] and latest(tmp_path) == step_dir(tmp_path, 4)
