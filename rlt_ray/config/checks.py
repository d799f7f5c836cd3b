"""Checks that span several keys or values (validate), and of a config against the Ray cluster it runs on
(check_cluster: resources, placement by role); every message names the key(s)."""

from __future__ import annotations

import math
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlt_ray.errors import ConfigError


POSITIVE = (
    "rollout.num_workers", "rollout.n", "rollout.max_prompt_tokens", "rollout.max_new_tokens",
    "rollout.tensor_parallel_size", "learner.micro_batch_size", "resources.learner_ranks",
    "resources.scorer_workers", "run.questions_per_step", "resources.sync_bucket_mb", "resources.placement_timeout_s", "resources.ready_timeout_s", "resources.liveness_timeout_s",
    "resources.gpu_memory_gib", "resources.gpus_per_node",
    "serve.num_replicas", "serve.max_tokens", "serve.max_n", "serve.max_body_bytes", "serve.max_field_chars",
    "serve.max_ongoing_requests", "serve.request_timeout_s", "serve.body_timeout_s", "serve.max_json_depth",
    "serve.scorer_replicas", "serve.scorer_batch_size", "sft.epochs", "sft.batch_size", "sft.max_seq_tokens", "sft.keep_checkpoints",
    "distill.k", "distill.batch_rows", "eval.batch_rows", "eval.size", "data.eval_size",
    "eval.max_new_tokens", "grpo.updates_per_batch", "data.size",
    "reward.student_temperature", "rollout.kv_cache_gib", "run.max_nonfinite_steps",
    "reward.max_batch_tokens", "run.hack_patience", "run.hack_window", "demo.train_questions", "demo.test_questions", "demo.student_rows", "demo.rl_lr",
    "demo.cold_start_steps", "demo.cold_start_lr", "demo.transfer_terms", "demo.transfer_test_questions",
)


NON_NEGATIVE = (
    "run.steps", "run.checkpoint_every", "grpo.beta", "grpo.ref_mixup_every", "grpo.advantage_eps",
    "learner.weight_decay", "learner.max_grad_norm", "learner.warmup_ratio", "demo.rl_warmup_ratio", "demo.rl_eval_every",
    "rollout.temperature",
    "learner.lr",  # 0: the weights never move (a baseline of the sampling alone)
    "resources.cpus_per_actor", "resources.gpus_per_actor", "serve.cpus_per_replica", "serve.scorer_cpus", "serve.scorer_gpus",
    "reward.clip_log_prob", "reward.clip_kl",
    "rollout.stream_groups", "run.eval_every", "run.keep_checkpoints", "run.max_restarts", "sft.checkpoint_every", "sft.max_failures",
)


def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def validate(cfg: DictConfig, job: str = "rl") -> None:
    """Checks that span several keys or values; every message names the key(s). The RL batch's checks (how
    completions split over ranks and workers) only for job="rl". Enumerated settings (Literal types) were checked
    by the schema when the layers were merged."""
    _check_numbers(cfg)
    _check_reward_and_grpo(cfg)
    _check_devices(cfg)
    _check_batch(cfg, job)
    _check_fault_injection(cfg)


def _check_numbers(cfg: DictConfig) -> None:
    """Ranges of single keys: positive, non-negative and finite, fractions, optional positives, formats."""
    for key in POSITIVE:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {_get(cfg, key)!r}")
    for key in ("distill.teacher_replicas", "distill.scorer_replicas"):  # None: the RL job's counts
        if _get(cfg, key) is not None and not _get(cfg, key) > 0:
            raise ConfigError(f"config key '{key}': must be > 0 or null, got {_get(cfg, key)!r}")
    bind = cfg.rollout.cpu_threads_bind
    if bind is not None and not re.fullmatch(r"auto|nobind|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*"
                                             r"(\|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)*", str(bind)):
        raise ConfigError(f"config key 'rollout.cpu_threads_bind': {bind!r} is not auto, nobind or core ranges such as "
                          "0-1 or 0-3|4-7 (one group per tensor-parallel rank)")
    value = cfg.serve.stream_batching_interval_ms  # None: ray.serve.llm's default
    if value is not None and not (value >= 0 and math.isfinite(value)):
        raise ConfigError(f"config key 'serve.stream_batching_interval_ms': must be a finite number >= 0 or null, "
                          f"got {value!r}")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"config key '{key}': must be a finite number >= 0, got {value!r}")
    for key in ("run.min_closed_fraction", "run.min_length_ratio", "run.max_shared_fraction",
                "distill.max_shared_fraction"):
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"config key '{key}': must be in [0, 1], got {_get(cfg, key)!r}")
    if not 0.0 <= cfg.logging.completions_fraction <= 1.0:
        raise ConfigError("config key 'logging.completions_fraction': must be in [0, 1]")
    if cfg.run.checkpoint_every_minutes is not None and not cfg.run.checkpoint_every_minutes > 0:
        raise ConfigError("config key 'run.checkpoint_every_minutes': must be > 0 or null")
    if cfg.rollout.max_num_seqs is not None and not cfg.rollout.max_num_seqs > 0:
        raise ConfigError("config key 'rollout.max_num_seqs': must be > 0 or null")
    if len(cfg.learner.adam_betas) != 2:
        raise ConfigError("config key 'learner.adam_betas': needs exactly two values")


def _check_reward_and_grpo(cfg: DictConfig) -> None:
    """The reward's and the GRPO loss's settings against each other and against the sampling temperature."""
    if cfg.reward.kind == "verifier" and cfg.reward.teacher_logprobs_from != "rollout":
        raise ConfigError("config key 'reward.teacher_logprobs_from': a verifier needs no log-probs; leave it at rollout "
                          "with reward.kind=verifier")
    if not cfg.reward.overlong_penalty <= 0:
        raise ConfigError(f"config key 'reward.overlong_penalty': must be <= 0 (a penalty), got "
                          f"{cfg.reward.overlong_penalty}")
    if not cfg.reward.verifier_timeout_s > 0:
        raise ConfigError("config key 'reward.verifier_timeout_s': must be > 0")
    for coeff, reds in (
        ("reward.answer_log_prob_coeff", "reward.log_prob_reductions"),
        ("reward.kl_penalty_coeff", "reward.kl_reductions"),
    ):
        if len(_get(cfg, coeff)) != len(_get(cfg, reds)):
            raise ConfigError(f"config keys '{coeff}' and '{reds}' must have the same length")
    if cfg.rollout.n < 2:
        raise ConfigError("config key 'rollout.n': GRPO needs at least 2 completions per question")
    for key in ("reward.teacher_temperature", "grpo.policy_temperature"):
        if _get(cfg, key) is not None and not _get(cfg, key) > 0:
            raise ConfigError(f"config key '{key}': must be > 0 or null")
    if (cfg.reward.teacher_logprobs_from == "rollout" and cfg.reward.teacher_temperature is not None
            and cfg.reward.teacher_temperature != cfg.rollout.temperature):
        raise ConfigError(
            "config keys 'reward.teacher_temperature'/'rollout.temperature': teacher log-probs taken from the rollout "
            "are at the sampling temperature; make them equal, or set reward.teacher_logprobs_from=learner"
        )
    if not 0.0 <= cfg.grpo.ref_mixup_alpha <= 1.0:
        raise ConfigError("config key 'grpo.ref_mixup_alpha': must be in [0, 1]")
    if cfg.grpo.clip_eps is None and cfg.grpo.updates_per_batch != 1:
        raise ConfigError("config key 'grpo.updates_per_batch': more than one update per batch needs grpo.clip_eps")
    policy_t = cfg.grpo.policy_temperature
    if cfg.grpo.clip_eps is not None and policy_t is not None and policy_t != cfg.rollout.temperature:
        raise ConfigError("config keys 'grpo.policy_temperature'/'rollout.temperature': the clipped ratio compares "
                          "the policy with the sampling-time log-probs, taken at rollout.temperature; make them "
                          "equal (or null)")
    if cfg.grpo.max_staleness and cfg.grpo.clip_eps is None:
        raise ConfigError("config keys 'grpo.max_staleness'/'grpo.clip_eps': off-policy samples need the clipped "
                          "importance ratio against their sampling-time log-probs: set grpo.clip_eps (e.g. 0.2)")
    if cfg.grpo.max_staleness and cfg.reward.teacher_logprobs_from == "learner":
        raise ConfigError("config keys 'grpo.max_staleness'/'reward.teacher_logprobs_from': with learner teacher "
                          "log-probs the next step's scoring waits for this step's learning, so nothing overlaps; "
                          "use reward.teacher_logprobs_from=rollout or grpo.max_staleness=0")


def _check_devices(cfg: DictConfig) -> None:
    """Device, backend, dtype and GPU shares that go together."""
    if cfg.resources.backend == "nccl" and cfg.resources.device != "cuda":
        raise ConfigError("config keys 'resources.backend'/'resources.device': nccl needs device=cuda (use gloo)")
    if cfg.learner.dtype == "float16" and cfg.resources.device == "cpu":
        raise ConfigError("config key 'learner.dtype': float16 training is not supported on CPU")
    if cfg.resources.device == "cuda" and cfg.resources.gpus_per_actor <= 0:
        raise ConfigError("config key 'resources.gpus_per_actor': device=cuda needs a GPU share per actor (e.g. 1)")
    if cfg.resources.device == "cpu" and cfg.resources.gpus_per_actor > 0:
        raise ConfigError("config key 'resources.gpus_per_actor': must be 0 with resources.device=cpu")


def _check_batch(cfg: DictConfig, job: str) -> None:
    """How a step's completions split over the learner ranks, micro-batches and rollout workers."""
    batch = cfg.run.questions_per_step * cfg.rollout.n
    per_step = cfg.resources.learner_ranks * cfg.learner.micro_batch_size
    if job == "rl" and batch % per_step:
        raise ConfigError(
            f"config keys 'run.questions_per_step' x 'rollout.n' = {batch} completions per step do not split into "
            f"'resources.learner_ranks' x 'learner.micro_batch_size' = {per_step}: every rank needs the same number "
            f"of whole micro-batches")
    budget = cfg.learner.max_tokens_per_micro_batch
    if budget is not None and budget <= 0:
        raise ConfigError(f"config key 'learner.max_tokens_per_micro_batch': must be > 0 or null, got {budget}")
    longest = cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens
    if job == "rl" and budget is not None and budget < longest:
        raise ConfigError(
            f"config key 'learner.max_tokens_per_micro_batch': {budget} tokens cannot hold the longest row, "
            f"{longest} tokens (rollout.max_prompt_tokens {cfg.rollout.max_prompt_tokens} + rollout.max_new_tokens "
            f"{cfg.rollout.max_new_tokens}); a row is never cut: raise the budget or lower those keys")
    if job == "rl" and cfg.rollout.num_workers > cfg.run.questions_per_step:
        raise ConfigError(
            f"config key 'rollout.num_workers': {cfg.rollout.num_workers} workers for "
            f"{cfg.run.questions_per_step} questions per step would leave some idle (groups are not split)")


def _check_fault_injection(cfg: DictConfig) -> None:
    """run.fault_injection: only for tests that allow it, in its one format."""
    if cfg.run.fault_injection is not None:
        import os

        if os.environ.get("RLT_ALLOW_FAULT_INJECTION") != "1":
            raise ConfigError("config key 'run.fault_injection': injects failures for tests; it is refused unless "
                              "RLT_ALLOW_FAULT_INJECTION=1 is set")
        kinds = ("rollout_error|controller_error|nan_loss|learner_hold|collective_error|sft_kill|distill_row_error|"
                 "verifier_error")
        if not re.fullmatch(rf"({kinds})@\d+", cfg.run.fault_injection):
            raise ConfigError(f"config key 'run.fault_injection': {cfg.run.fault_injection!r} is not "
                              f"<{kinds}>@<step>")
    tags = [cfg.format.think_tag, cfg.format.solution_tag, cfg.format.explanation_tag]
    if len(set(tags)) != 3 or not all(tags):
        raise ConfigError("config keys 'format.*_tag': think, solution and explanation tags must be distinct, non-empty")


def trained_model(cfg: DictConfig) -> str:
    """The model the RL job trains, by reward kind: the teacher with the RLT reward (it writes explanations), the
    student with a verifier (outcome-reward GRPO of a student, the paper's cold start). One key each, never both."""
    return str(cfg.model.student if cfg.reward.kind == "verifier" else cfg.model.teacher)


def trained_model_key(cfg: DictConfig) -> str:
    return "model.student" if cfg.reward.kind == "verifier" else "model.teacher"


def temperatures(cfg: DictConfig) -> dict[str, float]:
    """The three scoring temperatures, with null resolved to the sampling temperature (the reference's
    unbias_teacher_log_probs / unbias_log_probabilities): teacher (reward), student (reward), policy (GRPO loss)."""
    sampling = float(cfg.rollout.temperature)
    teacher = cfg.reward.teacher_temperature
    policy = cfg.grpo.policy_temperature
    return {
        "teacher": sampling if teacher is None else float(teacher),
        "student": float(cfg.reward.student_temperature),
        "policy": sampling if policy is None else float(policy),
    }


def resource_needs(cfg: DictConfig, roles: tuple[str, ...] = ("learner", "rollout", "scorer")) -> dict[str, float]:
    """CPUs and GPUs that the actors of ``roles`` ask Ray for."""
    r = cfg.resources
    counts = {"learner": r.learner_ranks, "rollout": cfg.rollout.num_workers, "scorer": r.scorer_workers}
    gpu_units = {"learner": r.learner_ranks, "rollout": cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size,
                 "scorer": 0 if cfg.reward.kind == "verifier" else r.scorer_workers}  # a verifier loads no model
    return {"CPU": r.cpus_per_actor * sum(counts[k] for k in roles),
            "GPU": r.gpus_per_actor * sum(gpu_units[k] for k in roles)}


def check_cluster(cfg: DictConfig, available: dict[str, float],
                  roles: tuple[str, ...] = ("learner", "rollout", "scorer"), nodes: list[dict] | None = None) -> None:
    """Fail at start, with the arithmetic, when the Ray cluster cannot hold the job's actors; with ``nodes``
    (ray.nodes()) also when a role cannot fit on the nodes its resources.<role>_placement allows."""
    r = cfg.resources
    needs = resource_needs(cfg, roles)
    names = {"learner": f"{r.learner_ranks} learner ranks",
             "rollout": f"{cfg.rollout.num_workers} rollout workers (tensor parallel {cfg.rollout.tensor_parallel_size})",
             "scorer": f"{r.scorer_workers} scorers"}
    layout = " + ".join(names[k] for k in roles)
    if r.device == "cpu" and available.get("GPU", 0.0) > 0 and not r.allow_cpu_preset:
        raise ConfigError(
            f"config key 'resources.device': this config runs on CPU (as the toy presets tiny_cpu and demo do) but "
            f"the Ray cluster has {available['GPU']:g} GPUs: pass --config with a GPU preset (configs/paper_7b.yaml) "
            f"or set resources.device=cuda, or pass --allow-cpu-preset to run it on the CPUs anyway")
    if needs["GPU"] > available.get("GPU", 0.0):
        raise ConfigError(
            f"config section 'resources': the run needs {needs['GPU']:g} GPUs ({layout}, "
            f"resources.gpus_per_actor={r.gpus_per_actor:g}) but the Ray cluster has {available.get('GPU', 0.0):g}")
    if needs["CPU"] > available.get("CPU", 0.0):
        raise ConfigError(
            f"config section 'resources': the run needs {needs['CPU']:g} CPUs ({layout}, "
            f"resources.cpus_per_actor={r.cpus_per_actor:g}) but the Ray cluster has {available.get('CPU', 0.0):g}")
    if nodes is not None:  # the cluster's totals suffice: does each role fit on the nodes it may use?
        from rlt_ray.config.placement import check_placement

        tp = cfg.rollout.tensor_parallel_size
        per_actor = {"learner": {"CPU": r.cpus_per_actor, "GPU": r.gpus_per_actor},
                     "rollout": {"CPU": r.cpus_per_actor, "GPU": r.gpus_per_actor * tp},
                     "scorer": {"CPU": r.cpus_per_actor,
                                "GPU": 0.0 if cfg.reward.kind == "verifier" else r.gpus_per_actor}}
        counts = {"learner": r.learner_ranks, "rollout": cfg.rollout.num_workers, "scorer": r.scorer_workers}
        check_placement(cfg, nodes, per_actor, {k: counts[k] for k in roles})


def check_sft_batch(cfg: DictConfig) -> None:
    per_step = cfg.resources.learner_ranks * cfg.learner.micro_batch_size
    if cfg.sft.batch_size % per_step:
        raise ConfigError(
            f"config key 'sft.batch_size': {cfg.sft.batch_size} sequences per step do not split into "
            f"'resources.learner_ranks' x 'learner.micro_batch_size' = {per_step}")
