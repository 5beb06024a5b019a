"""Side by side: one prompt to two loaded models at once, each in its own worker.

Owns running the two generations concurrently and merging their events into one
stream, so a user sees what a quantization costs (e.g. the GGUF beside the GPTQ form of
the same model) in text, speed and memory. The models are two ModelService slots.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

from ..errors import WorkbenchError
from ..options import GenerationRequest, GenParams
from .model_service import ModelService


class CompareService:
    def __init__(self, a: ModelService, b: ModelService):
        self.slots = {"a": a, "b": b}
        self._stops: dict[str, threading.Event] = {}  # session -> stop request of its running comparison

    def stream(self, messages: list[dict], params: GenParams, session: str | None = None) -> Iterator[tuple[str, str, object]]:
        """Yield (side, "token"|"done"|"error", value) as either model produces it; `stop(session)` ends both."""
        from .chat_service import check_message

        check_message(messages[-1]["content"] if messages else "")  # an empty prompt is refused, as in Chat
        for side, service in self.slots.items():
            if service.loaded_name() is None:
                raise WorkbenchError(f"Model {side.upper()} is not loaded; load both models first.")
        events: queue.Queue = queue.Queue()
        stop = threading.Event()
        if session is not None:
            self._stops[session] = stop

        def run(side: str, service: ModelService) -> None:
            try:
                for kind, value in service.generate(GenerationRequest(messages=messages, params=params), stop):
                    events.put((side, kind, value))
            except WorkbenchError as e:
                events.put((side, "error", str(e)))
            finally:
                events.put((side, "end", None))

        threads = [threading.Thread(target=run, args=(side, s), daemon=True) for side, s in self.slots.items()]
        for t in threads:
            t.start()
        running = len(threads)
        try:
            while running:
                side, kind, value = events.get()
                if kind == "end":
                    running -= 1
                else:
                    yield side, kind, value
        finally:
            stop.set()  # the reader went away: end both generations
            if session is not None and self._stops.get(session) is stop:
                del self._stops[session]

    def stop(self, session: str) -> None:
        """End the comparison running for `session` (a browser tab), and no one else's."""
        stop = self._stops.get(session)
        if stop is not None:
            stop.set()

    def describe(self, side: str) -> str:
        """What is loaded on `side`, for the tab (also after a page reload)."""
        name = self.slots[side].loaded_name()
        return f"{side.upper()}: `{name}`" if name else f"{side.upper()} is not loaded."

    def memory(self, side: str) -> int | None:
        """Live RSS of that side's worker, in bytes."""
        return self.slots[side].status().worker_rss_bytes
