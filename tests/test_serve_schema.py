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


def test_serve_config_file_is_valid_and_builds():
    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from rlt_ray.config import REPO_ROOT
    from serve.app import app_builder

    raw = yaml.safe_load((REPO_ROOT / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1"
    (app,) = schema.applications
    assert app.import_path == "serve.app:app_builder"
    assert isinstance(app_builder(app.args), serve.Application)
