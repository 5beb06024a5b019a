"""Plain option types shared by every layer: how to load a model, how to generate.

Dataclasses with a default and a one-line comment per field. They cross the worker
pipe as dicts (`asdict` / `from_dict`), so every field is a plain value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import WorkbenchError

KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")


def _from_dict(cls, data: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise WorkbenchError(f"Unknown {what} option(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(known))}.")
    return cls(**data)


@dataclass
class LoadOptions:
    n_ctx: int = 4096                 # context size in tokens (prompt + reply); 0 = the largest that fits
    n_gpu_layers: int | None = None   # llama.cpp layers on the GPU; None = all if a GPU is present, else 0
    n_batch: int = 512                # llama.cpp prompt-processing batch size
    n_threads: int | None = None      # CPU threads; None = physical cores
    use_mmap: bool = True             # llama.cpp: map the file instead of reading it
    use_mlock: bool = False           # llama.cpp: lock weights in RAM (no swapping)
    flash_attn: bool = True           # llama.cpp flash attention (about 13% faster decoding on CPU here)
    cache_type: str = "f16"           # llama.cpp KV cache type: f16, q8_0, q4_0
    dtype: str = "auto"               # Transformers weights dtype; auto = bf16 on CPU, fp16 on GPU
    device: str = "auto"              # Transformers/GPTQ device: auto, cpu, cuda
    max_vram_gib: float | None = None # VRAM cap for Transformers/GPTQ placement
    max_ram_gib: float | None = None  # RAM cap; what does not fit goes to the offload folder
    offload_folder: str | None = None # disk offload folder (default: user_data/offload)
    trust_pickle: bool = False        # allow pickle weights (still loaded with weights_only)
    adapter: str | None = None        # LoRA adapter folder applied on a Transformers model (a run's adapter/)
    weight_budget: dict | None = None # set by the planner: weight bytes per device ("cpu", "0") for placement

    def validate(self) -> "LoadOptions":
        if self.n_ctx != 0 and self.n_ctx < 16:
            raise WorkbenchError(f"Context size {self.n_ctx} is too small; use at least 16 tokens (or 0 for auto).")
        if self.n_batch < 1:
            raise WorkbenchError("Batch size must be at least 1.")
        if self.n_threads is not None and self.n_threads < 1:
            raise WorkbenchError("Threads must be at least 1 (or empty for automatic).")
        if self.cache_type not in KV_CACHE_TYPES:
            raise WorkbenchError(f"KV cache type {self.cache_type!r} is unknown; choose one of {', '.join(KV_CACHE_TYPES)}.")
        if self.dtype not in DTYPES:
            raise WorkbenchError(f"dtype {self.dtype!r} is unknown; choose one of {', '.join(DTYPES)}.")
        if self.device not in DEVICES:
            raise WorkbenchError(f"device {self.device!r} is unknown; choose one of {', '.join(DEVICES)}.")
        for name in ("max_vram_gib", "max_ram_gib"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise WorkbenchError(f"{name} must be a positive number of GiB (or empty for no cap).")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoadOptions":
        return _from_dict(cls, data, "load").validate()


@dataclass
class GenParams:
    max_tokens: int = 512             # most new tokens to generate
    temperature: float = 0.7          # 0 = greedy (always the most likely token)
    top_p: float = 0.95               # nucleus sampling: keep the smallest set with this much probability
    top_k: int = 40                   # keep only the k most likely tokens (0 = off)
    min_p: float = 0.05               # drop tokens below this fraction of the top token's probability
    repetition_penalty: float = 1.0   # >1 discourages repeating tokens already in the context
    seed: int | None = None           # fixed seed = same text twice; None = random
    stop: list[str] = field(default_factory=list)  # strings that end the reply (not included)

    def validate(self) -> "GenParams":
        if self.max_tokens < 1:
            raise WorkbenchError("max_tokens must be at least 1.")
        if self.temperature < 0:
            raise WorkbenchError("temperature must be 0 or more (0 = greedy).")
        if not 0 < self.top_p <= 1:
            raise WorkbenchError("top_p must be in (0, 1].")
        if self.top_k < 0:
            raise WorkbenchError("top_k must be 0 (off) or more.")
        if not 0 <= self.min_p < 1:
            raise WorkbenchError("min_p must be in [0, 1).")
        if self.repetition_penalty <= 0:
            raise WorkbenchError("repetition_penalty must be positive (1 = off).")
        self.stop = [s for s in self.stop if s]
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenParams":
        return _from_dict(cls, data, "generation").validate()


@dataclass
class GenerationRequest:
    """What to generate from: chat `messages` (rendered with the model's template) or a raw `prompt`."""

    messages: list[dict] | None = None  # [{"role": "user", "content": "..."}]
    prompt: str | None = None           # raw text, used as-is when messages is None
    params: GenParams = field(default_factory=GenParams)
    continue_last: bool = False         # messages end with a partial assistant reply: continue it
    fit_context: bool = False           # drop the oldest turns that do not fit (see context_fit.py)

    def to_dict(self) -> dict:
        return {"messages": self.messages, "prompt": self.prompt, "params": self.params.to_dict(),
                "continue_last": self.continue_last, "fit_context": self.fit_context}

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationRequest":
        return cls(data.get("messages"), data.get("prompt"), GenParams.from_dict(data.get("params") or {}),
                   bool(data.get("continue_last")), bool(data.get("fit_context")))
