"""bench/common.py: interleaved rounds, min/median ratios, and the last JSON line naming the machine."""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
_before = os.environ.get("VLLM_LOGGING_STREAM")
from common import emit, interleaved, ratios  # noqa: E402

if _before is None:  # common.py routes vLLM's logs for the benches; leave the other tests' environment alone
    os.environ.pop("VLLM_LOGGING_STREAM", None)


def test_sides_alternate_every_round_and_ratios_use_min_and_median():
    order = []
    times = interleaved({"slow": lambda: (order.append("slow"), time.sleep(0.02)),
                         "fast": lambda: (order.append("fast"), time.sleep(0.005))}, rounds=3)
    assert order == ["slow", "fast"] * 3
    assert len(times["slow"]["all_s"]) == 3 and times["slow"]["min_s"] <= times["slow"]["median_s"]
    r = ratios(times, "slow", "fast")
    assert r["ratio_of_min"] == times["slow"]["min_s"] / times["fast"]["min_s"] > 1.5
    assert r["ratio_of_median"] == times["slow"]["median_s"] / times["fast"]["median_s"]


def test_round_ratios_pair_the_sides_of_each_round():
    import statistics

    def side(seconds):
        return {"min_s": min(seconds), "median_s": statistics.median(seconds), "all_s": seconds}

    # the machine runs at 1x, 3x and 2x in the three rounds; the fast side also caught a quick spell in round 3
    r = ratios({"slow": side([2.0, 6.0, 4.0]), "fast": side([1.0, 3.0, 1.0])}, "slow", "fast")
    assert r["median_of_round_ratios"] == 2.0  # rounds: 2, 2, 4
    assert r["ratio_of_min"] == 2.0 and r["ratio_of_median"] == 4.0


def test_the_result_is_the_last_stdout_line_and_names_the_machine(capsys):
    print("a library log line")
    emit({"bench": "X", "value": 1.5})
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["bench"] == "X" and last["value"] == 1.5
    assert last["machine"]["cores"] >= 1 and isinstance(last["machine"]["avx512"], bool)
    assert last["machine"]["cpu"] and last["machine"]["torch"] and last["machine"]["ray"]


def test_p7_guard_passes_every_request_and_costs_more_than_the_bare_route(capsys):
    import serve_guard_cost

    assert serve_guard_cost.main(["--requests", "100", "--rounds", "3"]) == 0  # exits if the guard refused a request
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    per = result["us_per_request"]
    assert result["bench"] == "P7_guard" and result["specials"] > 0
    assert per["guarded"]["min_s"] > per["bare"]["min_s"] > 0  # the guard's checks are work on top of the route
