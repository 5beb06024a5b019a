"""Validates OpenAI-style request bodies into plain workbench values.

Only known, harmless fields are read: messages or prompt, sampling parameters, stream.
Anything that would name a file, load a model or run code (paths, trust_remote_code)
is not a field here, so a request cannot set it. Limits keep huge inputs out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import WorkbenchError
from ..options import GenParams

if TYPE_CHECKING:
    from .structured import ToolRequest

MAX_PROMPT_CHARS = 1_000_000
MAX_MESSAGES = 1000
MAX_STOPS = 8
MAX_TOKENS_LIMIT = 32768
FORBIDDEN = ("trust_remote_code", "model_path", "path", "loader", "gguf_file")


class ApiError(WorkbenchError):
    """An invalid request; `param` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


MAX_N = 8           # choices per request (they run as that many requests through the scheduler)


@dataclass
class ParsedRequest:
    params: GenParams
    stream: bool
    include_usage: bool
    messages: list[dict] | None = None
    prompt: str | None = None
    n: int = 1                     # choices, generated at once with seeds seed, seed+1, ...
    tools: "ToolRequest | None" = None  # the request's tools and tool_choice (chat only)


def _number(body: dict, key: str, default, kind=float, lo=None, hi=None):
    value = body.get(key, default)
    if value is None:
        return default
    # A float must be finite (and whole for an int); an int of any size compares without converting.
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (isinstance(value, float) and (not math.isfinite(value) or (kind is int and not value.is_integer()))):
        raise ApiError(f"'{key}' must be a {'whole ' if kind is int else ''}number.", key)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ApiError(f"'{key}' must be between {lo} and {hi}.", key)
    return kind(value)


def _logit_bias(body: dict) -> dict[int, float]:
    bias = body.get("logit_bias") or {}
    if not isinstance(bias, dict) or len(bias) > 300:
        raise ApiError("'logit_bias' must map up to 300 token ids to numbers between -100 and 100.", "logit_bias")
    out = {}
    for key, value in bias.items():
        if not str(key).isdigit() or len(str(key)) > 10 or isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or not -100 <= value <= 100:
            raise ApiError("'logit_bias' must map token ids to numbers between -100 and 100.", "logit_bias")
        out[int(key)] = float(value)
    return out


def _logprobs(body: dict, chat: bool) -> int | None:
    """Alternatives per token to report (None: no logprobs): chat's logprobs + top_logprobs, or completions' int."""
    if not chat:
        return _number(body, "logprobs", None, int, 0, 5)
    wanted = body.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise ApiError("'logprobs' must be true or false.", "logprobs")
    top = _number(body, "top_logprobs", None, int, 0, 20)
    if top is not None and not wanted:
        raise ApiError("'top_logprobs' needs 'logprobs' set to true.", "top_logprobs")
    return (top or 0) if wanted else None


def _params(body: dict, chat: bool = True) -> GenParams:
    from .structured import response_schema  # it raises this module's ApiError
    for key in FORBIDDEN:
        if key in body:
            raise ApiError(f"'{key}' cannot be set through the API.", key)
    stop = body.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOPS:
        raise ApiError(f"'stop' must be a string or a list of up to {MAX_STOPS} strings.", "stop")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    params = GenParams(
        max_tokens=_number({"max_tokens": max_tokens}, "max_tokens", 512, int, 1, MAX_TOKENS_LIMIT),
        temperature=_number(body, "temperature", 0.7, float, 0, 2),
        top_p=_number(body, "top_p", 1.0, float, 0.0001, 1),
        top_k=_number(body, "top_k", 40, int, 0, 100000),
        min_p=_number(body, "min_p", 0.05, float, 0, 0.9999),
        repetition_penalty=_number(body, "repetition_penalty", 1.0, float, 0.01, 10),
        seed=_number(body, "seed", None, int, 0, 2**63 - 1),
        stop=stop,
        presence_penalty=_number(body, "presence_penalty", 0.0, float, -2, 2),
        frequency_penalty=_number(body, "frequency_penalty", 0.0, float, -2, 2),
        logit_bias=_logit_bias(body),
        logprobs=_logprobs(body, chat),
        json_schema=response_schema(body),
    )
    return params.validate()


def _stream_flags(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError("'stream' must be true or false.", "stream")
    options = body.get("stream_options") or {}
    return stream, bool(isinstance(options, dict) and options.get("include_usage"))


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(parts) == len(content) and all(isinstance(part, str) for part in parts):
            return "".join(parts)
    raise ApiError(f"{where} must be text (a string or text content parts).", "messages")


def parse_chat_request(body: dict) -> ParsedRequest:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("'messages' must be a non-empty list.", "messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(f"At most {MAX_MESSAGES} messages per request.", "messages")
    from .structured import message_tool_calls, parse_tools

    clean, total = [], 0
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "developer", "tool"):
            raise ApiError(f"messages[{i}] needs a role of system, user, assistant or tool.", "messages")
        calls = message_tool_calls(m, i) if m["role"] == "assistant" else None
        content = m.get("content", "")
        text = "" if calls and content is None else _text(content, f"messages[{i}].content")
        total += len(text) + sum(len(c["function"]["name"]) + len(str(c["function"]["arguments"])) for c in calls or ())
        message = {"role": "system" if m["role"] == "developer" else m["role"], "content": text}
        if calls:
            message["tool_calls"] = calls
        if m["role"] == "tool" and isinstance(m.get("tool_call_id"), str):
            message["tool_call_id"] = m["tool_call_id"][:200]
        clean.append(message)
    if total > MAX_PROMPT_CHARS:
        raise ApiError(f"The messages hold {total:,} characters; the limit is {MAX_PROMPT_CHARS:,}.", "messages")
    stream, usage = _stream_flags(body)
    return ParsedRequest(_params(body), stream, usage, messages=clean, n=_number(body, "n", 1, int, 1, MAX_N),
                         tools=parse_tools(body))


def parse_completion_request(body: dict) -> ParsedRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError("'prompt' must be a non-empty string.", "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ApiError(f"The prompt has {len(prompt):,} characters; the limit is {MAX_PROMPT_CHARS:,}.", "prompt")
    stream, usage = _stream_flags(body)
    return ParsedRequest(_params(body, chat=False), stream, usage, prompt=prompt,
                         n=_number(body, "n", 1, int, 1, MAX_N))



MAX_EMBED_INPUTS = 256


def _token_ids(value) -> bool:
    """Whether `value` is a non-empty list of token ids (OpenAI lets `input` and `prompt` be tokens)."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in value)


def parse_embedding_request(body: dict) -> tuple[list[str | list[int]], str]:
    """(the texts to embed, each a string or a list of token ids; "float" or "base64") of an /v1/embeddings body.

    `input` is, as in OpenAI's API, a text, a list of token ids, or a list of texts or token-id lists."""
    texts = body.get("input")
    if isinstance(texts, str) or _token_ids(texts):
        texts = [texts]
    if not isinstance(texts, list) or not texts or len(texts) > MAX_EMBED_INPUTS \
            or not all((isinstance(t, str) and t) or _token_ids(t) for t in texts):
        raise ApiError(f"'input' must be a non-empty text, a list of token ids, or a list of up to "
                       f"{MAX_EMBED_INPUTS} non-empty texts or token-id lists.", "input")
    total = sum(len(t) for t in texts)
    if total > MAX_PROMPT_CHARS:
        raise ApiError(f"'input' holds {total:,} characters; the limit is {MAX_PROMPT_CHARS:,}.", "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError("'encoding_format' must be float or base64.", "encoding_format")
    if body.get("dimensions") is not None:
        raise ApiError("'dimensions' cannot be chosen: the vectors have the model's own size.", "dimensions")
    return texts, encoding
