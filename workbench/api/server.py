"""OpenAI-compatible HTTP API over the ModelService: /v1/models, /v1/chat/completions,
/v1/completions (streaming and not) and /health.

Owns the wire format only: request validation, OpenAI response and error shapes,
Server-Sent Events, the API key check and CORS. Requests for one model queue on its
worker (one generation at a time, in arrival order). A request can never name a file
path, load a model, or set trust_remote_code: it can only use what is loaded.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from typing import Iterator

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..errors import NoModelLoaded, WorkbenchError, WorkerDied
from ..options import GenerationRequest
from ..services.model_service import ModelService
from .schema import ApiError, parse_chat_request, parse_completion_request


def error_response(status: int, message: str, kind: str, code: str | None = None, param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _status_for(e: WorkbenchError) -> tuple[int, str]:
    if isinstance(e, (NoModelLoaded, WorkerDied)):
        return 503, "server_error"
    return 400, "invalid_request_error"


def build_api(models: ModelService, api_key: str | None = None, cors_origins: list[str] | None = None) -> FastAPI:
    """The API app; with `api_key`, every route needs `Authorization: Bearer <key>`."""
    app = FastAPI(title="Model Workbench API", docs_url=None, redoc_url=None, openapi_url=None)
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        if api_key and request.method != "OPTIONS":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                return error_response(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'.",
                                      "invalid_request_error", "invalid_api_key")
        return await call_next(request)

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
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("The request body must be JSON.") from None
        if not isinstance(body, dict):
            raise ApiError("The request body must be a JSON object.")
        return body

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        parsed = parse_chat_request(await body_of(request))
        return await respond(GenerationRequest(messages=parsed.messages, params=parsed.params), parsed, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        parsed = parse_completion_request(await body_of(request))
        return await respond(GenerationRequest(prompt=parsed.prompt, params=parsed.params), parsed, chat=False)

    async def respond(gen: GenerationRequest, parsed, chat: bool):
        name = models.loaded_name()
        if name is None:
            raise NoModelLoaded("No model is loaded; load one in the Model tab or start with --model.")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if parsed.stream:
            events = models.generate(gen)
            # Pull the first event before answering, so errors (no model, bad prompt) get a status code.
            first = await run_in_threadpool(next, events, None)
            return StreamingResponse(
                iterate_in_threadpool(_sse(first, events, rid, created, name, chat, parsed.include_usage)),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        result = await run_in_threadpool(models.complete, gen)
        usage = {"prompt_tokens": result["prompt_tokens"], "completion_tokens": result["completion_tokens"],
                 "total_tokens": result["prompt_tokens"] + result["completion_tokens"]}
        finish = "stop" if result["finish_reason"] in ("stop", "cancelled") else "length"
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": result["text"]}, "finish_reason": finish}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": result["text"], "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {"id": rid, "object": obj, "created": created, "model": name, "choices": [choice], "usage": usage}

    return app


def _sse(first, events: Iterator, rid: str, created: int, model: str, chat: bool, include_usage: bool) -> Iterator[str]:
    """Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`."""
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
                finish = "stop" if value["finish_reason"] in ("stop", "cancelled") else "length"
                yield chunk(None, finish)
                if include_usage:
                    usage = {"prompt_tokens": value["prompt_tokens"], "completion_tokens": value["completion_tokens"],
                             "total_tokens": value["prompt_tokens"] + value["completion_tokens"]}
                    yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                 "choices": [], "usage": usage}) + "\n\n"
            event = next(events, None)
    except WorkbenchError as e:
        yield "data: " + json.dumps({"error": {"message": str(e), "type": "server_error", "param": None,
                                               "code": None}}) + "\n\n"
    yield "data: [DONE]\n\n"

