import json
from pathlib import Path

import pytest

from serve.schema import Limits, RequestError, parse_body, parse_explain

LIMITS = Limits(max_tokens=64, max_n=4, max_body_bytes=200, max_field_chars=50, reward_available=False)


def test_defaults_and_a_full_request():
    req = parse_explain({"question": "q", "solution": "s"}, LIMITS, 0.7)
    assert (req.max_tokens, req.temperature, req.n, req.seed, req.stream, req.best_of) == (64, 0.7, 1, None, False, False)
    req = parse_explain({"question": "q", "solution": "s", "max_tokens": 8, "temperature": 0, "n": 4, "seed": 3,
                         "stream": True}, LIMITS, 0.7)
    assert (req.max_tokens, req.temperature, req.n, req.seed, req.stream) == (8, 0.0, 4, 3, True)


@pytest.mark.parametrize("raw,status", [
    (b"x" * 201, 413), (b"\xc3\x28", 400), (b"{", 400), (b'{"a": Infinity}', 400), (b"[]", 422), (b'"s"', 422),
])
def test_body_errors(raw, status):
    with pytest.raises(RequestError) as err:
        parse_body(raw, LIMITS)
    assert err.value.status == status and err.value.body()["error"]["status"] == status


def test_best_of_needs_a_student():
    with pytest.raises(RequestError, match="serve.student") as err:
        parse_explain({"question": "q", "solution": "s", "best_of": True}, LIMITS, 0.7)
    assert err.value.field == "best_of"
    ok = Limits(reward_available=True)
    assert parse_explain({"question": "q", "solution": "s", "best_of": True}, ok, 0.7).best_of


def test_serve_config_file_is_valid_and_builds(monkeypatch):
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from rlt_ray.config import REPO_ROOT
    from rlt_ray.errors import ConfigError
    from serve.app import app_builder

    raw = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    assert app.import_path == "serve.app:app_builder"
    assert "serve.auth_token_env=RLT_SERVE_TOKEN" in app.args["overrides"]  # safe by default
    monkeypatch.delenv("RLT_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="RLT_SERVE_TOKEN"):  # no token: refused before anything starts
        app_builder(app.args)
    monkeypatch.setenv("RLT_SERVE_TOKEN", "t")
    import ray

    started_here = not ray.is_initialized()
    try:  # ray.serve.llm's builder reads the runtime context, which starts a local Ray when there is none
        assert isinstance(app_builder(app.args), serve.Application)
    finally:
        if started_here and ray.is_initialized():
            ray.shutdown()  # the later tests start their own


@pytest.mark.parametrize("raw,field", [
    (b'{"question": "a\\ud800b", "solution": "s"}', "question"),
    (b'{"messages": [{"role": "user", "content": "x\\udc00"}]}', "messages[0].content"),
    (b'{"a\\ud800": 1}', None),
    (b"[" * 5000 + b"]" * 5000, None),
    (b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", "a" + "[0]" * 31),
])
def test_json_limits_name_where_the_problem_is(raw, field):
    with pytest.raises(RequestError) as err:
        parse_body(raw, Limits(max_body_bytes=20000))
    assert err.value.status == 422 and err.value.field == field


@pytest.mark.parametrize("name", ["max_tokens", "n", "seed", "temperature", "stream", "best_of"])
def test_an_explicit_null_is_refused_naming_the_field(name):
    with pytest.raises(RequestError, match="null") as err:
        parse_explain({"question": "q", "solution": "s", name: None}, LIMITS, 0.7)
    assert err.value.status == 422 and err.value.field == name


def test_errors_carry_the_openai_error_fields_too():
    body = RequestError(401, "authorization", "no").body()["error"]
    assert body == {"status": 401, "field": "authorization", "message": "no", "type": "authentication_error",
                    "param": "authorization", "code": 401}


def _asgi_call(guard, headers, chunks, delay_s=0.0, path="/v1/explain", method="POST"):
    """Drive the guard like a server would: the body in ``chunks`` (a None chunk: the client stops sending)."""
    import asyncio

    sent, seen = [], {}

    async def inner(scope, receive, send):
        msg = await receive()
        seen["body"] = msg["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    guard.app = inner
    queue = list(chunks)

    async def receive():
        if queue and queue[0] is None:
            await asyncio.sleep(3600)
        await asyncio.sleep(delay_s)
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method,
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    payload = sent[1]["body"]
    return status, (json.loads(payload) if status != 200 else payload), seen.get("body")


def test_the_guard_checks_token_size_deadline_and_json_before_the_route(monkeypatch):
    from serve.guard import RequestGuard

    monkeypatch.setenv("GUARD_TOKEN", "s3cret")
    guard = RequestGuard(None, "GUARD_TOKEN", Limits(max_body_bytes=100, max_json_depth=4), body_timeout_s=0.3)
    ok = {"authorization": "Bearer s3cret", "content-type": "application/json"}
    status, _, body = _asgi_call(guard, ok, [b'{"a": ', b'"b"}'])
    assert status == 200 and body == b'{"a": "b"}'  # the route sees the whole body, replayed
    assert _asgi_call(guard, {**ok, "authorization": "Bearer nope"}, [b"{}"])[0] == 401
    assert _asgi_call(guard, {**ok, "content-length": "101"}, [b"{}"])[0] == 413
    status, err, _ = _asgi_call(guard, {**ok, "content-type": "text/plain"}, [b"{}"])
    assert status == 415 and err["error"]["field"] == "content-type"
    assert _asgi_call(guard, ok, [b"x" * 60, b"x" * 60])[0] == 413
    status, err, _ = _asgi_call(guard, ok, [b'{"a": ', None])  # the client stops sending
    assert status == 408 and "serve.body_timeout_s" in err["error"]["message"]
    status, err, _ = _asgi_call(guard, ok, [b'{"a": [[[[1]]]]}'])
    assert status == 422 and err["error"]["field"] == "a[0][0][0]"
    assert _asgi_call(guard, ok, [b"not json"])[0] == 200  # the route names invalid JSON in its own words
    monkeypatch.delenv("GUARD_TOKEN")
    with pytest.raises(RuntimeError, match="GUARD_TOKEN"):  # fail closed
        RequestGuard(None, "GUARD_TOKEN", Limits(), 1.0)


def test_readiness_waits_for_a_real_answer_never_blocks_the_prober_and_retries_a_failed_check():
    import asyncio

    from serve.engine import ReadyProbe

    async def scenario():
        gate, calls = asyncio.Event(), []

        async def check():  # the engine: first it fails, then it answers once the gate opens
            calls.append(len(calls))
            if len(calls) == 1:
                raise RuntimeError("engine core died")
            await gate.wait()

        probe = ReadyProbe(check, wait_s=0.05)
        t0 = asyncio.get_running_loop().time()
        assert await probe.ready() is False  # the first check failed
        assert await probe.ready() is False and probe.error == "RuntimeError: engine core died"  # started again
        assert asyncio.get_running_loop().time() - t0 < 1.0  # each call waits at most wait_s, not for the engine
        assert await probe.ready() is False and len(calls) == 2  # still running: not started a third time
        gate.set()
        assert await probe.ready() is True and await probe.ready() is True and len(calls) == 2

    asyncio.run(scenario())


def test_the_probes_are_the_only_paths_without_the_token(monkeypatch):
    from serve.guard import RequestGuard

    monkeypatch.setenv("GUARD_TOKEN", "s3cret")
    guard = RequestGuard(None, "GUARD_TOKEN", Limits(), body_timeout_s=1.0)
    for path, status in (("/healthz", 200), ("/readyz", 200), ("/v1/models", 401), ("/docs", 401)):
        assert _asgi_call(guard, {}, [b""], path=path, method="GET")[0] == status, path


def test_the_served_model_id_names_the_checkpoint(tmp_path):
    from rlt_ray.config import load_config
    from serve.engine import served_model_id

    ckpt = tmp_path / "run" / "checkpoints" / "step_000040" / "hf"
    ckpt.mkdir(parents=True)
    assert served_model_id(load_config(None, [f"serve.model={ckpt}"])) == "step_000040"
    assert served_model_id(load_config(None, [])) == "tiny-teacher"
    assert served_model_id(load_config(None, [f"serve.model={ckpt}", "serve.model_id=my-teacher"])) == "my-teacher"


def test_the_teacher_engine_skips_the_librarys_download_task():
    """ray.serve.llm runs a Ray task per node before each engine to fetch the model from a cloud mirror; the
    served model is always a local folder, so that task (a worker process of its own) is skipped."""
    import asyncio

    from rlt_ray.config import load_config
    from serve.engine import llm_config, LocalFolderInit

    config = llm_config(load_config(None, []))
    assert Path(config.model_loading_config.model_source).is_dir()
    callback = LocalFolderInit(llm_config=config, ctx_kwargs={})
    assert callback.ctx.run_init_node  # the library's default: initialise
    asyncio.run(callback.on_before_node_init())
    assert not callback.ctx.run_init_node
    assert config.callback_config.callback_class is LocalFolderInit
