"""The memory plan: what each actor of a run holds at its peak, per GPU, from the config and the models' shapes.

    python -m rlt_ray.memory --config configs/paper_7b.yaml [key=value ...]

prints, per actor kind, every buffer that scales with the model or the batch, and the peak against
``resources.gpu_memory_gib``; it exits 1 when a GPU does not fit. ``train_rlt``, ``distill`` and the Serve app run
the same check at start (``check_memory``) on GPU layouts and refuse one that does not fit, with the arithmetic
and the keys to change. Models' shapes come from their ``config.json`` (a folder, a built-in model, the HF cache, or
the copies shipped in ``rlt_ray/model_configs/`` for the presets' hub ids, so it works offline).

The formulas (bytes; P parameters, N learner ranks, w the training dtype's size, S the longest sequence):
- learner rank: parameters P·w (÷N under ZeRO-3); fp32 master weights 4P (÷N from ZeRO-1) when w < 4;
  gradients P·w (÷N from ZeRO-2); Adam's two fp32 moments 8P (÷N from ZeRO-1; 0 with optimizer offload);
  the reference P·w (÷N under ZeRO-3, where it is a ZeRO-3 inference engine); ZeRO-3's gathered parameters
  (DeepSpeed's max live parameters + one prefetch bucket); activations of one micro-batch at S tokens (with
  gradient checkpointing: every layer's input + one layer's working set; without: every layer's working set),
  plus one 1024-token chunk's logits in its backward (the head's output, then 4 fp32 copies); one weight-sync
  bucket (rank 0, kept from sync to sync).
- rollout worker: vLLM's own budget (gpu_memory_utilization × GPU: weights, activations, KV cache) + one
  weight-sync bucket received outside it; the KV cache left must hold at least one sequence of S tokens.
- scorer: the student's weights + one forward at max(reward.max_batch_tokens, S) tokens, no gradient, no KV cache:
  the hidden states + the larger of one layer's MLP tensors and one logits chunk.
Every GPU also pays a CUDA context (1 GiB) and 10 % allocator slack on top, except vLLM's pool, which is taken whole
and holds its own context.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from rlt_ray.errors import MemoryPlanError

GIB = 1 << 30
SHIPPED = Path(__file__).resolve().parent / "model_configs"
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_CONTEXT = 1 * GIB
SLACK = 0.10
LOGIT_CHUNK = 1024  # rlt_ray.method.logprobs.token_logprobs' chunk_tokens
# DeepSpeed ZeRO-3 defaults (stage3_max_live_parameters, stage3_prefetch_bucket_size), in parameters
ZERO3_LIVE_PARAMETERS = 1_000_000_000
ZERO3_PREFETCH = 50_000_000


@dataclass(frozen=True)
class Shape:
    """What the plan needs of a decoder-only transformer (Qwen2/Llama-style)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    head_dim: int = 0

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @property
    def params(self) -> int:
        h, kv = self.hidden, self.kv_dim
        per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * self.intermediate + 2 * h
        return self.vocab * h * (1 if self.tied else 2) + self.layers * per_layer + h

    def kv_bytes_per_token(self, w: int) -> int:
        return 2 * self.layers * self.kv_dim * w

    def layer_activation_bytes_per_token(self, w: int) -> int:
        """One decoder layer's tensors kept for backward, per token, as HF's Qwen2/Llama layers keep them: each
        RMSNorm its input, its fp32 upcast (2 elements of w) and its output (4h each, 8h); q and k before the
        rotary embedding, after it and rotated by half (3h + 3kv); v and the attention output (kv + h; SDPA/flash:
        nothing quadratic); the MLP's gate, up, activation and product (4i). An H200 measured 1.18x the former
        7h + 2kv + 4i without checkpointing, 0.97x this (scripts/gpu_check.py, docs/lab-notes/benchmarks-record.md)."""
        return w * (12 * self.hidden + 4 * self.kv_dim + 4 * self.intermediate)


def _shape_from_config(c: dict) -> Shape:
    try:
        return Shape(hidden=int(c["hidden_size"]), layers=int(c["num_hidden_layers"]),
                     heads=int(c["num_attention_heads"]),
                     kv_heads=int(c.get("num_key_value_heads") or c["num_attention_heads"]),
                     intermediate=int(c["intermediate_size"]), vocab=int(c["vocab_size"]),
                     tied=bool(c.get("tie_word_embeddings", False)), head_dim=int(c.get("head_dim") or 0))
    except KeyError as exc:
        raise MemoryPlanError(f"the model's config.json has no {exc.args[0]!r}: not a decoder-only model this "
                              f"plan knows") from None


def model_shape(name: str) -> Shape:
    """The shape of a model given as a folder, a built-in name, a hub id in the HF cache, or a hub id shipped
    in rlt_ray/model_configs/ (org__name.json)."""
    shipped = SHIPPED / (name.replace("/", "__") + ".json")
    if shipped.exists():
        return _shape_from_config(json.loads(shipped.read_text()))
    from rlt_ray.errors import ModelNotFoundError
    from rlt_ray.models.registry import resolve_model

    try:
        folder = Path(resolve_model(name))
    except ModelNotFoundError as exc:
        raise MemoryPlanError(f"memory plan: no config.json for model {name!r} ({exc}); shipped shapes: "
                              f"{sorted(p.stem.replace('__', '/') for p in SHIPPED.glob('*.json'))}") from None
    return _shape_from_config(json.loads((folder / "config.json").read_text()))


@dataclass
class Device:
    """One actor's memory on its device: named items (bytes), the peak with context and slack, the budget."""

    role: str
    items: list[tuple[str, float]] = field(default_factory=list)
    budget: float = 0.0
    notes: list[str] = field(default_factory=list)
    keys: tuple[str, ...] = ()
    count: int = 1  # how many devices of this kind
    reserved: float = 0.0  # a pool taken whole (vLLM's gpu_memory_utilization), its own context included
    problems: list[str] = field(default_factory=list)  # what does not fit inside a pool

    def add(self, name: str, value: float) -> None:
        self.items.append((name, float(value)))

    @property
    def subtotal(self) -> float:
        return sum(v for _, v in self.items)

    @property
    def peak(self) -> float:
        """Allocations + 10 % allocator slack + a CUDA context; a reserved pool is exact and has its own context."""
        return self.reserved + (self.subtotal - self.reserved) * (1 + SLACK) + (0 if self.reserved else CUDA_CONTEXT)

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget and not self.problems


def _gib(x: float) -> str:
    return f"{x / GIB:8.2f}"


def longest_sequence(cfg: Any) -> int:
    return int(cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens)


def learner_rank(cfg: Any, shape: Shape, sft: bool = False) -> Device:
    """An RL learner rank, or with ``sft`` a Ray Train SFT worker (the same engine: no reference, no weight
    sync, sequences up to sft.max_seq_tokens)."""
    lc, n, z = cfg.learner, int(cfg.resources.learner_ranks), int(cfg.learner.zero_stage)
    w, p = DTYPE_BYTES[lc.dtype], shape.params
    s, m = (int(cfg.sft.max_seq_tokens) if sft else longest_sequence(cfg)), int(lc.micro_batch_size)
    budget = None if sft else lc.max_tokens_per_micro_batch
    if budget:  # packed (rlt_ray.method.packing): one row of at most `budget` real tokens a forward
        s, m = int(budget), 1
    d = Device(f"{'SFT worker' if sft else 'learner rank'} (x{n}, ZeRO-{z}, {lc.dtype})", count=n, keys=(
        "learner.gradient_checkpointing", "learner.zero_stage", "resources.learner_ranks",
        "learner.offload_optimizer", "sft.max_seq_tokens" if sft else "rollout.max_new_tokens",
        "learner.max_tokens_per_micro_batch" if budget else "learner.micro_batch_size"))
    d.add("parameters", p * w / (n if z == 3 else 1))
    if w < 4:
        d.add("fp32 master weights", 4 * p / (n if z >= 1 else 1))
    d.add("gradients", p * w / (n if z >= 2 else 1))
    d.add("Adam moments (fp32)", 0.0 if lc.offload_optimizer else 8 * p / (n if z >= 1 else 1))
    if cfg.grpo.beta and not sft:
        d.add("reference model" + (" (ZeRO-3 shard)" if z == 3 else ""), p * w / (n if z == 3 else 1))
    if z == 3:
        d.add("ZeRO-3 gathered parameters", min(p, ZERO3_LIVE_PARAMETERS + ZERO3_PREFETCH) * w)
    per_token = shape.layer_activation_bytes_per_token(w)
    what = f"{s} packed tokens" if budget else f"{s} tokens x {m}"
    if lc.gradient_checkpointing:
        act = m * s * (shape.layers * shape.hidden * w + per_token)
        d.add(f"activations, {what} (checkpointed)", act)
    else:
        d.add(f"activations, {what} (no checkpointing)", m * s * shape.layers * per_token)
    if budget and cfg.model.attention in ("sdpa", "eager"):  # these turn the packed rows into a boolean [T, T]
        d.add(f"packed attention mask ({s} x {s}, bool)", float(s) * s)  # block-diagonal causal mask
    # a chunk's logits alive at once in its backward: the head's output (in w; the fp32 cast is a copy only when
    # w < 4), the logits scaled by the temperature, logsumexp's exponentials and the gradient, in fp32. Three fp32
    # copies measured 0.8x short on an H200 in bf16 (scripts/gpu_check.py)
    d.add("logits chunk + gradient (fp32)", (16 + (w if w < 4 else 0)) * LOGIT_CHUNK * shape.vocab * m)
    if not sft:
        d.add("weight-sync bucket (rank 0)", sync_bucket_bytes(cfg, shape))
    d.notes.append(f"activations without checkpointing would be {_gib(m * s * shape.layers * per_token).strip()} "
                   f"GiB, with it {_gib(m * s * (shape.layers * shape.hidden * w + per_token)).strip()} GiB")
    return d


def sync_bucket_bytes(cfg: Any, shape: Shape) -> float:
    """One bucket: the sync moves the weights a bucket at a time on both sides; a tensor larger than a bucket
    (the embedding, the head: 1 GiB in a 7B model) is a bucket of its own."""
    w = DTYPE_BYTES[cfg.model.dtype]
    largest = max(shape.vocab, shape.intermediate) * shape.hidden * w
    return min(max(float(cfg.resources.sync_bucket_mb) * (1 << 20), largest), shape.params * w)


def rollout_worker(cfg: Any, shape: Shape, gpu: float) -> Device:
    rc, w = cfg.rollout, DTYPE_BYTES[cfg.model.dtype]
    tp = int(rc.tensor_parallel_size)
    d = Device(f"rollout worker (x{rc.num_workers}, TP {tp}, vLLM)", count=int(rc.num_workers) * tp, keys=(
        "rollout.gpu_memory_utilization", "rollout.tensor_parallel_size", "rollout.max_new_tokens",
        "resources.sync_bucket_mb"))
    budget = float(rc.gpu_memory_utilization) * gpu
    weights = shape.params * w / tp
    d.add(f"vLLM pool ({rc.gpu_memory_utilization} x GPU): weights {weights / GIB:.1f} GiB, activations, KV cache",
          budget)
    d.reserved = budget
    d.add("weight-sync bucket (received outside vLLM's budget)", sync_bucket_bytes(cfg, shape))
    kv = budget - weights - CUDA_CONTEXT - 0.05 * gpu  # vLLM's profiled activations: about 5 % here
    tokens = max(0.0, kv) / (shape.kv_bytes_per_token(w) / tp)
    s = longest_sequence(cfg)
    d.notes.append(f"KV cache about {max(kv, 0) / GIB:.1f} GiB = {tokens:,.0f} tokens = {tokens / s:.1f} "
                   f"sequences of {s} tokens at once (rollout.max_num_seqs <= {max(1, int(tokens // s))} keeps "
                   f"every one of them in memory)")
    if tokens < s:
        d.problems.append(f"the KV cache ({max(kv, 0) / GIB:.1f} GiB after {weights / GIB:.1f} GiB of weights) "
                          f"cannot hold one sequence of {s} tokens ({s * shape.kv_bytes_per_token(w) / tp / GIB:.1f} "
                          f"GiB)")
    return d


def scorer(cfg: Any, shape: Shape, role: str = "scorer") -> Device:
    w = DTYPE_BYTES[cfg.model.dtype]
    tokens = max(int(cfg.reward.max_batch_tokens), longest_sequence(cfg))
    d = Device(f"{role} (x{cfg.resources.scorer_workers}, student)", count=int(cfg.resources.scorer_workers),
               keys=("reward.max_batch_tokens", "resources.scorer_workers", "model.dtype"))
    d.add("student weights", shape.params * w)
    # no gradient, no KV cache (use_cache=False): nothing is kept from layer to layer but the hidden states, and the
    # peak is the larger of a layer's transient tensors (the MLP's gate, up and product: 3i) and a logits chunk
    # (its fp32 logits and logsumexp's exponentials), not their sum. An H200 measured 0.40x the former sum of every
    # layer's saved tensors and the chunk at 8,192 tokens (scripts/gpu_check.py, docs/lab-notes/benchmarks-record.md)
    d.add(f"forward at {tokens} tokens", tokens * 2 * shape.hidden * w
          + max(tokens * 3 * shape.intermediate * w, 2 * LOGIT_CHUNK * shape.vocab * 4))
    return d


def plan(cfg: Any, roles: tuple[str, ...] = ("learner", "rollout", "scorer")) -> list[Device]:
    """The memory of one device of every actor kind of ``roles`` for this config."""
    gpu = float(cfg.resources.gpu_memory_gib) * GIB
    from rlt_ray.config import trained_model

    teacher, student = model_shape(trained_model(cfg)), model_shape(cfg.model.student)  # teacher: the RL policy
    out = []
    for role in roles:  # "sft_teacher" / "sft_student": the SFT jobs' Ray Train workers
        if role.startswith("sft_"):
            out.append(learner_rank(cfg, model_shape(cfg.sft.model or cfg.model[role[4:]]), sft=True))
    if "learner" in roles:
        out.append(learner_rank(cfg, teacher))
    if "rollout" in roles:
        out.append(rollout_worker(cfg, teacher, gpu))
    if "scorer" in roles and cfg.reward.kind != "verifier":  # a verifier holds no model (CPU only)
        out.append(scorer(cfg, student))
    if "serve" in roles:
        # serve/app.py: the teacher's vLLM engine is one deployment (its own GPU); the student scorer another
        model = model_shape(cfg.serve.model or cfg.model.teacher)
        w = DTYPE_BYTES[cfg.model.dtype]
        d = Device("serve teacher replica (vLLM engine)", keys=("rollout.gpu_memory_utilization",))
        pool = float(cfg.rollout.gpu_memory_utilization) * gpu
        d.add(f"vLLM pool ({cfg.rollout.gpu_memory_utilization} x GPU): weights "
              f"{model.params * w / GIB:.1f} GiB, activations, KV cache", pool)
        d.reserved = pool
        out.append(d)
        if cfg.serve.student:
            d = scorer(cfg, model_shape(cfg.serve.student))
            d.role, d.count = "serve scorer replica (the student, on a GPU of its own)", int(cfg.serve.scorer_replicas)
            d.keys = ("serve.student", "reward.max_batch_tokens", "serve.scorer_gpus")
            out.append(d)
    for d in out:
        d.budget = gpu
    return out


def render(cfg: Any, devices: list[Device], sft: str | None = None) -> str:
    if sft:
        model = cfg.sft.model or cfg.model[sft]
        head = (f"memory plan of the {sft} SFT: {model} ({model_shape(model).params / 1e9:.2f} B parameters); "
                f"sequences up to {cfg.sft.max_seq_tokens} tokens (sft.max_seq_tokens)")
    else:
        head = (f"memory plan: teacher {cfg.model.teacher} ({model_shape(cfg.model.teacher).params / 1e9:.2f} B "
                f"parameters), student {cfg.model.student}; longest sequence {longest_sequence(cfg)} tokens")
    lines = [f"{head}; GPU {cfg.resources.gpu_memory_gib} GiB (resources.gpu_memory_gib)"]
    for d in devices:
        lines.append(f"\n{d.role}  [GiB per device]")
        for name, value in d.items:
            lines.append(f"  {_gib(value)}  {name}")
        extra = "allocator slack" if d.reserved else "CUDA context + allocator slack"
        lines.append(f"  {_gib(d.peak - d.subtotal)}  {extra} ({int(SLACK * 100)} % of what is not a reserved pool)")
        verdict = "fits" if d.fits else "DOES NOT FIT"
        lines.append(f"  {_gib(d.peak)}  peak of {d.budget / GIB:.0f} GiB: {verdict}")
        lines.extend(f"  DOES NOT FIT: {p}" for p in d.problems)
        lines.extend(f"  note: {n}" for n in d.notes)
    return "\n".join(lines)


def node_groups(cfg: Any, roles: tuple[str, ...] = ("learner", "rollout", "scorer")) -> list[str]:
    """One line per group of roles that share a placement (resources.<role>_placement): its GPUs and how many
    nodes of resources.gpus_per_node they take (a learner group is never split below one node's GPUs)."""
    r = cfg.resources
    gpus = {"learner": r.learner_ranks * r.gpus_per_actor, "sft_teacher": r.learner_ranks * r.gpus_per_actor,
            "sft_student": r.learner_ranks * r.gpus_per_actor,
            "rollout": cfg.rollout.num_workers * cfg.rollout.tensor_parallel_size * r.gpus_per_actor,
            "scorer": 0 if cfg.reward.kind == "verifier" else r.scorer_workers * r.gpus_per_actor}
    groups: dict[str, list[str]] = {}
    for role in roles:
        p = r["learner_placement" if role.startswith("sft_") else f"{role}_placement"]
        where = ", ".join(f"{k}={v}" for k, v in {**p.labels, **p.resources}.items()) or "any node"
        groups.setdefault(where, []).append(role)
    lines = []
    for where, members in groups.items():
        total = sum(gpus[m] for m in members)
        nodes = -(-int(total) // int(r.gpus_per_node)) if total else 0
        lines.append(f"  nodes with {where}: {' + '.join(f'{m} {gpus[m]:g}' for m in members)} = {total:g} GPUs "
                     f"-> {nodes} node(s) of {r.gpus_per_node} (resources.gpus_per_node)")
    return lines


def check_memory(cfg: Any, roles: tuple[str, ...] = ("learner", "rollout", "scorer")) -> list[Device]:
    """Refuse a GPU layout whose peak does not fit (MemoryPlanError with the arithmetic); CPU layouts are not
    checked here (host memory is shared by every actor; see the plan's CLI)."""
    if cfg.resources.device != "cuda":
        return []
    devices = plan(cfg, roles)
    bad = [d for d in devices if not d.fits]
    if bad:
        worst = "; ".join(
            f"{d.role}: peak {d.peak / GIB:.1f} GiB {'>' if d.peak > d.budget else 'of'} {d.budget / GIB:.0f} GiB ("
            + ", ".join(f"{name} {v / GIB:.1f}" for name, v in sorted(d.items, key=lambda x: -x[1])[:4])
            + ")" + "".join(f", and {p}" for p in d.problems)
            + f"; change {', '.join(d.keys)} or resources.gpu_memory_gib" for d in bad)
        raise MemoryPlanError(f"memory plan: the layout does not fit: {worst}. Full plan: python -m rlt_ray.memory "
                              f"--config <preset> [overrides]")
    return devices


def main(argv: list[str]) -> int:
    """``--sft teacher|student``: the plan of that SFT job (Ray Train workers) instead of the RL run's."""
    from rlt_ray.config import load_config, split_argv

    sft = None
    if "--sft" in argv:
        i = argv.index("--sft")
        sft, argv = (argv[i + 1] if i + 1 < len(argv) else ""), argv[:i] + argv[i + 2:]
        if sft not in ("teacher", "student"):
            print("memory plan: --sft takes teacher or student", file=sys.stderr)
            return 2
    preset, overrides = split_argv(argv)
    cfg = load_config(preset, overrides, job="sft" if sft else "rl")
    if sft:
        roles: tuple[str, ...] = (f"sft_{sft}",)
    else:
        roles = ("learner", "rollout", "scorer") + (("serve",) if cfg.serve.model or cfg.serve.student else ())
    try:
        devices = plan(cfg, roles)
    except MemoryPlanError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(render(cfg, devices, sft))
    if cfg.resources.device == "cuda":
        print("\nnodes, by placement (resources.*_placement):\n" + "\n".join(node_groups(cfg, roles if sft else
                                                                                      ("learner", "rollout", "scorer"))))
    return 0 if all(d.fits for d in devices) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
