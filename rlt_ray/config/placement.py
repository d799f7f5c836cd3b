"""Where each role of the RL job runs (resources.learner_placement / rollout_placement / scorer_placement): Ray
node labels and custom resources, checked against the cluster's nodes at start so that a layout the cluster cannot
place fails with the keys named instead of waiting for resources forever. Pure functions over the config and the
node list of ``ray.nodes()``; the actors' options come from ``role_options``."""

from __future__ import annotations

from typing import Any

from rlt_ray.errors import ConfigError

ROLES = ("learner", "rollout", "scorer")


def _selector_matches(value: str | None, selector: str) -> bool:
    """One label against Ray's selector syntax: "v", "!v", "in(a,b)", "!in(a,b)"."""
    negate = selector.startswith("!")
    body = selector[1:] if negate else selector
    if body.startswith("in(") and body.endswith(")"):
        hit = value in [v.strip() for v in body[3:-1].split(",")]
    else:
        hit = value == body
    return hit != negate


def node_fits(node: dict, labels: dict[str, str], resources: dict[str, float]) -> bool:
    """Whether ``node`` (an entry of ray.nodes()) has the labels and at least the custom resources of one actor."""
    node_labels = node.get("Labels") or {}
    have = node.get("Resources") or {}
    return (all(_selector_matches(node_labels.get(k), str(v)) for k, v in labels.items())
            and all(have.get(k, 0.0) >= float(v) for k, v in resources.items()))


def placement(cfg: Any, role: str) -> tuple[dict[str, str], dict[str, float]]:
    p = cfg.resources[f"{role}_placement"]
    return ({str(k): str(v) for k, v in (p.labels or {}).items()},
            {str(k): float(v) for k, v in (p.resources or {}).items()})


def role_options(cfg: Any, role: str) -> dict[str, Any]:
    """The Ray actor options that place one actor of ``role`` (rollout, scorer): label_selector and resources.
    The learners get theirs through their placement group's bundles (actors/learner.py)."""
    labels, resources = placement(cfg, role)
    options: dict[str, Any] = {}
    if labels:
        options["label_selector"] = labels
    if resources:
        options["resources"] = resources
    return options


def check_placement(cfg: Any, nodes: list[dict], per_actor: dict[str, dict[str, float]],
                    counts: dict[str, int]) -> None:
    """Fail at start when a role's actors cannot fit on the nodes its placement allows: ``per_actor[role]`` is the
    CPU/GPU of one actor, ``counts[role]`` how many there are. Each role is checked on its own (roles that share
    nodes are also checked together, by check_cluster, on the cluster's totals)."""
    alive = [n for n in nodes if n.get("Alive", n.get("alive", True))]
    for role in counts:
        if not counts[role]:
            continue
        labels, resources = placement(cfg, role)
        key = f"resources.{role}_placement"
        fits = [n for n in alive if node_fits(n, labels, resources)]
        if not fits:
            seen = [{"labels": n.get("Labels") or {}, "resources": n.get("Resources") or {}} for n in alive]
            raise ConfigError(f"config key '{key}': no alive node of the Ray cluster has labels {labels} and "
                              f"resources {resources} (nodes: {seen})")
        need = {k: v * counts[role] for k, v in per_actor[role].items() if v} | {
            k: v * counts[role] for k, v in resources.items()}
        have = {k: sum((n.get("Resources") or {}).get(k, 0.0) for n in fits) for k in need}
        short = {k: (need[k], have[k]) for k in need if need[k] > have[k] + 1e-9}
        if short:
            wanted = ", ".join(f"{k} {n:g}" for k, (n, _) in short.items())
            held = ", ".join(f"{k} {h:g}" for k, (_, h) in short.items())
            raise ConfigError(f"config key '{key}': {counts[role]} {role} actors need {wanted} on the nodes it "
                              f"allows ({len(fits)} with labels {labels}), which have {held}")
        if role == "learner" and cfg.resources.learner_strategy == "STRICT_PACK":
            one = {k: v * counts[role] for k, v in per_actor[role].items() if v}
            if not any(all((n.get("Resources") or {}).get(k, 0.0) >= v for k, v in one.items()) for n in fits):
                raise ConfigError(
                    f"config keys 'resources.learner_strategy'/'{key}': STRICT_PACK puts all {counts[role]} learner "
                    f"ranks ({one}) on one node, and no allowed node is that large; use PACK or smaller ranks")
