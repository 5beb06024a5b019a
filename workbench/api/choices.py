"""A request's choices: `n` generations at once, their events merged, and their OpenAI shapes.

Owns running the n choices of one API request as n scheduler requests together (seeds
seed, seed+1, ...; unseeded ones each draw their own), merging their events in arrival
order as `ChoiceEvent`s (a text with the logprob entries of exactly its tokens, or a
choice's end), and the logprobs wire shapes of chat and completions. Closing the merged
stream ends every generation of the request. It does not own SSE or HTTP: server.py does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import AsyncIterator

from ..model_values import GenerationStats
from ..options import GenerationRequest


@dataclass
class ChoiceEvent:
    index: int
    text: str = ""
    logprobs: list[dict] | None = None    # entries for the tokens of `text`, when asked
    stats: GenerationStats | None = None  # set on a choice's last event


@dataclass
class Choice:
    """What one choice produced so far."""

    text: str = ""
    logprobs: list[dict] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=lambda: GenerationStats("cancelled"))

    def add(self, event: ChoiceEvent) -> None:
        self.text += event.text
        self.logprobs.extend(event.logprobs or ())
        if event.stats is not None:
            self.stats = event.stats


def choice_requests(gen: GenerationRequest, n: int) -> list[GenerationRequest]:
    """`n` copies of `gen`; with a seed, choice i gets seed + i so the choices differ and repeat."""
    seed = gen.params.seed
    return [replace(gen, params=replace(gen.params, seed=None if seed is None else (seed + i) % 2**63,
                                        stop=list(gen.params.stop))) for i in range(n)]


async def merged(models, gens: list[GenerationRequest]) -> AsyncIterator[ChoiceEvent]:
    """Every choice's events as they come; closing this ends all of them."""
    queue: asyncio.Queue = asyncio.Queue()
    streams = [models.agenerate(g) for g in gens]

    async def pump(index: int, events) -> None:
        held = None  # a text waiting for its logprobs, which the worker sends right after it
        try:
            async for kind, value in events:
                if kind == "logprobs":
                    await queue.put(ChoiceEvent(index, held or "", value))
                    held = None
                    continue
                if held is not None:
                    await queue.put(ChoiceEvent(index, held))
                    held = None
                if kind == "token":
                    if gens[index].params.logprobs is None:
                        await queue.put(ChoiceEvent(index, value))
                    else:
                        held = value
                elif kind == "done":
                    await queue.put(ChoiceEvent(index, stats=value))
        except Exception as e:  # noqa: BLE001 - handed to the consumer, which raises it
            await queue.put(e)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, events)) for i, events in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for events in streams:
            await events.aclose()


def chat_logprobs(entries: list[dict]) -> dict:
    """choices[].logprobs of a chat completion (or chunk)."""
    return {"content": entries, "refusal": None}


def completion_logprobs(entries: list[dict], offset: int = 0) -> dict:
    """choices[].logprobs of a text completion: parallel lists, offsets in characters from `offset`."""
    tokens, offsets = [], []
    for entry in entries:
        offsets.append(offset)
        tokens.append(entry["token"])
        offset += len(entry["token"])
    return {"tokens": tokens, "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}
