"""A scripted fake backend: fast, deterministic model behaviour for service, worker, API and UI tests.

A fake model is a small JSON file whose content starts with `{"workbench_fake_model"`; it
is the script. The fake runs in a real worker process like every engine (so pipe, cancel
and crash handling are the real ones) and renders chat prompts with the real sandboxed
template code. It never stands in for the proof that an engine works: the contract suite
in tests/backends/ does that with the real sample model.

Script keys (all optional but the marker):
    reply            the answer; "{last_user}" in it is replaced by the last user message
    token_delay_s    sleep per generated token
    load_delay_s     sleep while "loading"
    load_error       a load fails with this message
    context_length   the model's own context (default 2048)
    parameters       parameter count the planner sees (default 1,000,000)
    rules            a list of {"when": TEXT, ...} checked in order against the prompt; the first
                     whose TEXT occurs in it overrides: "reply", "token_delay_s", "error" (the
                     engine raises it after "after" tokens), "crash" (the worker process dies
                     after "after" tokens)

Tokens are whitespace-delimited pieces ("Hello ", "world."), so counts are easy to reason about;
with logprobs asked, each piece scores a deterministic -(crc32 % 100) / 100 (see `fake_logprob`).
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from typing import Callable, Iterator

from ..detect import Detection
from ..errors import ContextLengthExceeded, GenerationError, LoadError
from ..options import GenerationRequest, LoadOptions
from ..plan import MiB, PlanStrategy
from ..stop_strings import StopMatcher
from .base import Backend, DoneEvent, ModelInfo, TokenEvent, check_token_ids, too_long_to_embed
from .registry import COMMON_OPTIONS, BackendSpec, Capabilities

FORMAT = "fake"
MARKER = b'{"workbench_fake_model"'
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
VOCAB = 1000
_PIECE = re.compile(r"\s*\S+\s*|\s+")


def pieces(text: str) -> list[str]:
    """The fake tokenizer: whitespace-delimited pieces that join back to `text`."""
    return _PIECE.findall(text)


def _read_script(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read(1 << 20)
    if not raw.startswith(MARKER):
        raise LoadError(f"{os.path.basename(path)} is not a fake model script.")
    try:
        script = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"The fake model script {os.path.basename(path)} is not valid JSON ({e}).") from e
    return script


def sniff(path: str) -> Detection | None:
    """A Detection for a fake model script, or None when `path` is something else."""
    with open(path, "rb") as f:
        if f.read(len(MARKER)) != MARKER:
            return None
    script = _read_script(path)
    return Detection(
        path=os.path.abspath(path), format=FORMAT, evidence="a workbench fake model script (tests)",
        architecture="fake", n_layers=2, context_length=int(script.get("context_length", 2048)),
        embedding_size=64, n_heads=4, n_kv_heads=4, head_dim=16, vocab_size=VOCAB, quantization="none",
        parameter_count=int(script.get("parameters", 1_000_000)), size_bytes=os.path.getsize(path),
        chat_template=CHAT_TEMPLATE,
    )


def fake_logprob(piece: str, top: int) -> dict:
    """A deterministic logprob entry for a piece: -(crc32 % 100) / 100, alternatives "alt1".. below it."""
    logprob = -(zlib.crc32(piece.encode()) % 100) / 100

    def item(token: str, lp: float) -> dict:
        return {"token": token, "bytes": list(token.encode()), "logprob": lp}

    alternatives = [item(piece, logprob)] + [item(f"alt{i}", logprob - i) for i in range(1, top)]
    return {**item(piece, logprob), "top_logprobs": alternatives[:top]}


class FakeBackend(Backend):
    name = "fake"
    interleaves = True  # its generations share no state: several run in turn (like a batching engine)

    def __init__(self):
        self.script: dict = {}
        self.n_ctx = 0
        self._last_prompt: list[int] = []

    def load(self, detection: Detection, options: LoadOptions) -> ModelInfo:
        self.script = _read_script(detection.path)
        time.sleep(float(self.script.get("load_delay_s", 0)))
        if self.script.get("load_error"):
            raise LoadError(str(self.script["load_error"]))
        self.n_ctx = min(options.n_ctx, detection.context_length or options.n_ctx)
        return ModelInfo(backend=self.name, path=detection.path, format=FORMAT, n_ctx=self.n_ctx, device="cpu",
                         dtype="none", n_threads=options.n_threads or 1, chat_template=True, details={})

    def tokenize(self, text: str) -> list[int]:
        return [zlib.crc32(p.encode()) % VOCAB for p in pieces(text)]

    def _prompt(self, request: GenerationRequest) -> str:
        from ..chat_template import prompt_text

        return prompt_text(request, CHAT_TEMPLATE)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        return self.tokenize(self._prompt(request))

    def _rule(self, prompt: str) -> dict:
        for rule in self.script.get("rules", []):
            if rule.get("when", "") in prompt:
                return rule
        return {}

    def generate(self, request: GenerationRequest, cancelled: Callable[[], bool]) -> Iterator[TokenEvent | DoneEvent]:
        prompt = self._prompt(request)
        ids = self.tokenize(prompt)
        if len(ids) >= self.n_ctx:
            raise ContextLengthExceeded(f"The prompt has {len(ids)} tokens but the context holds {self.n_ctx}; "
                                  "shorten it or load the model with a larger context.")
        cached = next((i for i, (a, b) in enumerate(zip(ids, self._last_prompt)) if a != b),
                      min(len(ids), len(self._last_prompt)))
        self._last_prompt = ids
        rule = {**self.script, **self._rule(prompt)}
        last_user = next((m["content"] for m in reversed(request.messages or []) if m.get("role") == "user"),
                         request.prompt or "")
        reply = str(rule.get("reply", "Hello from the fake model.")).replace("{last_user}", str(last_user))
        delay = float(rule.get("token_delay_s", 0))
        budget = min(request.params.max_tokens, self.n_ctx - len(ids))
        stops = StopMatcher(request.params.stop)
        made, reason = 0, "stop"
        for piece in pieces(reply):
            if ("error" in rule or "crash" in rule) and made >= int(rule.get("after", 0)):
                if rule.get("crash"):
                    os._exit(3)  # a native crash, as far as the app can tell
                raise GenerationError(str(rule["error"]))
            if cancelled():
                reason = "cancelled"
                break
            if made >= budget:
                reason = "length"
                break
            if delay:
                time.sleep(delay)
            made += 1
            text = stops.feed(piece)
            scored = (fake_logprob(piece, request.params.logprobs),) if request.params.logprobs is not None else None
            if text or scored:
                yield TokenEvent(text, scored)
            if stops.stopped:
                break
        else:
            tail = stops.flush()  # text held back as a possible stop string's start
            if tail:
                yield TokenEvent(tail)
        yield DoneEvent(reason, len(ids), made, cached)

    def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """8 numbers per text from its crc32 (same text, same vector), and its piece count as tokens;
        token ids count one each and hash as their decimal numbers."""
        counts = [len(pieces(t)) if isinstance(t, str) else len(check_token_ids(i, t, VOCAB))
                  for i, t in enumerate(texts)]
        for i, n in enumerate(counts):
            if n > self.n_ctx:
                raise ContextLengthExceeded(too_long_to_embed(i, n, self.n_ctx))
        keys = [t if isinstance(t, str) else " ".join(map(str, t)) for t in texts]
        vectors = [[((zlib.crc32(k.encode()) >> (4 * i)) & 15) / 15 for i in range(8)] for k in keys]
        return vectors, sum(counts)

    def score_window(self, ids: list[int]) -> float:
        return 2.0 * (len(ids) - 1)  # every token costs 2 nats: perplexity e^2

    def unload(self) -> None:
        self.script = {}


SPEC = BackendSpec(
    "fake", "Fake (tests)", "workbench.backends.fake_backend:FakeBackend", (FORMAT,), (),
    "The fake backend needs nothing installed.", Capabilities(supports_memory_caps=True),
    COMMON_OPTIONS | {"n_batch", "parallel"}, PlanStrategy("torch", runtime=30 * MiB),
    sniff="workbench.backends.fake_backend:sniff",
)
