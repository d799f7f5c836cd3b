"""The Serve app's other layout (serve.engine_in_ingress, docs/serving.md): tests/test_serve.py covers the default
one route by route; here the other is deployed the README's way and every kind of route is asked once, so both
layouts stay working: its deployments are the layout's, and the answers have the default's shape."""

import pytest
import requests
from helpers.cluster import deployed_app, loopback_cluster, serve_status

from rlt_ray.config.schema import ServeConfig

pytestmark = [pytest.mark.ray, pytest.mark.vllm]
TOKEN = "test-token-456"
OTHER = not ServeConfig().engine_in_ingress  # the layout test_serve.py does not deploy
GOOD = {"question": "Tom has 3 apples and buys 4 more. How many apples?", "solution": "The final answer is \\boxed{7}."}


@pytest.fixture(scope="module")
def other_layout(tmp_path_factory):
    with loopback_cluster(RLT_SERVE_TOKEN=TOKEN, RAY_AUTH_MODE="token") as env:
        with deployed_app(env, [f"serve.engine_in_ingress={str(OTHER).lower()}", "serve.max_tokens=32"],
                          tmp_path_factory.mktemp("serve")) as url:
            yield env, url


@pytest.mark.slow  # the default layout is CI's (tests/test_serve.py); this one costs 85 s of its budget
def test_the_other_layout_has_its_deployments_and_answers_every_route(other_layout):
    env, url = other_layout
    deployments = set(serve_status(env)["applications"]["rlt-teacher"]["deployments"])
    if OTHER:  # the engine in the ingress's replica: no LLMServer deployment, no ingress of its own
        assert deployments == {"TeacherReplica", "ScorerDeployment"}, deployments
    else:
        assert "TeacherIngress" in deployments and any(d.startswith("LLMServer") for d in deployments), deployments
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{url}/healthz", timeout=30).json() == {"status": "ok"}
    assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401  # the token on every route
    (card,) = requests.get(f"{url}/v1/models", headers=auth, timeout=30).json()["data"]
    assert card["id"] == "tiny-teacher" and card["metadata"]["weights_version"] == 0
    done = requests.post(f"{url}/v1/completions", json={"model": "tiny-teacher", "prompt": "Tom has", "max_tokens": 6,
                                                        "n": 2, "seed": 2}, headers=auth, timeout=120).json()
    assert len(done["choices"]) == 2 and done["usage"]["completion_tokens"] <= 12
    raw = requests.post(f"{url}/v1/chat/completions", json={"model": "tiny-teacher", "max_tokens": 8, "stream": True,
                                                            "messages": [{"role": "user", "content": "Hi!"}]},
                        headers=auth, stream=True, timeout=120)
    lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and lines[-1] == b"data: [DONE]"
    assert len(lines) > 2  # streamed: chunks, then [DONE]
    answer = requests.post(f"{url}/v1/explain", json={**GOOD, "n": 2, "max_tokens": 16, "seed": 1},
                           headers=auth, timeout=120).json()
    assert len(answer["explanations"]) == 2 and all("total" in e["reward"] for e in answer["explanations"])
    streamed = requests.post(f"{url}/v1/explain", json={**GOOD, "n": 2, "max_tokens": 16, "seed": 1, "stream": True},
                             headers=auth, stream=True, timeout=120)
    *deltas, last = [line for line in streamed.iter_lines() if line]
    assert deltas and last.startswith(b'{"done": true')
    over = requests.post(f"{url}/v1/completions", json={"model": "tiny-teacher", "prompt": "a", "max_tokens": 33},
                         headers=auth, timeout=60)
    assert over.status_code == 422 and over.json()["error"]["field"] == "max_tokens"
