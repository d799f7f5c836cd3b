"""The Grafana dashboard (rlt_ray.infra.dashboard) cannot drift from what the jobs export: the shipped JSON is what the
list generates, every panel names a metric the code logs, and (tests/test_validation.py, test_sft_train.py) every
metric a real run logs has a panel."""

import json
import re
from pathlib import Path

from rlt_ray.infra.dashboard import DASHBOARD, ROWS, metric_keys, render, series

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "rlt_ray" / "infra" / "step_metrics.py", ROOT / "actors" / "rl_step.py",
           ROOT / "actors" / "sft_train.py"]


def test_the_shipped_dashboard_is_the_generated_one():
    assert DASHBOARD.read_text() == render(), "run: python -m rlt_ray.infra.dashboard"


def test_every_panel_names_a_metric_the_code_logs_and_each_metric_has_one_panel():
    code = "\n".join(p.read_text() for p in SOURCES)
    seen: list[str] = []
    for row, panels in ROWS.items():
        for title, (_, keys) in panels.items():
            assert keys, (row, title)
            seen += keys
    assert len(seen) == len(set(seen)), [k for k in seen if seen.count(k) > 1]
    for key in metric_keys():
        base = re.sub(r"_(mean|std|min|max)$", "", key.removeprefix("val/"))
        # a literal key, or a summarize("name") family, or a reward part counted as "<part>_mean"
        assert f'"{key.removeprefix("val/")}"' in code or f'"{base}"' in code, key


def test_the_panels_query_the_series_ray_exports_and_pick_the_run():
    board = json.loads(render())
    exprs = [t["expr"] for p in board["panels"] if p["type"] == "timeseries" for t in p["targets"]]
    assert len(exprs) == len(metric_keys())
    assert 'ray_rlt_val_r_ss_mean{run=~"$run"}' in exprs and series("val/r_ss_mean") == "ray_rlt_val_r_ss_mean"
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "run"]


def assert_has_panels(metrics_jsonl: Path) -> None:
    """For the real-stack tests: every key a run logged has a panel."""
    keys = set()
    for line in metrics_jsonl.read_text().splitlines():
        keys |= set(json.loads(line)) - {"step", "time", "nonfinite"}
    missing = keys - metric_keys()
    assert not missing, f"logged but on no dashboard panel: {sorted(missing)}"
