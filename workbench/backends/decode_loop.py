"""The per-token bookkeeping every backend's generation shares.

Given an engine's stream of token ids, it stops at end-of-generation tokens, stop
strings (never showing part of one), the token budget and a cancel request, and turns
tokens into TokenEvents. The engines own producing the ids; this owns when to stop.
"""

from __future__ import annotations

from typing import Callable, Generator, Iterable

from ..stop_strings import StopMatcher
from .base import TokenEvent


def run_decode(
    tokens: Iterable[int],
    is_end: Callable[[int], bool],
    piece: Callable[[int], str],
    stop: list[str],
    budget: int,
    cancelled: Callable[[], bool],
    flush: Callable[[], str] = lambda: "",
) -> Generator[TokenEvent, None, tuple[str, int]]:
    """Yield a TokenEvent per token; return (finish_reason, tokens generated)."""
    stops = StopMatcher(stop)
    n, reason = 0, "length"
    for token in tokens:
        if is_end(token):
            reason = "stop"
            break
        n += 1
        text = stops.feed(piece(token))
        if text or not stops.stopped:
            yield TokenEvent(text)
        if stops.stopped:
            return "stop", n
        if n >= budget:
            break
        if cancelled():
            reason = "cancelled"
            break
    tail = stops.flush() + flush()
    if tail:
        yield TokenEvent(tail)
    return reason, n


def common_prefix(cached, prompt) -> int:
    """How many leading tokens of `prompt` the KV cache (`cached` ids) already holds."""
    n = 0
    for x, y in zip(cached, prompt):
        if x != y:
            break
        n += 1
    return n


def best_free_slot(slots, prompt) -> int | None:
    """The free slot (`.busy`, `.ids`, `.seq`) whose cache shares the longest prefix with `prompt`; None if all are busy."""
    free = [s for s in slots if not s.busy]
    if not free:
        return None
    return max(free, key=lambda s: common_prefix(s.ids, prompt)).seq
