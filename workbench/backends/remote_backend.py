"""The remote backend: a "model" that is any OpenAI-compatible server (vLLM, llama-server, Ollama,
another workbench's API), listed in models/ and loaded like a local one.

A remote entry is a small JSON file in models/ (`NAME.remote.json`, made by
`python -m workbench remote add`):

    {"workbench_remote_model": {"base_url": "http://host:8000/v1", "model": "served-name",
                                "api_key_env": "MY_SERVER_KEY", "context_length": 8192,
                                "timeout_s": 120, "strict_openai": false}}

Only `base_url` (http or https, no user:password in it) and `model` are required. The key
is never in that file: it comes from the environment variable `api_key_env` names, or from
`user_data/remote_keys/NAME.remote.json.key` (mode 0600, written by `remote add --api-key-stdin`).
It is sent only to `base_url` and appears in no message, log or `details`.

Generation runs in the worker like every engine: each request is one streamed HTTP request
read by its own thread, and `generate()` hands over what has arrived (None when nothing has,
so the scheduler's other requests go on: concurrent requests are not serialized; the remote
server batches them). Closing a generation (stop, a client hanging up) closes its HTTP stream,
which ends the generation on the server. No local tokenizer: token counts for fitting a chat
are estimated, and perplexity is refused. Owns the entry file format; not the HTTP server side.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

from ..atomic import write_text_atomic
from ..detect import Detection
from ..errors import (GenerationError, LoadError, RemoteAuthFailed, RemoteError, RemoteModelNotFound,
                      RemoteUnreachable, WorkbenchError, brief)
from ..options import GenerationRequest, LoadOptions
from .base import Backend, DoneEvent, ModelInfo, TokenEvent

FORMAT = "remote"
KEY = "workbench_remote_model"
SUFFIX = ".remote.json"
KEYS_FOLDER = ("user_data", "remote_keys")  # beside models/: where saved keys live (0600)
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 120.0   # longest wait for the next piece of a reply (the server may queue us)
WAIT_S = 0.01               # how long a generator waits for any stream's news before yielding None
CHARS_PER_TOKEN = 4         # token estimate for fitting a chat (the server's tokenizer is not here)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,100}$")
NO_TOKENIZER = ("This remote server does not expose its tokenizer, so token counts and perplexity are not "
                "supported by this remote server; use a local model for them.")


@dataclass(frozen=True)
class RemoteEntry:
    base_url: str                  # the server's OpenAI base URL, e.g. http://host:8000/v1
    model: str                     # the model name the server knows
    api_key_env: str | None = None  # environment variable holding the key (else the saved key file, if any)
    context_length: int | None = None  # the server's context, when known (the plan's default otherwise)
    timeout_s: float = DEFAULT_TIMEOUT_S  # longest silence from the server before giving up
    strict_openai: bool = False    # send only OpenAI's own parameters (no top_k, min_p, repetition_penalty)


def check_base_url(url: str) -> str:
    """`url` normalized (no trailing slash; a bare host gets /v1), or a LoadError saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise LoadError("The remote entry needs a base_url such as http://127.0.0.1:8000/v1.")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LoadError(f"The remote base_url must be an http:// or https:// address with a host, not {url[:100]!r}.")
    if parts.username or parts.password:
        raise LoadError("The remote base_url must not hold a user or password; use an API key (--api-key-env).")
    if parts.query or parts.fragment:
        raise LoadError("The remote base_url must not have a query or fragment; give it like http://host:8000/v1.")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def parse_entry(raw: bytes | str, name: str = "the remote entry") -> RemoteEntry:
    """The RemoteEntry in a file's content; LoadError naming what is missing or wrong."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{name} is not valid JSON ({e}).") from e
    body = data.get(KEY) if isinstance(data, dict) else None
    if not isinstance(body, dict):
        raise LoadError(f"{name} must be a JSON object {{\"{KEY}\": {{\"base_url\": ..., \"model\": ...}}}}.")
    known = {"base_url", "model", "api_key_env", "context_length", "timeout_s", "strict_openai"}
    unknown = sorted(set(body) - known)
    if "api_key" in unknown:
        raise LoadError(f"{name} holds an api_key; keys are not kept in models/: use api_key_env or "
                        "`python -m workbench remote add ... --api-key-stdin`.")
    if unknown:
        raise LoadError(f"{name} has unknown keys {', '.join(unknown)}; valid ones: {', '.join(sorted(known))}.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 300:
        raise LoadError(f"{name} needs the model name the server serves (\"model\").")
    env = body.get("api_key_env")
    if env is not None and not (isinstance(env, str) and _ENV.match(env)):
        raise LoadError(f"{name}: api_key_env must be an environment variable name like MY_SERVER_KEY.")
    ctx = body.get("context_length")
    if ctx is not None and not (isinstance(ctx, int) and not isinstance(ctx, bool) and 256 <= ctx <= 10_000_000):
        raise LoadError(f"{name}: context_length must be a whole number of tokens, at least 256.")
    timeout = body.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= 3600:
        raise LoadError(f"{name}: timeout_s must be a number of seconds between 1 and 3600.")
    return RemoteEntry(check_base_url(body.get("base_url")), model.strip(), env, ctx, float(timeout),
                       bool(body.get("strict_openai", False)))


def read_entry(path: str) -> RemoteEntry:
    with open(path, "rb") as f:
        return parse_entry(f.read(1 << 16), os.path.basename(path))


def sniff(path: str) -> Detection | None:
    """A Detection for a remote entry file, or None when `path` is something else."""
    with open(path, "rb") as f:
        head = f.read(256)
    if not head.lstrip().startswith(b"{") or f'"{KEY}"'.encode() not in head:
        return None
    entry = read_entry(path)
    return Detection(path=os.path.abspath(path), format=FORMAT, architecture="remote",
                     evidence=f"a remote model: {entry.model} on {entry.base_url}",
                     context_length=entry.context_length, size_bytes=os.path.getsize(path))


def key_path(entry_path: str) -> str:
    """Where the saved key of the entry at `entry_path` (in models/) lives: user_data/remote_keys/ beside it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(entry_path)))
    return os.path.join(root, *KEYS_FOLDER, os.path.basename(entry_path) + ".key")


def api_key_for(entry_path: str, entry: RemoteEntry) -> tuple[str | None, str]:
    """(the key, where it comes from in words) for an entry; the words never hold the key."""
    if entry.api_key_env:
        key = os.environ.get(entry.api_key_env)
        if not key:
            raise LoadError(f"The environment variable {entry.api_key_env} (this entry's API key) is not set; "
                            "set it before starting the workbench.")
        return key.strip(), f"the ${entry.api_key_env} environment variable"
    saved = key_path(entry_path)
    if os.path.isfile(saved):
        with open(saved, encoding="utf-8") as f:
            return f.read().strip() or None, "the key saved for this entry (remote add --api-key-stdin)"
    return None, "no key (add one with remote add --api-key-env or --api-key-stdin)"


def save_entry(models_dir: str, name: str, base_url: str, model: str, api_key_env: str | None = None,
               api_key: str | None = None, context_length: int | None = None, timeout_s: float | None = None,
               strict_openai: bool = False, replace_existing: bool = False) -> str:
    """Write models/NAME.remote.json (and the key, if given, to user_data/remote_keys/ with mode 0600); its path."""
    stem = name.removesuffix(SUFFIX)
    if not isinstance(stem, str) or not _NAME.match(stem):
        raise WorkbenchError("A remote entry's name must be letters, digits, '.', '_' or '-' (like my-server).")
    if api_key and api_key_env:
        raise WorkbenchError("Give the key one way: --api-key-env VAR or --api-key-stdin, not both.")
    body = {"base_url": check_base_url(base_url), "model": model}
    if api_key_env:
        body["api_key_env"] = api_key_env
    if context_length:
        body["context_length"] = context_length
    if timeout_s:
        body["timeout_s"] = timeout_s
    if strict_openai:
        body["strict_openai"] = True
    text = json.dumps({KEY: body}, indent=1)
    parse_entry(text, f"{stem}{SUFFIX}")  # the same checks as a load
    path = os.path.join(models_dir, stem + SUFFIX)
    if os.path.exists(path) and not replace_existing:
        raise WorkbenchError(f"models/{stem}{SUFFIX} exists already; pick another name or replace it.")
    os.makedirs(models_dir, exist_ok=True)
    saved = key_path(path)
    if api_key:
        os.makedirs(os.path.dirname(saved), mode=0o700, exist_ok=True)
        fd = os.open(saved + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(api_key.strip() + "\n")
        os.chmod(saved + ".tmp", 0o600)
        os.replace(saved + ".tmp", saved)
    elif os.path.exists(saved):
        os.remove(saved)  # a replaced entry does not keep an old key
    write_text_atomic(path, text + "\n")
    return path


class _Stream:
    """One streamed request: what its reader thread delivered, and how to close it from the worker."""

    def __init__(self):
        self.queue: deque = deque()
        self.closed = False
        self.response = None

    def close_connection(self) -> None:
        """End the HTTP stream now (the server sees the connection go and stops generating)."""
        response = self.response
        if response is None:
            return
        try:  # wake the reader thread at once: a plain close waits for the next chunk on Linux
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        try:
            response.close()
        except Exception:  # noqa: BLE001 - the reader thread may be closing it at the same time
            pass


class _Arrivals:
    """What every stream's reader thread has delivered, and one condition all generators wait on."""

    def __init__(self):
        self.cond = threading.Condition()
        self.pending = 0  # items delivered and not yet taken, over all open streams

    def put(self, stream: _Stream, item: tuple) -> None:
        with self.cond:
            if stream.closed:  # nobody will take it: it must not count as news
                return
            stream.queue.append(item)
            self.pending += 1
            self.cond.notify_all()

    def take(self, stream: _Stream, wait: float) -> list[tuple]:
        """All of `stream`'s items; when nothing has arrived anywhere, wait up to `wait` s first (no busy loop)."""
        with self.cond:
            if not stream.queue and self.pending == 0:
                self.cond.wait(wait)
            items = list(stream.queue)
            stream.queue.clear()
            self.pending -= len(items)
            return items

    def close(self, stream: _Stream) -> None:
        """`stream` is done: what it left untaken stops counting, and later deliveries are dropped."""
        with self.cond:
            stream.closed = True
            self.pending -= len(stream.queue)
            stream.queue.clear()
        stream.close_connection()


class RemoteBackend(Backend):
    name = "remote"
    interleaves = True  # each request is its own HTTP stream: many run at once, the server batches them

    def __init__(self):
        self.entry: RemoteEntry | None = None
        self.client = None
        self.n_ctx = 0
        self._key: str | None = None
        self._key_source = ""
        self._arrivals = _Arrivals()

    # --- errors ---------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        text = brief(str(text), 200)
        return text.replace(self._key, "***") if self._key and len(self._key) >= 6 else text  # a server may echo it

    def _http_error(self, status: int, body: str, what: str) -> RemoteError:
        url, model = self.entry.base_url, self.entry.model
        try:
            said = json.loads(body).get("error")
            said = said.get("message") if isinstance(said, dict) else said
        except (ValueError, AttributeError):
            said = body
        said = self._scrub(said or "").rstrip(".")
        if status in (401, 403):
            return RemoteAuthFailed(f"The remote server at {url} refused the API key (HTTP {status}); "
                                    f"check {self._key_source}.")
        if status == 404:
            return RemoteModelNotFound(f"The remote server at {url} has no model {model!r} or no {what} route "
                                       f"(HTTP 404{': ' + said if said else ''}); check the model name and that "
                                       "the base URL ends in /v1.")
        return RemoteError(f"The remote server at {url} answered HTTP {status} to {what}"
                           f"{': ' + said if said else ''}.")

    def _transport_error(self, e: Exception, during: str) -> RemoteError:
        import httpx

        url = self.entry.base_url
        if isinstance(e, httpx.TimeoutException):
            if isinstance(e, httpx.ConnectTimeout):
                return RemoteUnreachable(f"Cannot reach the remote server at {url} (no answer within "
                                         f"{CONNECT_TIMEOUT_S:.0f} s); check that it is running and the address.")
            return RemoteUnreachable(f"The remote server at {url} sent nothing for {self.entry.timeout_s:.0f} s "
                                     f"{during}; it may be overloaded (raise timeout_s in the entry) or stuck.")
        if isinstance(e, httpx.ConnectError):
            reason = self._scrub(e) or "connection failed"
            return RemoteUnreachable(f"Cannot reach the remote server at {url} ({reason}); check that it is "
                                     "running and the address is right.")
        return RemoteUnreachable(f"The connection to the remote server at {url} broke {during} "
                                 f"({type(e).__name__}); check the server and try again.")

    # --- lifecycle ------------------------------------------------------------------
    def load(self, detection: Detection, options: LoadOptions) -> ModelInfo:
        import httpx

        self.entry = read_entry(detection.path)
        self._key, self._key_source = api_key_for(detection.path, self.entry)
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        slots = max(options.parallel, 1)
        self.client = httpx.Client(
            base_url=self.entry.base_url, headers=headers, follow_redirects=False,
            timeout=httpx.Timeout(self.entry.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=slots + 4, max_keepalive_connections=slots + 4))
        served = self._check_model()
        self.n_ctx = options.n_ctx or self.entry.context_length or 8192  # the plan's choice (plan.py)
        details = {"base_url": self.entry.base_url, "model": self.entry.model, "api_key": self._key_source}
        if served:
            details["server_models"] = served[:20]
        return ModelInfo(backend=self.name, path=detection.path, format=FORMAT, n_ctx=self.n_ctx, device="remote",
                         dtype="remote", n_threads=0, chat_template=True, details=details)

    def _check_model(self) -> list[str]:
        """The models the server lists; an error when it is unreachable, refuses the key or lacks ours."""
        import httpx

        try:
            r = self.client.get("/models", timeout=httpx.Timeout(min(self.entry.timeout_s, 30),
                                                                 connect=CONNECT_TIMEOUT_S))
        except httpx.HTTPError as e:
            raise self._transport_error(e, "while listing its models") from None
        if r.status_code == 404:
            return []  # a server without a model list: the first request will say whether the model exists
        if r.status_code >= 400:
            raise self._http_error(r.status_code, r.text, "GET /models")
        try:
            cards = [c for c in r.json().get("data", []) if isinstance(c, dict)]
        except (ValueError, AttributeError):
            return []
        ids = [str(c.get("id")) for c in cards]
        model = self.entry.model
        card = next((c for c in cards if c.get("id") == model), None)
        if card is None and ids:
            raise RemoteModelNotFound(f"The remote server at {self.entry.base_url} has no model {model!r} "
                                      f"(HTTP 404); it serves: {', '.join(i[:80] for i in ids[:10])}.")
        if card is not None and card.get("loaded") is False:  # another workbench: listed, not loaded
            loaded = next((c.get("id") for c in cards if c.get("loaded")), None)
            raise RemoteModelNotFound(f"The remote server at {self.entry.base_url} lists {model!r} but has not "
                                      "loaded it" + (f" (it has {loaded!r} loaded)" if loaded else "")
                                      + "; load it there or name the loaded model.")
        return ids

    def unload(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # --- tokens -----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        raise GenerationError(NO_TOKENIZER)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """An estimate (CHARS_PER_TOKEN characters a token, a few per message): only for fitting a chat."""
        if request.messages is None:
            chars = len(request.prompt or "")
        else:
            chars = sum(len(json.dumps(m.get("content"), ensure_ascii=False)) + 16 for m in request.messages)
        return [0] * (chars // CHARS_PER_TOKEN + 1)

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        import httpx

        try:
            r = self.client.post("/embeddings", json={"model": self.entry.model, "input": texts})
        except httpx.HTTPError as e:
            raise self._transport_error(e, "while making embeddings") from None
        if r.status_code >= 400:
            raise self._http_error(r.status_code, r.text, "POST /embeddings")
        reply = r.json()
        vectors = [d["embedding"] for d in sorted(reply["data"], key=lambda d: d.get("index", 0))]
        return vectors, int((reply.get("usage") or {}).get("prompt_tokens", 0))

    # --- generation -----------------------------------------------------------------
    def _body(self, request: GenerationRequest) -> tuple[str, dict]:
        p = request.params
        chat = request.messages is not None
        body = {"model": self.entry.model, "stream": True, "stream_options": {"include_usage": True},
                "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p}
        if chat:
            body["messages"] = request.messages
        else:
            body["prompt"] = request.prompt or ""
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in p.logit_bias.items()}
        if p.logprobs is not None:
            body.update({"logprobs": True, "top_logprobs": p.logprobs} if chat else {"logprobs": p.logprobs})
        if p.json_schema is not None:
            body["response_format"] = ({"type": "json_object"} if not p.json_schema else
                                       {"type": "json_schema", "json_schema": {"name": "reply",
                                                                               "schema": p.json_schema}})
        if not self.entry.strict_openai:
            body.update(top_k=p.top_k, min_p=p.min_p, repetition_penalty=p.repetition_penalty)
        return ("/chat/completions" if chat else "/completions"), body

    def _pump(self, stream: _Stream, path: str, body: dict) -> None:
        """Reader thread: the HTTP stream's events into `stream.queue`, ending with ("end",) or ("error", e)."""
        import httpx

        put = self._arrivals.put
        q = stream
        try:
            with self.client.stream("POST", path, json=body) as response:
                stream.response = response
                if stream.closed:
                    return
                if response.status_code >= 400:
                    response.read()
                    raise self._http_error(response.status_code, response.text, f"POST {path}")
                for line in response.iter_lines():
                    if stream.closed:
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    self._chunk(json.loads(data), q, put)
            put(q, ("end",))
        except Exception as e:  # noqa: BLE001 - every failure reaches the request as one sentence
            if stream.closed:
                return
            if isinstance(e, httpx.HTTPError):
                e = self._transport_error(e, "during a reply")
            elif isinstance(e, ValueError):
                e = RemoteError(f"The remote server at {self.entry.base_url} sent a reply that is not "
                                f"OpenAI's streaming format ({self._scrub(e)}).")
            elif not isinstance(e, WorkbenchError):
                e = RemoteError(f"Reading the remote server's reply failed: {type(e).__name__}: {self._scrub(e)}")
            put(q, ("error", e))

    def _chunk(self, chunk: dict, q: _Stream, put) -> None:
        if chunk.get("error"):
            said = chunk["error"].get("message") if isinstance(chunk["error"], dict) else chunk["error"]
            raise RemoteError(f"The remote server at {self.entry.base_url} failed mid-reply: {self._scrub(said)}")
        usage = chunk.get("usage")
        if usage:
            put(q, ("usage", int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)))
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            text = (delta or {}).get("content") if delta is not None else choice.get("text")
            entries = _logprob_entries(choice.get("logprobs"))
            if text or entries:
                put(q, ("text", text or "", entries))
            if choice.get("finish_reason"):
                put(q, ("finish", choice["finish_reason"]))

    def generate(self, request: GenerationRequest,
                 cancelled: Callable[[], bool]) -> Iterator[TokenEvent | DoneEvent | None]:
        path, body = self._body(request)
        stream = _Stream()
        threading.Thread(target=self._pump, args=(stream, path, body), name="remote-stream", daemon=True).start()
        prompt_tokens, made, finish = None, 0, "stop"
        try:
            while True:
                if cancelled():
                    yield DoneEvent("cancelled", prompt_tokens or 0, made)
                    return
                items = self._arrivals.take(stream, WAIT_S)
                if not items:
                    yield None
                    continue
                texts, scored, ended = [], [], False
                for item in items:
                    if item[0] == "text":
                        texts.append(item[1])
                        scored.extend(item[2] or ())
                        made += 1
                    elif item[0] == "usage":
                        prompt_tokens, made = item[1], item[2]
                    elif item[0] == "finish":
                        finish = "length" if item[1] == "length" else "stop"
                    elif item[0] == "error":
                        raise item[1]
                    else:
                        ended = True
                if texts or scored:
                    yield TokenEvent("".join(texts), tuple(scored) if request.params.logprobs is not None else None)
                if ended:
                    if prompt_tokens is None:
                        prompt_tokens = len(self.prompt_tokens(request))
                    yield DoneEvent(finish, prompt_tokens, made)
                    return
        finally:
            self._arrivals.close(stream)


def _logprob_entries(logprobs) -> list[dict]:
    """OpenAI per-token entries from a chunk's logprobs (chat's `content` list, or completions' columns)."""
    if not isinstance(logprobs, dict):
        return []
    if isinstance(logprobs.get("content"), list):
        return [e for e in logprobs["content"] if isinstance(e, dict)]
    tokens = logprobs.get("tokens") or []
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    entries = []
    for i, token in enumerate(tokens):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        entries.append({"token": token, "bytes": list(str(token).encode()),
                        "logprob": values[i] if i < len(values) else None,
                        "top_logprobs": [{"token": t, "bytes": list(t.encode()), "logprob": lp}
                                         for t, lp in top.items()]})
    return entries

