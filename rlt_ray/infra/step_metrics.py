"""What one RL step (or one validation) logs, from its rollouts, scores and the learners' results: the reward
and its parts, lengths, the loss, the sync, and the seconds and tokens/s of each stage. Pure functions over the
batch dicts (rlt_ray.data.rollout_batch)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def reward_part_metrics(rollouts, scored) -> dict[str, float]:
    """The reward, its parts (the RLT reward's, or the verifier's: correct is accuracy, formatted both blocks
    closed) and the completions' lengths, over a step's or a validation's samples."""
    from rlt_ray.infra.metrics import summarize

    lengths = [len(c) for r in rollouts for c in r["completion_ids"]]
    finish = [f for r in rollouts for f in r["finish_reason"]]
    m: dict[str, float] = dict(summarize("reward", np.concatenate([s["total"] for s in scored])))
    for key in ("r_ss", "r_kl", "match", "explanation_tokens", "solution_tokens", "correct", "formatted", "overlong"):
        if key in scored[0]:
            m[f"{key}_mean"] = float(np.concatenate([s[key] for s in scored]).mean())
    if "correct" in scored[0]:
        m["accuracy"], m["format_rate"] = m.pop("correct_mean"), m.pop("formatted_mean")
        m["overlong_fraction"] = m.pop("overlong_mean")  # cut at the token limit or run on: no answer reward
    m["closed_tag_fraction"] = float(np.mean(np.concatenate([s["match"] for s in scored]) == 0.0))
    m.update(summarize("completion_tokens", lengths))
    m["truncated_fraction"] = float(np.mean([f == "length" for f in finish]))
    return m


def step_metrics(rollouts, scored, trained, sync_stats, t_step) -> dict[str, float]:
    from rlt_ray.method.grpo import signal_fraction

    total = np.concatenate([s["total"] for s in scored])
    lengths = [len(c) for r in rollouts for c in r["completion_ids"]]
    # busy time per stage: a worker's chunks each count from its call's start; a scorer's and a rank's add up
    gen_s = max(r["seconds"] for r in rollouts)
    per_scorer: dict[int, float] = {}
    for s in scored:
        per_scorer[s["scorer"]] = per_scorer.get(s["scorer"], 0.0) + s["seconds"]
    score_s = max(per_scorer.values())
    learn_s = max(t["seconds"] for t in trained)
    m = reward_part_metrics(rollouts, scored)
    m["signal_fraction"] = signal_fraction(total, int(rollouts[0]["n"]))  # groups with a non-zero advantage
    m["loss"] = float(np.mean([t["loss"] for t in trained]))
    m["policy_kl"] = float(np.mean([t["kl"] for t in trained]))
    m["clip_fraction"] = float(np.mean([t["clip_fraction"] for t in trained]))  # grpo.clip_eps: tokens clipped
    m["grad_norm"] = float(trained[0]["grad_norm"])
    m["update_ratio"] = float(trained[0]["update_ratio"])  # ||Δθ|| / ||θ|| of the step's last optimizer step
    m["lr"] = float(trained[0]["lr"])
    m["sync_seconds"] = sync_stats.seconds if sync_stats else 0.0
    m["sync_bytes"] = float(sync_stats.bytes) if sync_stats else 0.0
    m["sync_engine_reload_seconds"] = sync_stats.engine_reload_s if sync_stats else 0.0  # vLLM's own part
    m["sync_engine_post_seconds"] = sync_stats.engine_post_s if sync_stats else 0.0  # of it: post-load processing
    m["generate_seconds"], m["score_seconds"], m["learn_seconds"] = gen_s, score_s, learn_s
    m["generate_tokens_per_s"] = sum(lengths) / max(gen_s, 1e-9)
    m["score_tokens_per_s"] = sum(s["tokens"] for s in scored) / max(score_s, 1e-9)
    m["learn_tokens_per_s"] = sum(t["tokens"] for t in trained) / max(learn_s, 1e-9)
    m["step_seconds"] = time.perf_counter() - t_step
    return m


def sample_records(rows, chunks, scored) -> list[dict[str, Any]]:
    records = []
    for chunk, part in zip(chunks, scored):
        n = chunk["sequences"] // len(chunk["rows"])
        for j, (explanation, reward) in enumerate(zip(part["explanations"], part["total"])):
            records.append({"row": rows[chunk["rows"][j // n]].id, "explanation": explanation,
                            "reward": float(reward)})
    return records
