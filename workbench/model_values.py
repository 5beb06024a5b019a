"""Typed values the model service hands out: one reply's numbers, the loaded model, its status.

They become dicts only at the worker pipe, the HTTP wire and JSON files (`to_dict` /
`from_dict`). They hold no behaviour beyond small derived numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .detect import Detection
from .options import LoadOptions
from .plan import MemoryPlan


@dataclass(frozen=True)
class GenerationStats:
    """What one generation did: why it ended, its token counts and its timing."""

    finish_reason: str          # "stop" (EOS or stop string), "length", or "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0      # prompt tokens reused from the previous request's KV cache
    dropped_messages: int = 0   # oldest messages left out so the conversation fits the context
    ttft_s: float = 0.0         # time to the first token (the whole time when none came)
    total_s: float = 0.0
    tokens_per_s: float = 0.0   # tokens after the first, over the time after the first
    draft_tokens: int = 0       # speculative decoding: tokens drafted, and how many of them were right
    draft_accepted: int = 0

    @property
    def acceptance(self) -> float | None:
        """Share of drafted tokens that were right (None without drafting)."""
        return self.draft_accepted / self.draft_tokens if self.draft_tokens else None

    @classmethod
    def cancelled_before_start(cls) -> "GenerationStats":
        return cls("cancelled")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationStats":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Completion:
    """A whole generation: its text and its stats."""

    text: str
    stats: GenerationStats


@dataclass(frozen=True)
class WorkerMemory:
    rss_bytes: int              # resident now
    peak_rss_bytes: int         # the most it was resident
    anon_bytes: int             # resident without file pages (mmapped weights the OS can drop)


@dataclass(frozen=True)
class LoadedModel:
    """A model in a worker: what the engine reported, the plan it was loaded under, and how."""

    name: str                   # its entry in models/
    backend: str
    path: str
    format: str
    n_ctx: int                  # the context it runs with (the plan's choice when asked for auto)
    device: str                 # "cpu", "cuda", or "cuda+cpu"
    dtype: str
    n_threads: int
    chat_template: bool
    details: dict               # engine-specific facts (n_gpu_layers, device map, ...)
    load_s: float
    memory: WorkerMemory        # right after loading
    worker_pid: int | None
    detection: Detection
    plan: MemoryPlan
    options: LoadOptions        # as asked for: n_ctx 0 stays 0 ("auto")

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d.update(memory=asdict(self.memory), detection=self.detection.to_dict(), plan=self.plan.to_dict(),
                 options={k: v for k, v in self.options.to_dict().items() if k != "weight_budget"})
        return d


@dataclass(frozen=True)
class ModelStatus:
    """What the service holds now: the loaded model and its worker's live RAM, or why nothing is loaded."""

    loaded: LoadedModel | None = None
    worker_rss_bytes: int | None = None
    error: str | None = None    # set when the worker died since the last look


@dataclass(frozen=True)
class ModelEntry:
    """One entry of models/: what detection found and the backend that loads it by default, or why not."""

    name: str
    detection: Detection | None = None
    backend: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        if self.detection is None:
            return {"name": self.name, "error": self.error}
        return {**self.detection.to_dict(), "name": self.name, "backend": self.backend}
