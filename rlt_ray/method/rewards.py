"""The RLT reward, batched and in fp32, on per-token log-probs. Pure tensor functions, no models.

    r = r_SS − r_KL + m
    r_SS = Σ_a c_a · R_a(g_lp(ℓ))     ℓ_j  = log π_S^(τ_S)(s_j | sys_S, q, t, s_<j)   on the solution tokens
    r_KL = Σ_b c_b · R_b(g_kl(δ))     δ_k  = log π_θ^(τ_T)(t_k | teacher ctx) − log π_S^(τ_S)(t_k | student ctx)
    m    = not_matched_penalty when the explanation's closing tag is missing, else 0

Inputs are left-aligned, right-padded [B, N] tensors with a bool mask; every part is returned for logging.

Where this departs from the reference, on purpose:
- An empty span gives NaN for EVERY reduction (the reference returns ±finfo.max from min/max on an empty mask,
  i.e. a reward of ±1e36), and NaNs are filled before the coefficients as the reference does.
- The KL-side fill is a penalty for both variants (default −not_matched_penalty = +1). The reference fills the
  no-entropy variant with −1, which REWARDS an empty explanation (§8.6); set reward.nan_fill_kl to reproduce it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch


def masked_reduce(x: torch.Tensor, mask: torch.Tensor, op: str) -> torch.Tensor:
    """Reduce each row of ``x`` [B, N] over ``mask``; NaN where a row's mask is empty."""
    x = x.float()
    mask = mask.bool()
    count = mask.sum(-1)
    empty = count == 0
    if op == "mean":
        out = (x * mask).sum(-1) / count.clamp(min=1)
    elif op == "sum":
        out = (x * mask).sum(-1)
    elif op == "min":
        out = torch.where(mask, x, torch.full_like(x, float("inf"))).amin(-1)
    elif op == "max":
        out = torch.where(mask, x, torch.full_like(x, float("-inf"))).amax(-1)
    elif op in ("median", "first_quartile", "last_quartile"):
        q = {"median": 0.5, "first_quartile": 0.25, "last_quartile": 0.75}[op]
        out = torch.nanquantile(torch.where(mask, x, torch.full_like(x, float("nan"))), q, dim=-1)
    else:
        raise ValueError(f"unknown reduction {op!r}")
    return torch.where(empty, torch.full_like(out, float("nan")), out)


def normalize(x: torch.Tensor, fn: str) -> torch.Tensor:
    """g(x): 'none' identity, 'exp' exp(x) (log-probs → probs), 'exp_norm' 1 − exp(−x) (KL ≥ 0 → [0, 1))."""
    if fn == "none":
        return x
    if fn == "exp":
        return torch.exp(x)
    if fn == "exp_norm":
        return 1.0 - torch.exp(-x)
    raise ValueError(f"unknown normalisation {fn!r}")


def kl_terms(teacher_lp: torch.Tensor, student_lp: torch.Tensor, estimator: str, include_teacher: bool) -> torch.Tensor:
    """Per-token explanation terms: k1 log-ratio δ, k3 δ − 1 + exp(−δ) (≥ 0), or (include_teacher False) the
    student's NLL −log π_S(t)."""
    if not include_teacher:
        return -student_lp.float()
    delta = teacher_lp.float() - student_lp.float()
    if estimator == "k1":
        return delta
    if estimator == "k3":
        return delta - 1.0 + torch.exp(-delta)
    raise ValueError(f"unknown KL estimator {estimator!r}")


@dataclass(frozen=True)
class RewardSpec:
    """The numbers that define the reward (config section `reward`)."""

    answer_log_prob_coeff: Sequence[float] = (1.0, 0.01)
    log_prob_reductions: Sequence[str] = ("mean", "min")
    kl_penalty_coeff: Sequence[float] = (3.0, 0.03)
    kl_reductions: Sequence[str] = ("mean", "max")
    normalize_log_prob_fn: str = "none"
    normalize_kl_fn: str = "none"
    clip_log_prob: float = 1e5
    clip_kl: float = 1e5
    kl_estimator: str = "k1"
    include_teacher_think_entropy: bool = True
    not_matched_penalty: float = -1.0
    nan_fill_log_prob: Optional[float] = None
    nan_fill_kl: Optional[float] = None

    @classmethod
    def from_config(cls, reward_cfg: Any) -> "RewardSpec":
        names = cls.__dataclass_fields__
        return cls(**{k: (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
                      for k, v in dict(reward_cfg).items() if k in names})

    @property
    def lp_fill(self) -> float:
        return self.not_matched_penalty if self.nan_fill_log_prob is None else self.nan_fill_log_prob

    @property
    def kl_fill(self) -> float:
        return -self.not_matched_penalty if self.nan_fill_kl is None else self.nan_fill_kl


def _weighted(values: torch.Tensor, mask: torch.Tensor, reductions, coeffs, fill: float) -> tuple[torch.Tensor, dict]:
    parts = {}
    total = torch.zeros(values.shape[0], dtype=torch.float32, device=values.device)
    for op, c in zip(reductions, coeffs, strict=True):
        r = masked_reduce(values, mask, op)
        r = torch.nan_to_num(r, nan=fill, posinf=fill, neginf=fill)
        parts[op] = r
        total = total + float(c) * r
    return total, parts


def rlt_reward(
    spec: RewardSpec,
    solution_lp: torch.Tensor,
    solution_mask: torch.Tensor,
    teacher_expl_lp: torch.Tensor,
    student_expl_lp: torch.Tensor,
    expl_mask: torch.Tensor,
    matched: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Every part of the reward, each [B] fp32: ``total`` plus r_ss, r_kl, match, the reduced components, and the
    other KL variant's total (``total_no_entropy`` / ``total_with_entropy``) for logging."""
    lp = normalize(solution_lp.float(), spec.normalize_log_prob_fn).clamp(min=-spec.clip_log_prob)
    r_ss, ss_parts = _weighted(lp, solution_mask, spec.log_prob_reductions, spec.answer_log_prob_coeff, spec.lp_fill)
    match = torch.where(matched.bool(), 0.0, spec.not_matched_penalty).float()

    def kl_side(include_teacher: bool):
        d = kl_terms(teacher_expl_lp, student_expl_lp, spec.kl_estimator, include_teacher)
        d = normalize(d, spec.normalize_kl_fn).clamp(max=spec.clip_kl)
        return _weighted(d, expl_mask, spec.kl_reductions, spec.kl_penalty_coeff, spec.kl_fill)

    r_kl, kl_parts = kl_side(spec.include_teacher_think_entropy)
    r_kl_other, _ = kl_side(not spec.include_teacher_think_entropy)
    out = {
        "total": r_ss - r_kl + match,
        "r_ss": r_ss,
        "r_kl": r_kl,
        "match": match,
        "solution_tokens": solution_mask.sum(-1).float(),
        "explanation_tokens": expl_mask.sum(-1).float(),
    }
    out.update({f"answer_log_prob_{k}": v for k, v in ss_parts.items()})
    out.update({f"explanation_kl_{k}": v for k, v in kl_parts.items()})
    other = "total_no_entropy" if spec.include_teacher_think_entropy else "total_with_entropy"
    out[other] = r_ss - r_kl_other + match
    return out


def penalty_parts(spec: RewardSpec, count: int) -> dict[str, torch.Tensor]:
    """The reward parts of a sample that cannot be scored (its spans cannot be aligned, or its reward is not
    finite): those of an unclosed, empty explanation with an empty solution span, i.e. every fill value and the
    missing-tag penalty: −1.01 − 3.03 − 1 = −5.04 with the paper's numbers. Its total is then set relative to its
    group (``unscorable_totals``)."""
    empty = torch.zeros((count, 1), dtype=torch.float32)
    none = torch.zeros((count, 1), dtype=torch.bool)
    return rlt_reward(spec, empty, none, empty, empty, none, torch.zeros(count, dtype=torch.bool))


def unscorable_totals(totals: torch.Tensor, failed: torch.Tensor, n: int, not_matched_penalty: float,
                      fill: float) -> torch.Tensor:
    """Totals [G·n] with every failed sample's set to the lowest total of the scored samples of its GRPO group
    plus ``not_matched_penalty`` (−1): never better than a real sample of its group, so GRPO pushes away from it
    whatever the reward's scale (an untrained student's rewards are far below any fixed penalty). A group with no
    scored sample gets ``fill`` for all (the same value: no advantage, no gradient)."""
    out = totals.clone().float()
    for g in range(0, len(out), n):
        bad = failed[g:g + n].bool()
        if not bad.any():
            continue
        good = out[g:g + n][~bad]
        value = float(good.min()) + not_matched_penalty if good.numel() else fill
        out[g:g + n][bad] = value
    return out


def left_align(rows: Sequence[torch.Tensor], device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """A list of 1-D tensors of different lengths → (padded [B, N] fp32, bool mask [B, N])."""
    n = max([int(r.numel()) for r in rows] + [1])
    values = torch.zeros((len(rows), n), dtype=torch.float32, device=device)
    mask = torch.zeros((len(rows), n), dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        values[i, : r.numel()] = r.float()
        mask[i, : r.numel()] = True
    return values, mask
