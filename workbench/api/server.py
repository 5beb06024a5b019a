"""OpenAI-compatible HTTP API over the ModelService: /v1/models, /v1/chat/completions,
/v1/completions (streaming and not) and /health.

Owns the wire format only: request validation, OpenAI response and error shapes,
Server-Sent Events, the API key check and CORS. Requests share the model worker's
scheduler (several generate at once; the rest wait in arrival order) and wait without
holding a thread, so hundreds of clients cannot starve the server; a client that hangs up
ends its generation at the next token, so it never holds a slot. A request can never name a
file path, load a model, or set trust_remote_code: it can only use what is loaded.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

from ..errors import NoModelLoaded, WorkbenchError, WorkerDied
from ..http_guard import FailureThrottle, GuardRules, HostPolicy, RequestGuard, client_of
from ..model_values import GenerationStats
from ..options import GenerationRequest
from ..services.model_service import ModelService
from .schema import ApiError, parse_chat_request, parse_completion_request


def error_response(status: int, message: str, kind: str, code: str | None = None, param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _status_for(e: WorkbenchError) -> tuple[int, str]:
    if isinstance(e, (NoModelLoaded, WorkerDied)):
        return 503, "server_error"
    return 400, "invalid_request_error"


MAX_BODY_BYTES = 8 << 20  # a chat request of MAX_PROMPT_CHARS characters fits with room to spare


class RequireApiKey:
    """ASGI middleware: every request but a CORS preflight needs `Authorization: Bearer <key>`.

    A client that sends wrong keys waits longer and longer between tries (FailureThrottle),
    so a key cannot be guessed by brute force. Plain ASGI rather than Starlette's
    BaseHTTPMiddleware, which hides a client's hang-up from the routes (so a generation
    could not be stopped when its client left).
    """

    def __init__(self, app, api_key: str, throttle: FailureThrottle | None = None):
        self.app, self.api_key = app, api_key.encode()
        self.throttle = throttle if throttle is not None else FailureThrottle()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            client = client_of(scope)
            wait = self.throttle.wait_s(client)
            if wait > 0:
                response = error_response(429, f"Too many wrong API keys; try again in {wait:.0f} s.",
                                          "invalid_request_error", "too_many_failures")
                response.headers["Retry-After"] = str(int(wait) + 1)
                await response(scope, receive, send)
                return
            given = dict(scope["headers"]).get(b"authorization", b"")
            token = given[7:] if given[:7].lower() == b"bearer " else b""
            if not hmac.compare_digest(token, self.api_key):
                self.throttle.failed(client)
                response = error_response(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                                          "invalid_request_error", "invalid_api_key")
                await response(scope, receive, send)
                return
            self.throttle.succeeded(client)
        await self.app(scope, receive, send)


def _guard_reply(status: int, message: str, code: str):
    kind = "invalid_request_error" if status < 500 else "server_error"
    return error_response(status, message, kind, code)


def build_api(models: ModelService, api_key: str | None = None, cors_origins: list[str] | None = None,
              hosts: HostPolicy | None = None, throttle: FailureThrottle | None = None) -> FastAPI:
    """The API app; with `api_key`, every route needs `Authorization: Bearer <key>`, and wrong keys
    count in `throttle` (shared with the UI's login when the login password is the key).

    `hosts` says which Host headers it answers (default: a loopback-bound server's); every POST
    must be JSON of at most MAX_BODY_BYTES, and pages from other origins are refused unless named
    in `cors_origins`.
    """
    app = FastAPI(title="Model Workbench API", docs_url=None, redoc_url=None, openapi_url=None)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    if api_key:
        app.add_middleware(RequireApiKey, api_key=api_key, throttle=throttle)
    rules = GuardRules(hosts or HostPolicy("127.0.0.1"), max_body=MAX_BODY_BYTES, require_json=True,
                       allowed_origins=tuple(o.rstrip("/") for o in cors_origins or ()))
    app.add_middleware(RequestGuard, rules=rules, reply=_guard_reply)  # outermost: before the key check

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(400, str(e), "invalid_request_error", param=e.param)

    @app.exception_handler(WorkbenchError)
    async def on_workbench_error(request: Request, e: WorkbenchError):
        status, kind = _status_for(e)
        return error_response(status, str(e), kind)

    @app.get("/health")
    def health():
        return {"status": "ok", "model_loaded": models.loaded_name() is not None}

    @app.get("/v1/models")
    def list_models():
        name = models.loaded_name()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "workbench"}] if name else []
        return {"object": "list", "data": data}

    async def body_of(request: Request) -> dict:
        try:
            body = json.loads(await request.body(), parse_int=_bounded_int)
        except RecursionError:
            raise ApiError("The request body nests JSON too deeply.") from None
        except ValueError:  # bad JSON or bad UTF-8
            raise ApiError("The request body must be JSON.") from None
        if not isinstance(body, dict):
            raise ApiError("The request body must be a JSON object.")
        return body

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        parsed = parse_chat_request(await body_of(request))
        return await respond(request, GenerationRequest(messages=parsed.messages, params=parsed.params), parsed,
                             chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        parsed = parse_completion_request(await body_of(request))
        return await respond(request, GenerationRequest(prompt=parsed.prompt, params=parsed.params), parsed,
                             chat=False)

    async def respond(request: Request, gen: GenerationRequest, parsed, chat: bool):
        name = models.loaded_name()
        if name is None:
            raise NoModelLoaded("No model is loaded; load one in the Model tab or start with --model.")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        events = models.agenerate(gen)
        if parsed.stream:
            # Take the first event before answering, so errors (no model, bad prompt) get a status code.
            try:
                first = await events.__anext__()
            except StopAsyncIteration:
                first = None
            return ClosingStreamingResponse(
                _sse(first, events, rid, created, name, chat, parsed.include_usage),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.ensure_future(_close_on_disconnect(request, events))
        pieces, stats = [], GenerationStats("cancelled")
        try:
            async for kind, value in events:
                if kind == "token":
                    pieces.append(value)
                else:
                    stats = value
        finally:
            watcher.cancel()
            await events.aclose()
        text = "".join(pieces)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": _finish(stats)}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": _finish(stats)}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice],
                "usage": _usage(stats)}

    return app


MAX_INT_DIGITS = 40  # any number a request may hold (a 64-bit seed has 19 digits)


def _bounded_int(digits: str) -> int:
    """JSON integers as ints, refusing ones so long that converting or comparing them costs (or fails)."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ApiError(f"A number in the request has more than {MAX_INT_DIGITS} digits.")
    return int(digits)


def _finish(stats: GenerationStats) -> str:
    return "stop" if stats.finish_reason in ("stop", "cancelled") else "length"


def _usage(stats: GenerationStats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


DISCONNECT_POLL_S = 0.25


async def _close_on_disconnect(request: Request, events: AsyncIterator) -> None:
    """End a non-streaming request's generation when its client hangs up (the worker cancels it)."""
    while True:
        if await request.is_disconnected():
            await events.aclose()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that closes its body once sent or abandoned (Starlette leaves that to the GC),
    which ends the generation in the worker: a client that hangs up frees its slot at the next token."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _sse(first, events: AsyncIterator, rid: str, created: int, model: str, chat: bool,
               include_usage: bool) -> AsyncIterator[str]:
    """Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; closing it ends the generation."""
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta_text: str | None, finish: str | None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": delta_text} if delta_text else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta_text or "", "logprobs": None, "finish_reason": finish}
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                      "choices": [choice]}, separators=(",", ":")) + "\n\n"

    if chat:
        yield chunk(None, None, role=True)
    event = first
    try:
        while event is not None:
            kind, value = event
            if kind == "token":
                if value:
                    yield chunk(value, None)
            else:
                yield chunk(None, _finish(value))
                if include_usage:
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                 "choices": [], "usage": _usage(value)}) + "\n\n"
            event = await anext(events, None)
    except WorkbenchError as e:
        yield "data: " + json.dumps({"error": {"message": str(e), "type": "server_error", "param": None,
                                               "code": None}}) + "\n\n"
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"

