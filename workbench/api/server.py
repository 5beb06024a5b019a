"""OpenAI-compatible HTTP API over the ModelService: /v1/models (what models/ holds, which is
loaded), /v1/chat/completions, /v1/completions (streaming and not), /v1/embeddings and /health.

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
import math
import time
import uuid
from dataclasses import replace
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse

from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextLengthExceeded, NoModelLoaded, RemoteError, WorkbenchError, WorkerDied
from ..http_guard import FailureThrottle, GuardRules, HostPolicy, RequestGuard, client_of
from ..model_values import GenerationStats
from ..paths import public_text
from ..options import GenerationRequest
from ..services.model_service import ModelService
from ..tool_calls import ToolCall, ToolCallStream, calls_schema, cut_call, parse_tool_calls
from .choices import Choice, ChoiceEvent, chat_logprobs, choice_requests, completion_logprobs, merged
from .schema import ApiError, parse_chat_request, parse_completion_request, parse_embedding_request


def error_response(status: int, message: str, kind: str, code: str | None = None, param: str | None = None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _status_for(e: WorkbenchError) -> tuple[int, str]:
    if isinstance(e, (NoModelLoaded, WorkerDied)):
        return 503, "server_error"
    if isinstance(e, RemoteError):  # the remote server behind a remote entry failed, not this request
        return 502, "server_error"
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
                self.throttle.failed(client, given)
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

    def shown(e: Exception) -> str:
        """The error's sentence for a remote client: server paths as names inside the workbench's folders."""
        return public_text(str(e), models.paths.root)

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, e: ApiError):
        return error_response(400, shown(e), "invalid_request_error", param=e.param)

    @app.exception_handler(WorkbenchError)
    async def on_workbench_error(request: Request, e: WorkbenchError):
        if isinstance(e, ContextLengthExceeded):
            path = request.url.path
            return error_response(400, shown(e), "invalid_request_error", "context_length_exceeded",
                                  "messages" if path.endswith("chat/completions")
                                  else "input" if path.endswith("embeddings") else "prompt")
        status, kind = _status_for(e)
        return error_response(status, shown(e), kind)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException):
        """Routing errors (unknown route, wrong method) in OpenAI's shape, as its own API words them."""
        if e.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})."
        elif e.status_code == 405:
            message = f"Method {request.method} is not allowed for {request.url.path}."
        else:
            message = str(e.detail)
        response = error_response(e.status_code, message, "invalid_request_error",
                                  {404: "unknown_url", 405: "method_not_allowed"}.get(e.status_code))
        for key, value in (e.headers or {}).items():
            response.headers[key] = value
        return response

    @app.get("/health")
    def health():
        return {"status": "ok", "model_loaded": models.loaded_name() is not None}

    def model_cards() -> list[dict]:
        """The loaded model first, then every other loadable entry of models/; `loaded` says which is loaded."""
        name = models.loaded_name()
        names = [name] if name else []
        names += [n for n in models.model_names() if n != name]
        return [{"id": n, "object": "model", "created": 0, "owned_by": "workbench", "loaded": n == name}
                for n in names]

    @app.get("/v1/models")
    def list_models():
        return {"object": "list", "data": model_cards()}

    @app.get("/v1/models/{model_id:path}")
    def retrieve_model(model_id: str):
        for card in model_cards():
            if card["id"] == model_id:
                return card
        return error_response(404, f"The model {model_id[:200]!r} does not exist; GET /v1/models lists them.",
                              "invalid_request_error", "model_not_found", "model")

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
        offered = parsed.tools.offered() if parsed.tools else []
        params = parsed.params
        if parsed.tools and parsed.tools.forced():  # the reply must be a call: decode only valid ones
            params = replace(params, json_schema=calls_schema(offered))
        gen = GenerationRequest(messages=parsed.messages, params=params, tools=offered or None)
        return await respond(request, gen, parsed, chat=True, offered=offered)

    @app.post("/v1/embeddings")
    def embeddings(body: dict = Depends(body_of)):
        texts, encoding = parse_embedding_request(body)
        name = models.loaded_name()
        if name is None:
            raise NoModelLoaded("No model is loaded; load one in the Model tab or start with --model.")
        vectors, tokens = models.embed(texts)
        data = [{"object": "embedding", "index": i, "embedding": _encode_vector(_unit_length(v), encoding)}
                for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/completions")
    async def completions(request: Request):
        parsed = parse_completion_request(await body_of(request))
        return await respond(request, GenerationRequest(prompt=parsed.prompt, params=parsed.params), parsed,
                             chat=False)

    async def respond(request: Request, gen: GenerationRequest, parsed, chat: bool, offered: list[dict] = ()):
        name = models.loaded_name()
        if name is None:
            raise NoModelLoaded("No model is loaded; load one in the Model tab or start with --model.")
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        fingerprint = _fingerprint(models.loaded())
        events = merged(models, choice_requests(gen, parsed.n))
        if parsed.stream:
            # Take the first event before answering, so errors (no model, bad prompt) get a status code.
            try:
                first = await events.__anext__()
            except StopAsyncIteration:
                first = None
            return ClosingStreamingResponse(
                _sse(first, events, rid, created, name, chat, parsed, offered, shown, fingerprint),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        choices = [Choice() for _ in range(parsed.n)]

        async def collect():
            async for event in events:
                choices[event.index].add(event)

        collecting = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(_cancel_on_disconnect(request, collecting))
        try:
            await collecting
        except asyncio.CancelledError:
            if not collecting.cancelled():
                raise
        finally:
            watcher.cancel()
            await events.aclose()
        wire = []
        for i, c in enumerate(choices):
            if chat:
                content, calls = parse_tool_calls(c.text, offered) if offered else (c.text, [])
                calls = calls if parsed.tools is None or parsed.tools.parallel else calls[:1]
                finish = "tool_calls" if calls else _finish(c.stats)
                cut = _cut_forced_call(parsed, c.text, offered, finish) if not calls else None
                if cut:
                    content, calls = "", [cut]
                message = {"role": "assistant", "content": content or (None if calls else "")}
                if calls:
                    message["tool_calls"] = [_wire_call(call) for call in calls]
                wire.append({"index": i, "message": message,
                             "logprobs": chat_logprobs(c.logprobs) if parsed.params.logprobs is not None else None,
                             "finish_reason": finish})
            else:
                wire.append({"index": i, "text": c.text, "finish_reason": _finish(c.stats),
                             "logprobs": completion_logprobs(c.logprobs) if parsed.params.logprobs is not None
                             else None})
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": name, "system_fingerprint": fingerprint, "choices": wire,
                "usage": _usage([c.stats for c in choices])}

    return app


MAX_INT_DIGITS = 40  # any number a request may hold (a 64-bit seed has 19 digits)


def _bounded_int(digits: str) -> int:
    """JSON integers as ints, refusing ones so long that converting or comparing them costs (or fails)."""
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ApiError(f"A number in the request has more than {MAX_INT_DIGITS} digits.")
    return int(digits)


def _cut_forced_call(parsed, text: str, offered: list[dict], finish: str) -> ToolCall | None:
    """A required (or named) call that max_tokens cut before it parsed: sent as a call with the arguments so
    far and finish_reason length, as OpenAI does, not as content."""
    if finish != "length" or parsed.tools is None or not parsed.tools.forced():
        return None
    return cut_call(text, offered)


def _wire_call(call: ToolCall) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": call.name, "arguments": call.arguments}}


ARGUMENT_PIECE_CHARS = 16  # a streamed call's arguments go out in pieces of this many characters


def _streamed_calls(calls: list[ToolCall]) -> list[dict]:
    """Tool calls as OpenAI streams them, one `delta.tool_calls` entry per chunk: for each call a first entry
    with index, id, type and name (arguments ""), then entries with only the index and a piece of the arguments.
    Accumulating the pieces by index gives the same calls as a whole reply."""
    entries = []
    for index, call in enumerate(calls):
        entries.append({"index": index, "id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                        "function": {"name": call.name, "arguments": ""}})
        entries += [{"index": index, "function": {"arguments": call.arguments[i:i + ARGUMENT_PIECE_CHARS]}}
                    for i in range(0, len(call.arguments), ARGUMENT_PIECE_CHARS)]
    return entries


def _unit_length(vector: list[float]) -> list[float]:
    """`vector` scaled to length 1, as OpenAI's embeddings are (cosine similarity is then a dot product)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector


def _encode_vector(vector: list[float], encoding: str):
    if encoding == "base64":  # little-endian float32, as OpenAI sends it
        import base64
        import struct

        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def _finish(stats: GenerationStats) -> str:
    return "stop" if stats.finish_reason in ("stop", "cancelled") else "length"


def _usage(stats: list[GenerationStats]) -> dict:
    """Usage over a request's choices: the prompt counts once, every choice's tokens count;
    `prompt_tokens_details.cached_tokens` is the prompt reused from the KV cache (as OpenAI's prompt caching)."""
    prompt = max(s.prompt_tokens for s in stats)
    completion = sum(s.completion_tokens for s in stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": min(max(s.cached_tokens for s in stats), prompt)}}


def _fingerprint(loaded) -> str | None:
    """OpenAI's `system_fingerprint`: changes when the model, its backend or its load options change."""
    if loaded is None:
        return None
    import hashlib

    what = f"{loaded.name}|{loaded.backend}|{loaded.path}|{loaded.options!r}"
    return "fp_" + hashlib.sha256(what.encode()).hexdigest()[:10]


DISCONNECT_POLL_S = 0.25


async def _cancel_on_disconnect(request: Request, collecting: asyncio.Future) -> None:
    """End a non-streaming request's generations when its client hangs up (the worker cancels them)."""
    while True:
        if await request.is_disconnected():
            collecting.cancel()
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


async def _sse(first: ChoiceEvent | None, events: AsyncIterator[ChoiceEvent], rid: str, created: int, model: str,
               chat: bool, parsed, offered: list[dict] = (), shown=str,
               fingerprint: str | None = None) -> AsyncIterator[str]:
    """Server-Sent Events in OpenAI's chunk format, ending with `data: [DONE]`; closing it ends the generations.

    With tools offered, text that may be a tool call is held back; at the end of a choice its calls go
    out as OpenAI streams them (per call a delta with index, id, type and name, then deltas with pieces
    of its arguments) and finish_reason tool_calls.
    """
    obj = "chat.completion.chunk" if chat else "text_completion"
    wants_logprobs = parsed.params.logprobs is not None
    offsets = [0] * parsed.n  # completions' text_offset runs on across chunks
    tool_streams = [ToolCallStream() for _ in range(parsed.n)] if offered else None

    def chunk(index: int, text: str | None, finish: str | None, logprobs: list[dict] | None = None,
              role: bool = False, call: dict | None = None) -> str:
        if chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            if call:
                delta["tool_calls"] = [call]
            choice = {"index": index, "delta": delta, "finish_reason": finish}
            if wants_logprobs:
                choice["logprobs"] = chat_logprobs(logprobs) if logprobs else None
        else:
            choice = {"index": index, "text": text or "", "finish_reason": finish,
                      "logprobs": completion_logprobs(logprobs, offsets[index]) if logprobs else None}
            offsets[index] += len(text or "")
        return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                      "system_fingerprint": fingerprint, "choices": [choice]},
                                     separators=(",", ":")) + "\n\n"

    if chat:
        for index in range(parsed.n):
            yield chunk(index, None, None, role=True)
    event, ended = first, []
    try:
        while event is not None:
            if event.stats is None:
                text = tool_streams[event.index].feed(event.text) if tool_streams else event.text
                if text or event.logprobs:
                    yield chunk(event.index, text, None, event.logprobs)
            else:
                finish, calls = _finish(event.stats), []
                if tool_streams:
                    rest, calls = tool_streams[event.index].finish(offered)
                    calls = calls if parsed.tools is None or parsed.tools.parallel else calls[:1]
                    cut = _cut_forced_call(parsed, tool_streams[event.index].text, offered, finish) \
                        if not calls else None
                    if cut:
                        rest, calls = "", [cut]
                    if rest:
                        yield chunk(event.index, rest, None)
                    for entry in _streamed_calls(calls):
                        yield chunk(event.index, None, None, call=entry)
                    if calls and not cut:
                        finish = "tool_calls"
                yield chunk(event.index, None, finish)
                ended.append(event.stats)
            event = await anext(events, None)
        if parsed.include_usage and ended:
            yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                         "system_fingerprint": fingerprint, "choices": [],
                                         "usage": _usage(ended)}) + "\n\n"
    except WorkbenchError as e:
        yield "data: " + json.dumps({"error": {"message": shown(e), "type": "server_error", "param": None,
                                               "code": None}}) + "\n\n"
    finally:
        await events.aclose()
    yield "data: [DONE]\n\n"
