"""The Grafana dashboard for the jobs' Prometheus metrics, generated from the one list of what they export.

Every scalar a job logs (metrics.jsonl, the trackers) is also a Ray gauge, ``rlt_<key>`` (rlt_ray.infra.metrics;
"/" becomes "_"), tagged with the run's name; Ray's metrics agent exports it as ``ray_rlt_<key>`` to Prometheus,
beside Ray's own ``ray_*`` series that its bundled Grafana dashboards read. ``ROWS`` below lists every key, grouped
into the dashboard's rows and panels: the RL job's and the SFT jobs'. Tests check that what the jobs really log is
in it, and that docs/grafana/rlt_dashboard.json is what it generates:

    python -m rlt_ray.infra.dashboard            # writes docs/grafana/rlt_dashboard.json
    python -m rlt_ray.infra.dashboard --check    # exit 1 if the file is out of date
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rlt_ray.infra.metrics import metric_name

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "rlt_dashboard.json"


def _summary(name: str) -> list[str]:
    return [f"{name}_{s}" for s in ("mean", "std", "min", "max")]


# row -> panel title -> (unit, metric keys). Every key a job logs, once.
ROWS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "Reward": {
        "reward": ("none", _summary("reward")),
        "RLT reward parts: r_SS and r_KL": ("none", ["r_ss_mean", "r_kl_mean", "match_mean"]),
        "verifier: accuracy and format": ("percentunit", ["accuracy", "format_rate", "overlong_fraction"]),
        "groups with a learning signal": ("percentunit", ["signal_fraction"]),
    },
    "Validation (run.eval_every)": {
        "validation reward": ("none", _summary("val/reward")),
        "validation RLT parts": ("none", ["val/r_ss_mean", "val/r_kl_mean", "val/match_mean"]),
        "validation rates": ("percentunit", ["val/accuracy", "val/format_rate", "val/overlong_fraction",
                                             "val/closed_tag_fraction", "val/truncated_fraction"]),
        "validation lengths": ("none", _summary("val/completion_tokens")
                               + ["val/explanation_tokens_mean", "val/solution_tokens_mean"]),
        "validation seconds": ("s", ["val/seconds"]),
    },
    "Completions": {
        "completion tokens": ("none", _summary("completion_tokens")
                              + ["explanation_tokens_mean", "solution_tokens_mean"]),
        "closed tags and truncation": ("percentunit", ["closed_tag_fraction", "truncated_fraction"]),
    },
    "Learner": {
        "loss": ("none", ["loss"]),
        "policy KL and clipping": ("none", ["policy_kl", "clip_fraction"]),
        "gradient norm and update size": ("none", ["grad_norm", "update_ratio"]),
        "learning rate": ("none", ["lr"]),
    },
    "Throughput": {
        "tokens/s per stage": ("none", ["generate_tokens_per_s", "score_tokens_per_s", "learn_tokens_per_s"]),
        "seconds per stage": ("s", ["generate_seconds", "score_seconds", "learn_seconds", "step_seconds"]),
    },
    "Weight sync and staleness": {
        "sync seconds": ("s", ["sync_seconds", "sync_engine_reload_seconds", "sync_engine_post_seconds"]),
        "sync bytes": ("bytes", ["sync_bytes"]),
        "weights version and staleness": ("none", ["weights_version", "staleness", "chunks"]),
    },
    "Faults and reward hacking": {
        "actors replaced, unscorable samples": ("none", ["actors_replaced", "unscorable_samples"]),
        "explanations shared across questions": ("percentunit", ["shared_explanation_fraction",
                                                                 "window_shared_fraction"]),
        "hack signs seen": ("none", ["hack_signs"]),
    },
    "SFT (Ray Train)": {
        "SFT loss": ("none", ["nll"]),
        "SFT throughput": ("none", ["tokens_per_s", "target_tokens"]),
        "SFT epoch": ("none", ["epoch"]),
    },
}


def metric_keys() -> set[str]:
    """Every key the dashboard shows: what the jobs export (``step_seconds``, ``lr``, ``grad_norm``: both kinds)."""
    return {key for panels in ROWS.values() for _, keys in panels.values() for key in keys}


def series(key: str) -> str:
    """The Prometheus series of a logged key, as Ray exports it."""
    return "ray_" + metric_name(key)


def dashboard() -> dict:
    """The Grafana dashboard (schema 39): one row per ``ROWS`` entry, one time series panel per panel, a run
    picker (the gauges' ``run`` tag) and a Prometheus data source picker."""
    panels, y, pid = [], 0, 1
    for row, row_panels in ROWS.items():
        panels.append({"type": "row", "title": row, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        pid, y = pid + 1, y + 1
        for i, (title, (unit, keys)) in enumerate(row_panels.items()):
            panels.append({
                "type": "timeseries", "title": title, "id": pid,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 8, "x": 8 * (i % 3), "y": y + 8 * (i // 3)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [{"refId": chr(ord("A") + j), "expr": f'{series(k)}{{run=~"$run"}}',
                             "legendFormat": f"{k} {{{{run}}}}"} for j, k in enumerate(keys)],
            })
            pid += 1
        y += 8 * ((len(row_panels) + 2) // 3)
    return {
        "title": "RLT on Ray", "uid": "rlt-ray", "schemaVersion": 39, "version": 1, "editable": True,
        "tags": ["ray", "rlt"], "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "run", "type": "query", "label": "Run", "multi": True, "includeAll": True,
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": f"label_values({series('step_seconds')}, run)", "refresh": 2},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=1) + "\n"


def main(argv: list[str]) -> int:
    if "--check" in argv:
        if not DASHBOARD.exists() or DASHBOARD.read_text() != render():
            print(f"{DASHBOARD} is out of date: run python -m rlt_ray.infra.dashboard", file=sys.stderr)
            return 1
        return 0
    DASHBOARD.parent.mkdir(parents=True, exist_ok=True)
    DASHBOARD.write_text(render())
    print(f"wrote {DASHBOARD} ({len(metric_keys())} metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
