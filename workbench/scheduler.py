"""The worker's scheduler: many requests on one model, each with its own state, in arrival order.

Runs inside the worker process. Requests arrive by id (see worker.py's protocol); up to
`slots` of them generate at once and the rest wait, first come first served. Each has
its own sampling parameters and seed, stop strings, token budget, cancel flag and
statistics; a cancel or a hang-up ends only that request. Two ways to run them:

- **batched**: the backend offers a `BatchEngine` (llama.cpp): one engine step advances
  every active sequence by a token, so four streams cost little more than one;
- **interleaved**: otherwise each active request is the backend's own `generate()`
  generator, advanced one event at a time in turn (a backend whose generations share
  state, like Transformers' prompt cache, allows one at a time: the others wait). A
  generator may yield None for "nothing new yet" (the remote backend, whose tokens come
  from another server), so one slow stream never holds up the others.

Text goes out coalesced per request (at most one message per STREAM_COALESCE_S, the first
token at once). Between steps the worker answers other messages (tokenize, memory,
cancel), so nothing waits for a long reply to end. It does not own the pipe or processes.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .backends.base import DoneEvent, TokenEvent
from .errors import ContextLengthExceeded, WorkbenchError
from .model_values import GenerationStats
from .options import GenerationRequest
from .stop_strings import StopMatcher

STREAM_COALESCE_S = 0.05  # at most ~20 sends a second per request: smooth to read, light on a small machine

Send = Callable[[tuple], None]


@dataclass
class Sequence:
    rid: int
    request: GenerationRequest
    arrived: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    slot: int | None = None
    events: Iterator | None = None       # interleaved mode: the backend's generator
    prompt_tokens: int = 0
    cached_tokens: int = 0
    dropped: int = 0
    made: int = 0
    budget: int = 0
    first: float | None = None
    pending: list[str] = field(default_factory=list)
    pending_logprobs: list[dict] = field(default_factory=list)  # one entry per token, aligned with the text
    last_send: float = 0.0
    stops: StopMatcher | None = None
    decoder: object | None = None
    engine_tokens: int = 0               # tokens the engine produced (with drafting, several per step)


class Scheduler:
    def __init__(self, backend, n_ctx: int, slots: int, send: Send, draft_n: int = 0):
        self.backend, self.n_ctx, self.send, self.draft_n = backend, n_ctx, send, draft_n
        self.engine = backend.batch_engine() if hasattr(backend, "batch_engine") else None
        self.slots = slots if (self.engine is not None or backend.interleaves) else 1
        self.waiting: deque[Sequence] = deque()
        self.active: dict[int, Sequence] = {}  # rid -> sequence

    # --- requests ------------------------------------------------------------------
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    def submit(self, rid: int, request: GenerationRequest) -> None:
        self.waiting.append(Sequence(rid, request))

    def cancel(self, rid: int | None) -> None:
        """End request `rid` (None: every request) at its next token; one still waiting ends at once."""
        for seq in list(self.waiting):
            if rid is None or seq.rid == rid:
                self.waiting.remove(seq)
                self.send(("done", seq.rid, GenerationStats("cancelled", ttft_s=0.0).to_dict()))
        for seq in self.active.values():
            if rid is None or seq.rid == rid:
                seq.cancelled = True

    # --- one round -------------------------------------------------------------------
    def run_once(self) -> None:
        """Admit waiting requests into free slots, then advance every active one by a step."""
        self._admit()
        if not self.active:
            return
        if self.engine is not None:
            self._step_batch()
        else:
            self._step_interleaved()
        now = time.perf_counter()
        for seq in self.active.values():
            if seq.pending and now - seq.last_send >= STREAM_COALESCE_S:
                self._flush_text(seq, now)

    def _admit(self) -> None:
        while self.waiting and len(self.active) < self.slots:
            seq = self.waiting.popleft()
            try:
                self._start(seq)
            except WorkbenchError as e:
                self._fail(seq, e)
            except Exception as e:  # noqa: BLE001 - the engine's own failure, for this request only
                self._fail(seq, e)

    def _start(self, seq: Sequence) -> None:
        request = seq.request
        if request.fit_context and request.messages:
            from .context_fit import fit_to_context

            request, seq.dropped = fit_to_context(request, lambda r: len(self.backend.prompt_tokens(r)), self.n_ctx)
            seq.request = request
        if self.engine is None:
            seq.events = self.backend.generate(request, lambda: seq.cancelled)
            self.active[seq.rid] = seq
            return
        prompt = self.backend.prompt_tokens(request)
        if len(prompt) >= self.n_ctx:
            raise ContextLengthExceeded(f"The prompt has {len(prompt)} tokens but the context holds {self.n_ctx}; "
                                 "shorten the conversation or load the model with a larger context.")
        p = request.params
        slot = self.engine.free_slot(prompt)
        seq.slot, seq.prompt_tokens = slot, len(prompt)
        seq.budget = min(p.max_tokens, self.n_ctx - len(prompt))
        seq.stops = StopMatcher(p.stop)
        seq.decoder = self.engine.detokenizer()
        self.active[seq.rid] = seq
        seed = p.seed if p.seed is not None else random.randrange(2**31)
        token, seq.cached_tokens = self.engine.start(slot, prompt, p, seed % 2**32, self.draft_n)
        self._take(seq, [token])

    def _step_batch(self) -> None:
        live = [s for s in self.active.values() if not s.cancelled]
        for seq in [s for s in self.active.values() if s.cancelled]:
            self._finish(seq, "cancelled")
        if not live:
            return
        try:
            made = self.engine.step([s.slot for s in live])
        except Exception as e:  # noqa: BLE001 - a failed batch fails its requests, the worker goes on
            for seq in live:
                self._fail(seq, e)
            return
        for seq in live:
            self._take(seq, made[seq.slot])

    def _take(self, seq: Sequence, tokens: list[int]) -> None:
        """Turn the engine's new tokens for `seq` into text; end it on EOS, a stop string, the budget."""
        scores = self.engine.take_scores(seq.slot) if seq.request.params.logprobs is not None else []
        for i, token in enumerate(tokens):
            seq.engine_tokens += 1
            if self.engine.is_end(token):
                return self._finish(seq, "stop")
            if i < len(scores):
                seq.pending_logprobs.append(self._logprob_entry(scores[i]))
            if seq.first is None:
                seq.first = time.perf_counter()
            seq.made += 1
            text = seq.stops.feed(seq.decoder.add(token))
            if text:
                seq.pending.append(text)
                if seq.made == 1:
                    self._flush_text(seq, time.perf_counter())
            if seq.stops.stopped:
                return self._finish(seq, "stop")
            if seq.made >= seq.budget:
                return self._finish(seq, "length")
        if seq.cancelled:
            self._finish(seq, "cancelled")

    def _step_interleaved(self) -> None:
        for seq in list(self.active.values()):
            try:
                event = next(seq.events)
            except StopIteration:
                event = DoneEvent("stop", seq.prompt_tokens, seq.made, 0)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                self._fail(seq, e)
                continue
            if event is None:  # nothing new yet (a remote server's stream): the other requests go on
                continue
            if isinstance(event, TokenEvent):
                seq.pending_logprobs.extend(event.logprobs or ())
                if seq.first is None:
                    seq.first = time.perf_counter()
                    seq.pending.append(event.text)
                    self._flush_text(seq, seq.first)
                else:
                    seq.pending.append(event.text)
            else:
                seq.prompt_tokens, seq.made, seq.cached_tokens = (event.prompt_tokens, event.completion_tokens,
                                                                  event.cached_tokens)
                self._finish(seq, event.finish_reason, engine_done=True)

    # --- endings -------------------------------------------------------------------
    def _logprob_entry(self, scored: tuple) -> dict:
        """OpenAI's per-token logprob entry from the engine's (token, logprob, alternatives)."""
        token, logprob, top = scored

        def item(t: int, lp: float) -> dict:
            raw = self.engine.token_bytes(t)
            return {"token": raw.decode("utf-8", errors="replace"), "bytes": list(raw), "logprob": lp}

        return {**item(token, logprob), "top_logprobs": [item(t, lp) for t, lp in top]}

    def _flush_text(self, seq: Sequence, now: float) -> None:
        text = "".join(seq.pending)
        seq.pending.clear()
        seq.last_send = now
        if seq.pending_logprobs:  # ("token", rid, text, logprobs): one entry per token in this text
            self.send(("token", seq.rid, text, seq.pending_logprobs))
            seq.pending_logprobs = []
        elif text:
            self.send(("token", seq.rid, text))

    def _finish(self, seq: Sequence, reason: str, engine_done: bool = False) -> None:
        if self.engine is not None and not engine_done:
            if not seq.stops.stopped:  # text held back (a partial character or stop string) goes out now
                seq.pending.append(seq.stops.feed(seq.decoder.flush()) + seq.stops.flush())
        now = time.perf_counter()
        self._flush_text(seq, now)
        decode_s = now - seq.first if seq.first is not None else 0.0
        stats = GenerationStats(
            finish_reason=reason, prompt_tokens=seq.prompt_tokens, completion_tokens=seq.made,
            cached_tokens=seq.cached_tokens, dropped_messages=seq.dropped,
            ttft_s=(seq.first if seq.first is not None else now) - seq.arrived, total_s=now - seq.arrived,
            tokens_per_s=(seq.made - 1) / decode_s if decode_s > 0 and seq.made > 1 else 0.0,
            **self._draft_stats(seq))
        self._release(seq)
        self.send(("done", seq.rid, stats.to_dict()))

    def _draft_stats(self, seq: Sequence) -> dict:
        if self.engine is None or not self.draft_n or seq.slot is None:
            return {}
        slot = self.engine.slots[seq.slot]
        return {"draft_tokens": slot.drafted, "draft_accepted": slot.accepted}

    def _fail(self, seq: Sequence, e: BaseException) -> None:
        from .worker import error_message

        self._release(seq)
        self.send(("error", seq.rid, *error_message(e)))

    def _release(self, seq: Sequence) -> None:
        self.active.pop(seq.rid, None)
        if self.engine is not None and seq.slot is not None and self.engine.slots[seq.slot].busy:
            self.engine.release(seq.slot)
        if seq.events is not None:
            seq.events.close()
