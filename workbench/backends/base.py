"""The one seam every engine implements, and the events a generation yields.

A backend lives inside a worker process (`workbench/worker.py`); it is never
imported by the UI process. It owns one loaded model. It does not own timing,
memory measurement or the pipe: the worker adds those around it.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

from ..detect import Detection
from ..errors import GenerationError, WorkbenchError
from ..options import GenerationRequest, LoadOptions


@dataclass
class ModelInfo:
    """What a backend reports after loading."""

    backend: str
    path: str
    format: str
    n_ctx: int
    device: str                # "cpu", "cuda", or "cuda+cpu" for a split
    dtype: str                 # weights' dtype or quantization
    n_threads: int
    chat_template: bool        # the model has its own chat template
    details: dict              # engine-specific facts (n_gpu_layers, device map, ...)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TokenEvent:
    text: str                  # decoded text of this token ("" while a UTF-8 sequence is incomplete)
    logprobs: tuple | None = None  # when asked: OpenAI logprob entries ({token, bytes, logprob, top_logprobs})


@dataclass(frozen=True)
class DoneEvent:
    finish_reason: str         # "stop" (EOS or stop string), "length", or "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0     # prompt tokens reused from the previous request's KV cache


def physical_cores() -> int:
    """Physical CPU cores (threads beyond these slow token generation down)."""
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


class Backend(ABC):
    """One engine holding one model.

    Generation comes either from `generate()` (one request, a generator of events) or, for
    an engine that batches, from `batch_engine()` (see llama_batch.py), which the worker's
    scheduler drives for every request at once.
    """

    name: str = ""
    interleaves: bool = False  # several generate() generators may run in turn (they share no state)

    @abstractmethod
    def load(self, detection: Detection, options: LoadOptions) -> ModelInfo:
        """Load the detected model; raise WorkbenchError with an actionable message on failure."""

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[TokenEvent | DoneEvent]:
        """Yield a TokenEvent per token, then exactly one DoneEvent; check `cancelled()` every token.

        An interleaving backend may also yield None: nothing new yet, the scheduler moves on to the others."""
        raise NotImplementedError(f"{self.name} generates through its batch engine.")

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` as this model sees it (no special tokens added)."""

    @abstractmethod
    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """Token ids the request's prompt becomes (chat-templated when it has messages)."""

    def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """(one embedding per text, tokens read): the model's pooled hidden state for each text
        (a text may come as token ids: check them with check_token_ids).

        A text longer than the embedding context raises ContextLengthExceeded (too_long_to_embed)."""
        raise WorkbenchError(f"The {self.name} backend cannot make embeddings; load a GGUF or Transformers model.")

    def score_window(self, ids: list[int]) -> float:
        """Summed negative log-likelihood of ids[1:] given the tokens before each, from an empty context."""
        raise NotImplementedError(f"{self.name} cannot score text.")

    def unload(self) -> None:
        """Drop the model (the worker process ends right after, returning its memory)."""


def check_token_ids(index: int, ids: list[int], vocab: int) -> list[int]:
    """`ids` (an input given as token ids, as OpenAI's API allows) if each is a token of a `vocab`-token model."""
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        raise GenerationError(f"input[{index}] holds token id {bad}, which is not in this model's vocabulary "
                              f"(0 to {vocab - 1}).")
    return ids


def too_long_to_embed(index: int, tokens: int, limit: int) -> str:
    """The error for a text to embed that does not fit the embedding context (it is refused, not cut)."""
    return (f"input[{index}] is too large to embed: it has {tokens:,} tokens and the embedding context "
            f"holds {limit:,}; shorten or split it.")
