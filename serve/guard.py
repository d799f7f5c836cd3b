"""The request guard in front of every route of the Serve app: one pure-ASGI middleware.

For each HTTP request, before any route or FastAPI body parsing runs:
  1. the bearer token (every path but the probes ``/healthz`` and ``/readyz``, so ``/docs`` and ``/openapi.json``
     too), compared in constant time; the token is read from the replica's own environment
     (``serve.auth_token_env``), never passed in;
  2. the body, read whole under a size limit (413) and a deadline (408: a client that sends 1 byte/s, or declares
     more bytes than it sends, holds nothing for longer than ``serve.body_timeout_s``);
  3. a POST's content type (415 unless application/json), and a JSON body's shape: nesting depth and lone surrogates (422 naming where), which would otherwise be a
     ``RecursionError`` or an encoder error deep inside — a 500;
then the route sees the buffered body, replayed. Streaming responses pass through untouched (pure ASGI, not
Starlette's BaseHTTPMiddleware, which buffers them).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from typing import Any, Optional

from serve.schema import Limits, RequestError, load_json

OPEN_PATHS = ("/healthz", "/readyz")  # probes carry no token; neither says more than up/ready


def bearer_ok(header: Optional[str], token: str) -> bool:
    return hmac.compare_digest((header or "").encode(), f"Bearer {token}".encode())


def read_token(env_name: Optional[str]) -> Optional[str]:
    """The bearer token from this process's environment; a configured but unset variable is an error (fail
    closed: never serve without the token the config asks for)."""
    if not env_name:
        return None
    token = os.environ.get(env_name)
    if not token:
        raise RuntimeError(f"config key 'serve.auth_token_env': environment variable {env_name} is not set in this "
                           f"replica's environment (set it where the Ray nodes start: scripts/cluster.sh, or the "
                           f"shell that runs `serve run`)")
    return token


class RequestGuard:
    def __init__(self, app: Any, token_env: Optional[str], limits: Limits, body_timeout_s: float):
        self.app, self.limits, self.body_timeout_s = app, limits, float(body_timeout_s)
        self.token = read_token(token_env)  # built in the replica, on its first request

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        try:
            if self.token is not None and not bearer_ok(headers.get("authorization"), self.token):
                raise RequestError(401, "authorization", "missing or wrong bearer token")
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if scope.get("method") == "POST" and ctype != "application/json":
                raise RequestError(415, "content-type", f"must be application/json, got {ctype or 'nothing'}")
            body = await self._read_body(headers, receive)
            if body and ctype == "application/json":
                try:
                    load_json(body.decode("utf-8"), self.limits.max_json_depth)
                except UnicodeDecodeError:
                    pass  # the route answers 400 naming the byte
                except RequestError as err:
                    if err.status != 400:  # invalid JSON is the route's to answer, in its own words
                        raise
        except RequestError as err:
            await _send_error(send, err)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, headers: dict[str, str], receive: Any) -> bytes:
        limit = self.limits.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, None, f"request body is {declared} bytes; the limit is {limit}")
        deadline = time.monotonic() + self.body_timeout_s
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                raise RequestError(408, None, f"request body not received within {self.body_timeout_s:g} s "
                                              f"(serve.body_timeout_s)") from None
            if message["type"] == "http.disconnect":
                raise RequestError(400, None, "client disconnected while sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise RequestError(413, None, f"request body is over {limit} bytes (serve.max_body_bytes)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any):
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: the client's disconnect, for streaming responses

    return replayed


async def _send_error(send: Any, err: RequestError) -> None:
    payload = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if err.status in (408, 413):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
