"""The config schema: one dataclass per section, each field with its type, default and a comment saying what
it does. One idea, in more than 400 lines: the schema."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

# Enumerated settings are Literal types: OmegaConf checks them when a preset or an override is merged, and the
# error names the key and the allowed values. The ones used by more than one field:
Dtype = Literal["float32", "bfloat16", "float16"]
Normalizer = Literal["none", "exp", "exp_norm"]  # the reference's normalisation of a reward term
Reduction = Literal["mean", "sum", "min", "max", "median", "first_quartile", "last_quartile"]  # over a span's tokens
Tracker = Literal["tensorboard", "wandb", "mlflow"]  # logging.trackers (rlt_ray.infra.tracking)


# Our own wording (the reference's prompts are not reproduced). {placeholders} are filled with the tag strings of
# the configured style; any other text, braces included, is left alone.
DEFAULT_TEACHER_SYSTEM_PROMPT = (
    "You are a patient teacher. You are shown a question together with its correct solution. "
    "First copy the solution between {solution_open} and {solution_close}. Then, between {explanation_open} and "
    "{explanation_close}, write the reasoning a student would need to reach that solution on their own: "
    "start from what the question gives, take one small step per paragraph, check each step, and never rely on "
    "knowing the answer in advance."
)


DEFAULT_STUDENT_SYSTEM_PROMPT = (
    "Answer the question in two parts. First reason step by step between {think_open} and {think_close}, "
    "checking your work as you go. Then give the final, self-contained solution between {solution_open} and "
    "{solution_close}."
)


@dataclass
class ModelConfig:
    teacher: str = "tiny-teacher"  # local folder, built-in name (rlt_ray.models.registry) or hub id
    student: str = "tiny-student"  # the frozen student that scores explanations (RLT reward); the policy with reward.kind=verifier
    reference: Optional[str] = None  # None: a copy of the teacher at start (then mixed up, grpo.ref_mixup_*)
    tokenizer: Optional[str] = None  # None: the teacher's
    dtype: Dtype = "float32"  # weights of every model
    # the HF models' attention (learner, reference, scorers): sdpa_varlen runs packed rows as one causal attention
    # per row on any device (rlt_ray.models.varlen_attention); flash_attention_2 is the CUDA varlen kernel (flash-attn)
    attention: Literal["sdpa_varlen", "sdpa", "eager", "flash_attention_2"] = "sdpa_varlen"


@dataclass
class DataConfig:
    # a local file/folder (.parquet, .jsonl, .json, .arrow, a saved HF dataset), a hub id, or
    # reasoning_gym:<task> (gsm_symbolic, countdown, ...) generated offline with data.size and data.seed
    source: str = "reasoning_gym:gsm_symbolic"
    split: str = "train"  # the split of a hub source
    size: int = 256  # rows generated for reasoning_gym sources
    max_rows: Optional[int] = None  # cap for file / hub sources
    seed: int = 42  # generation seed and the shuffle seed of the RL order
    # validation inside the RL loop (run.eval_every): held-out rows, answered greedily by the current policy.
    # None: the last data.eval_size rows of data.source, which then are not trained on
    eval_source: Optional[str] = None
    eval_split: str = "test"  # for hub sources given as data.eval_source
    eval_size: int = 64  # held-out rows answered at each validation


@dataclass
class FormatConfig:
    tag_style: Literal["bespoke", "r1"] = "bespoke"  # bespoke: <|begin_of_X|>...<|end_of_X|>; r1: <X>...</X>
    think_tag: str = "thought"  # the student's reasoning block
    solution_tag: str = "solution"  # the solution block
    explanation_tag: str = "explanation"  # the teacher's block
    padding: str = "\n\n"  # inside every tag, and between the blocks
    teacher_system_prompt: str = DEFAULT_TEACHER_SYSTEM_PROMPT  # the teacher's instructions; {placeholders} take the tags
    # used when a data row carries no system prompt of its own (Bespoke-Stratos rows do)
    student_system_prompt: str = DEFAULT_STUDENT_SYSTEM_PROMPT


@dataclass
class RolloutConfig:
    num_workers: int = 1  # vLLM rollout workers (each one engine)
    n: int = 4  # completions per question: the GRPO group size
    temperature: float = 0.7  # sampling temperature of the rollouts
    top_p: float = 1.0  # nucleus sampling (1.0: off)
    top_k: int = -1  # top-k sampling (-1: off)
    min_p: float = 0.0  # min-p sampling (0: off)
    max_prompt_tokens: int = 1024  # longer prompts are dropped and counted, never cut
    max_new_tokens: int = 128  # the completion's token limit
    tensor_parallel_size: int = 1  # GPUs per vLLM engine
    enforce_eager: bool = True  # no CUDA graphs in vLLM
    gpu_memory_utilization: float = 0.45  # vLLM's share of its GPU (weights, activations, KV cache)
    kv_cache_gib: float = 1.0  # CPU only: VLLM_CPU_KVCACHE_SPACE
    # CPU only: VLLM_CPU_OMP_THREADS_BIND, the cores the engine computes on ("0-1", "0-3|4-7" per TP rank); None:
    # vLLM's "auto", which keeps one core for the engine's own process (on 2 cores the engine computes on one).
    # "0-1" doubled P4 on 2 cores (docs/benchmarks.md); set it where the engine has the cores to itself.
    cpu_threads_bind: Optional[str] = None
    max_num_seqs: Optional[int] = None  # vLLM's concurrent sequences; None: vLLM's default (the memory plan
    # prints how many full-length sequences the KV cache holds)
    seed: int = 0
    # True: the engine runs inside the rollout actor's process (VLLM_ENABLE_V1_MULTIPROCESSING=0): starts in
    # seconds, decodes slower. False: vLLM's own engine-core process (the GPU default).
    in_process: bool = False
    # Streaming step: a worker hands over every `stream_groups` finished GRPO groups, which are scored and go
    # into the learner's gradient accumulation at once (the optimizer still steps once per batch). 0: a worker
    # hands over its groups when all are done (the reference's order of work; the same update).
    stream_groups: int = 1


@dataclass
class RewardConfig:
    # rlt: the RLT reward (a teacher writing explanations, scored by the student). verifier: ordinary outcome-reward
    # GRPO of a student (question -> thought -> solution), rewarded for a correct answer (rlt_ray.method.verifier)
    kind: Literal["rlt", "verifier"] = "rlt"
    format_bonus: float = 0.0  # verifier: added when the thought and solution blocks are both closed
    verifier_timeout_s: float = 10.0  # verifier: one sample's check; past it, the sample gets its group's worst
    # verifier: your own answer check, "package.module:function", called as function(row, prediction) -> bool with
    # the row (rlt_ray.method.formats.Row: question, solution, answer) and the solution block's text. None: math-verify, or
    # reasoning-gym's own scorer for a reasoning_gym: source. It runs in the verifier actors (importable there)
    answer_check: Optional[str] = None
    # verifier: added to a completion cut at rollout.max_new_tokens or with text after its solution block; such a
    # completion never earns the answer's reward (rlt_ray.method.verifier.runs_on). 0: no penalty beyond that
    overlong_penalty: float = 0.0
    # the RLT reward's terms (rlt_ray.method.rewards): r_SS = sum of coeff x reduction of the student's solution
    # log-probs, and the KL penalty = sum of coeff x reduction of the teacher-vs-student log-ratio on the explanation
    answer_log_prob_coeff: list[float] = field(default_factory=lambda: [1.0, 0.01])
    log_prob_reductions: list[Reduction] = field(default_factory=lambda: ["mean", "min"])
    kl_penalty_coeff: list[float] = field(default_factory=lambda: [3.0, 0.03])
    kl_reductions: list[Reduction] = field(default_factory=lambda: ["mean", "max"])
    normalize_log_prob_fn: Normalizer = "none"  # of the solution log-prob terms
    normalize_kl_fn: Normalizer = "none"  # of the KL terms
    clip_log_prob: float = 1e5  # log-probs clamped below at -clip
    clip_kl: float = 1e5  # KL terms clamped above at +clip
    kl_estimator: Literal["k1", "k3"] = "k1"  # k1: log-ratio on the sampled token; k3: Schulman's r - 1 - log r (>= 0)
    include_teacher_think_entropy: bool = True  # False: student NLL of the explanation instead of the log-ratio
    not_matched_penalty: float = -1.0  # added when the explanation's closing tag is missing
    nan_fill_log_prob: Optional[float] = None  # empty solution span; None: not_matched_penalty
    nan_fill_kl: Optional[float] = None  # empty explanation; None: -not_matched_penalty (a penalty either way)
    teacher_temperature: Optional[float] = None  # None: rollout.temperature (the reference's unbiasing)
    student_temperature: float = 0.7  # the student's logits / T when it scores (the reference's)
    teacher_logprobs_from: Literal["rollout", "learner"] = "rollout"  # vLLM processed log-probs | an HF forward
    # Which tokens are scored (docs/design.md, "Where the reward differs from the reference"). The defaults are the
    # reference's: the solution WITH its padding on both sides (solutions_content), and the explanation from the
    # padding that ends the RL prompt (its think span starts with that padding).
    solution_span: Literal["padded", "bare"] = "padded"  # padded (reference); bare: the solution text only
    explanation_span: Literal["with_prompt_pad", "sampled"] = "with_prompt_pad"  # sampled: sampled tokens only
    max_batch_tokens: int = 8192  # the scorer's packed micro-batches: real tokens per student forward (no padding)


@dataclass
class GRPOConfig:
    beta: float = 0.04  # k3 KL to the reference model
    loss_aggregation: Literal["sequence_mean", "token_mean"] = "sequence_mean"  # reference | DAPO-style
    advantage_eps: float = 1e-4  # added to the group's std before dividing
    clip_eps: Optional[float] = None  # None: one update per batch, ratio == 1 (reference); else PPO clipping
    updates_per_batch: int = 1  # optimizer steps per sampled batch (1: on-policy)
    policy_temperature: Optional[float] = None  # None: rollout.temperature (logits / T in the loss, as the reference)
    ref_mixup_alpha: float = 0.9  # ref <- alpha * policy + (1 - alpha) * ref ...
    ref_mixup_every: int = 32  # ... every N optimizer steps; 0 turns it off
    # 0: on-policy (the reference). 1: one-step off-policy: step k+1's samples are generated (with the weights
    # of step k-1's end) while step k learns, and the loss corrects for it with the clipped importance ratio
    # against the sampling-time log-probs (needs grpo.clip_eps); samples are never older than this many steps.
    max_staleness: Literal[0, 1] = 0


@dataclass
class LearnerConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2  # DeepSpeed ZeRO stage
    dtype: Dtype = "float32"  # DeepSpeed mixed precision
    lr: float = 1e-6  # peak learning rate (0: the weights never move)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after the warm-up
    warmup_ratio: float = 0.0  # linear warm-up over this share of the optimizer steps
    weight_decay: float = 0.0  # AdamW weight decay
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    adam_eps: float = 1e-8  # AdamW epsilon
    max_grad_norm: float = 1.0  # gradient clipping by global norm
    micro_batch_size: int = 1  # sequences per rank per forward/backward (without max_tokens_per_micro_batch)
    # Packed micro-batches (rlt_ray.method.packing): each rank's rows concatenated without padding, at most this many tokens
    # a forward, attention kept within each row; rows balanced over the ranks by tokens, not by count. The policy's
    # forward and backward, the reference's and the reward's teacher log-probs use it. None: micro_batch_size rows
    # a forward, padded. Must hold the longest row (rollout.max_prompt_tokens + rollout.max_new_tokens).
    max_tokens_per_micro_batch: Optional[int] = None
    # with max_tokens_per_micro_batch: rows over the ranks by tokens (True) or in equal contiguous counts (False,
    # the unbalanced layout, for comparison: bench/learner_packing.py)
    balance_ranks: bool = True
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, more time
    offload_optimizer: bool = False  # ZeRO offload of the optimizer state to CPU memory


@dataclass
class PlacementConfig:
    """Where one role's actors may run (resources.learner_placement / rollout_placement / scorer_placement)."""

    # Ray node labels the node must have (Ray's label selector: "v", "!v", "in(a,b)", "!in(a,b)"), e.g.
    # {"rlt-role": "learner"} with nodes started as `ray start --labels rlt-role=learner`
    labels: dict[str, str] = field(default_factory=dict)
    # custom resources each actor of the role takes, e.g. {"learner_node": 1} with `ray start --resources ...`
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class ResourcesConfig:
    device: Literal["cpu", "cuda"] = "cpu"  # where every model runs
    backend: Literal["gloo", "nccl"] = "gloo"  # the collective backend of the learner group and the weight sync
    learner_ranks: int = 2  # DeepSpeed ranks of the learner group (one GPU each on GPUs)
    scorer_workers: int = 1  # student scorer actors (verifiers with reward.kind=verifier)
    cpus_per_actor: float = 1.0  # CPUs Ray reserves per actor
    gpus_per_actor: float = 0.0  # with device=cuda: 1 per learner rank / rollout worker / scorer
    # a resources.device=cpu config on a Ray cluster that has GPUs is refused (a toy preset by mistake) unless this
    # is set: the jobs' --allow-cpu-preset flag
    allow_cpu_preset: bool = False
    weight_sync: Literal["object_store", "collective"] = "object_store"  # how the rollout workers get the weights
    sync_bucket_mb: int = 256  # flat buckets of at most this size per weight sync
    placement_timeout_s: float = 120.0  # how long to wait for the learner group's placement group
    ready_timeout_s: float = 900.0  # how long a rollout worker or scorer may take to start (load its model)
    # After a failed call, how long the driver waits for each actor of the role to answer a ping or be declared
    # dead by Ray (a crashed node is declared dead after Ray's health checks, ~15-30 s by default) before it
    # counts a silent one as lost. Who died decides: a lost rank restarts the run (run.max_restarts), an error
    # while every rank is alive stops it.
    liveness_timeout_s: float = 60.0
    gpu_memory_gib: float = 80.0  # per GPU, for the memory plan (rlt_ray.memory) checked at start on GPUs
    # where each role runs (PlacementConfig); empty: anywhere. The learner ranks form one placement group with
    # learner_strategy: PACK (as few nodes as fit, what ZeRO's and the collective's traffic prefer), STRICT_PACK
    # (one node), SPREAD or STRICT_SPREAD
    learner_placement: PlacementConfig = field(default_factory=PlacementConfig)
    rollout_placement: PlacementConfig = field(default_factory=PlacementConfig)
    scorer_placement: PlacementConfig = field(default_factory=PlacementConfig)
    learner_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = "PACK"
    gpus_per_node: int = 8  # for the memory plan's node count (python -m rlt_ray.memory)


@dataclass
class RunConfig:
    steps: int = 3  # RL steps (one optimizer step per batch each)
    questions_per_step: int = 2  # completions per step = questions_per_step * rollout.n
    seed: int = 42  # sampling seeds and the learners' init
    output_dir: str = "runs/latest"  # metrics, events, samples, checkpoints, trackers
    checkpoint_every: int = 0  # 0: only at the end
    checkpoint_every_minutes: Optional[float] = None  # also checkpoint when this long has passed since the last
    keep_checkpoints: int = 0  # keep the newest N complete checkpoints (0: all); the newest is never deleted
    resume_from: Optional[str] = None  # a checkpoint folder, or "latest" in run.output_dir
    checkpoint_on_interrupt: bool = True  # Ctrl-C / `ray job stop` (SIGTERM): checkpoint the completed steps
    # a step whose reward or gradient is not finite is skipped (no update, an event); this many in a row stop the
    # run with a checkpoint of the completed steps
    max_nonfinite_steps: int = 3
    # validate every N steps, and at the first and the last (0: never): the current policy answers the held-out
    # rows (data.eval_source, data.eval_size) greedily on the same engines; logged as val/* with the step's metrics
    eval_every: int = 0
    # the reward-hacking watch (rlt_ray.method.hack_watch; docs/monitoring.md). A sign is reported when, for
    # run.hack_patience steps in a row, the closed-tag fraction is under run.min_closed_fraction, or the
    # explanations' mean length is under run.min_length_ratio x the first steps', or more than
    # run.max_shared_fraction of the explanations were also written for another question, in one step or pooled
    # over the last run.hack_window steps (1: a step alone). Copies while r_SS holds or rises (training, and
    # validation when it is on) are a template the student shares: a `templated` warning. The others are a
    # `reward_hack_suspected` event and a console line naming the likely cause; with run.stop_on_hack the run
    # also stops there, with a checkpoint of the completed steps.
    min_closed_fraction: float = 0.5
    min_length_ratio: float = 0.25
    max_shared_fraction: float = 0.25
    hack_patience: int = 3
    hack_window: int = 10
    stop_on_hack: bool = False
    # a run stopped by a lost node (learners, or actors/objects with it) starts again this many times on the nodes
    # that remain, from its newest complete checkpoint (checkpoint often: run.checkpoint_every(_minutes))
    max_restarts: int = 0
    # Tests only: make a run fail on purpose, e.g. "rollout_error@3" (an exception inside a rollout worker while
    # it samples step 3), "controller_error@3", "nan_loss@2" (a NaN loss in the learners' step 2), "learner_hold@2" (the last learner
    # rank waits, before its first gradient collective of step 2, to be killed; once per output_dir),
    # "collective_error@2" (learner rank 0 raises gloo's peer-gone error at step 2 while every rank lives), "sft_kill@5" (an SFT
    # Train worker kills its own process with SIGKILL at step 5, once per output_dir), "distill_row_error@3" (the
    # distillation's scoring of input row 3 raises, every time), "verifier_error@2" (reward.kind=verifier: the check
    # of each chunk's sample 2 raises). Refused unless
    # the environment variable RLT_ALLOW_FAULT_INJECTION=1 is set, so a preset cannot turn it on by accident.
    fault_injection: Optional[str] = None


@dataclass
class SFTConfig:
    """jobs/sft_teacher.py (warm-up in the teacher format) and jobs/sft_student.py (student on distilled data).
    The optimizer settings are learner.*; the data is data.*."""

    model: Optional[str] = None  # None: model.teacher (sft_teacher) or model.student (sft_student)
    epochs: int = 1  # passes over the SFT rows
    batch_size: int = 16  # sequences per optimizer step, over all ranks
    max_seq_tokens: int = 4096  # longer examples are skipped and counted (truncating would cut the target)
    output_dir: str = "runs/sft"  # metrics.jsonl, TensorBoard, the HF folders final/ and epoch_N/
    # Ray Train (actors/sft_train.py): where its checkpoints go, a folder or any URI pyarrow understands (s3://, gs://,
    # hdfs://); shared by every node on a cluster of several. None: <output_dir>/train
    storage_path: Optional[str] = None
    checkpoint_every: int = 100  # optimizer steps between checkpoints (0: only at each epoch's end)
    keep_checkpoints: int = 2  # the newest ones kept in storage (Ray Train's CheckpointConfig.num_to_keep)
    max_failures: int = 2  # worker-group restarts from the last checkpoint after a lost worker or node
    # "latest": the last run in output_dir, from its newest checkpoint; or a checkpoint folder
    resume_from: Optional[str] = None


@dataclass
class DistillConfig:
    """jobs/distill.py: k explanations per row from the rollout workers, optionally best-of-k by the RLT reward."""

    teacher: Optional[str] = None  # None: model.teacher
    k: int = 4  # explanations sampled per row
    keep: Literal["best", "all"] = "best"  # best: the highest RLT reward of the k (needs the student); all: every closed one
    # rows per Ray Data batch and per output part file (a stop redoes at most the batches in flight)
    batch_rows: int = 64
    teacher_replicas: Optional[int] = None  # the sampling stage's vLLM replicas; None: rollout.num_workers
    scorer_replicas: Optional[int] = None  # the scoring stage's student replicas; None: resources.scorer_workers
    # a console warning when more than this fraction of the distilled explanations were also written for another
    # question (rlt_ray.data.distill_rows.repeated_explanations); 1.0: never
    max_shared_fraction: float = 0.25
    output_dir: str = "runs/distill"  # the distilled dataset: parquet part files and summary.json


@dataclass
class EvalConfig:
    """jobs/evaluate.py: greedy generation with vLLM in the student format, answers checked by math-verify or
    reasoning-gym's scorer."""

    model: Optional[str] = None  # None: model.student
    source: Optional[str] = None  # None: data.source
    split: str = "test"  # the split of a hub source
    size: int = 64  # rows for reasoning_gym sources (seeded by eval.seed)
    max_rows: Optional[int] = None  # cap on the evaluated rows of a file or hub source
    seed: int = 1234  # different from data.seed: held-out questions
    batch_rows: int = 64  # questions per Ray Data batch
    max_new_tokens: int = 512  # the answer's token limit
    output_dir: str = "runs/eval"  # results.jsonl and summary.json


@dataclass
class ServeConfig:
    """serve/app.py: the Ray Serve endpoint for teacher explanations."""

    model: Optional[str] = None  # teacher checkpoint (HF folder, built-in name, hub id); None: model.teacher
    student: Optional[str] = None  # set to return each explanation's RLT reward and allow best_of
    num_replicas: int = 1  # teacher replicas
    model_id: Optional[str] = None  # the name clients pass as "model"; None: serve.model's name (or folder name)
    cpus_per_replica: float = 1.0  # the teacher replica on CPU; on GPUs it takes rollout.tensor_parallel_size GPUs
    max_tokens: int = 512  # cap on a request's max_tokens (and the default when it gives none)
    max_n: int = 8  # cap on explanations per request
    max_body_bytes: int = 65536  # a larger request body is refused (413)
    max_field_chars: int = 20000  # question and solution, each
    auth_token_env: Optional[str] = None  # name of an environment variable holding a bearer token; None: no auth
    # (read in each replica's own environment: set it where the Ray nodes start, never in a config file)
    max_ongoing_requests: int = 64  # per replica of every deployment; more wait in Serve's queue
    request_timeout_s: float = 300.0  # a request still unanswered after this gets 408
    body_timeout_s: float = 10.0  # a request body not fully received after this gets 408 (slow or short clients)
    max_json_depth: int = 32  # deeper nesting of JSON arrays/objects gets 422
    scorer_replicas: int = 1  # the student scorer deployment (with serve.student)
    scorer_cpus: float = 1.0  # CPUs per scorer replica
    scorer_gpus: float = 0.0  # 1 on a GPU node: the student gets a GPU of its own, beside the engine's
    scorer_batch_size: int = 16  # concurrent scoring requests batched into one student forward (@serve.batch)
    # a stream's tokens leave the engine in batches gathered over this many ms (to the proxy, or to the ingress)
    # (ray.serve.llm's experimental stream_batching_interval_ms); None: the library's default
    stream_batching_interval_ms: Optional[float] = None
    # true: each teacher replica is its own HTTP ingress, the engine in the same process (proxy -> replica: 1.1-1.3x
    # the tokens/s on 2 cores, docs/benchmarks.md); false: ray.serve.llm's layout, one ingress deployment in front
    # of the engine's (proxy -> ingress -> LLMServer), with the ingress scaled apart from the engines
    engine_in_ingress: bool = True


@dataclass
class DemoConfig:
    """jobs/demo.py only: the size of its task (rlt_ray.data.demo_task)."""

    train_questions: int = 1024  # with reference traces: the warm-up, RL and every student's data
    test_questions: int = 256  # held out, for the students' evaluation
    # every student arm trains on this many rows (the first ones of its data): distillation drops the rows whose
    # explanation never closed its tag, so the distilled sets can be a little shorter than the task's train set
    student_rows: int = 960
    # the RL stage's learning rate (constant after its warm-up); learner.* is the SFT stages' optimizer, the same
    # for every arm, so the RL stage gets its own key instead of sharing learner.lr
    rl_lr: float = 5e-4
    # the RL stages' (and the cold start's) linear warm-up, a share of their steps: a fresh AdamW's first step moves
    # every weight by about the learning rate. The reference has none (constant; its warmup_ratio 0.03 is ignored)
    rl_warmup_ratio: float = 0.1
    rl_eval_every: int = 10  # the RL stage's and the cold start's run.eval_every, on the task's held-out questions
    # every student's sft.epochs ((a)-(d), (b) also the reward's student); None: sft.epochs, as the teacher's warm-up
    student_epochs: Optional[int] = None
    # --extended (docs/demo.md): the cold start, (e) = student (b) and (f) = student (d) each after this many
    # outcome-reward GRPO steps (reward.kind=verifier) at this learning rate, the reference fixed (no mixup);
    # the rate and the batch shape (run.questions_per_step x rollout.n, 8 x 8) are the declared sweep's
    # (docs/lab-notes/runs-30-31.md, run 31); the transfer task's chain length (the teachers train on 4 terms)
    # and its held-out questions
    cold_start_steps: int = 40
    cold_start_lr: float = 1e-4
    transfer_terms: int = 5
    transfer_test_questions: int = 256


@dataclass
class LoggingConfig:
    # experiment trackers, any of tensorboard, wandb, mlflow (rlt_ray.infra.tracking); fed from the driver only
    trackers: list[Tracker] = field(default_factory=lambda: ["tensorboard"])
    project: str = "rlt-ray"  # the W&B project and the MLflow experiment
    group: Optional[str] = None  # a W&B group / MLflow tag tying runs together (the demo sets its stages')
    mlflow_tracking_uri: Optional[str] = None  # None: MLFLOW_TRACKING_URI, else sqlite beside the run's folder
    jsonl: bool = True  # metrics.jsonl and events.jsonl in run.output_dir
    ray_metrics: bool = True  # export ray_rlt_* metrics to Ray's Prometheus endpoint (docs/monitoring.md)
    completions_fraction: float = 0.1  # share of completions written to the run's samples file


@dataclass
class RLTConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
