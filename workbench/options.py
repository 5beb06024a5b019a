"""Plain option types shared by every layer: how to load a model, how to generate.

Dataclasses with a default and a one-line comment per field. They cross the worker
pipe as dicts (`asdict` / `from_dict`), so every field is a plain value.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields

from .errors import WorkbenchError

KV_CACHE_TYPES = ("f16", "q8_0", "q4_0")
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
MAX_THREADS = 4 * (os.cpu_count() or 1)  # more threads than this only slow an engine down
MAX_PARALLEL = 64                        # sequences in one batch
MAX_DRAFT = 16                           # prompt-lookup draft tokens per step
MAX_CAP_GIB = 1 << 20                    # a memory cap beyond a PiB is a typing mistake
MAX_LOGIT_BIAS = 300                     # OpenAI's own limit on biased tokens per request
MAX_TOP_LOGPROBS = 20                    # OpenAI's own limit on alternatives per token


def _from_dict(cls, data: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise WorkbenchError(f"Unknown {what} option(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(known))}.")
    return cls(**data)


def _opt(default, help: str, **kw):
    """A field with its one-line help (shown by the CLI's --help and as the UI's hint)."""
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model. Frozen: change a copy with `dataclasses.replace`."""

    n_ctx: int = _opt(4096, "context size in tokens (prompt + reply); 0 = the largest that fits")
    n_gpu_layers: int | None = _opt(None, "layers on the GPU; None = as many as fit, -1 = all, 0 = CPU only")
    n_batch: int = _opt(512, "tokens per prompt-processing step")
    n_threads: int | None = _opt(None, "CPU threads; None = one per physical core (fastest)")
    use_mmap: bool = _opt(True, "map the file instead of reading it")
    use_mlock: bool = _opt(False, "lock the weights in RAM (no swapping)")
    flash_attn: bool = _opt(True, "flash attention (about 13% faster decoding on CPU here, smaller buffers)")
    cache_type: str = _opt("f16", "KV cache type: q8_0/q4_0 halve/quarter the cache (need flash attention)")
    dtype: str = _opt("auto", "weights dtype; auto = bfloat16 on CPU, float16/bfloat16 on GPU")
    device: str = _opt("auto", "device: auto, cpu, cuda")
    max_vram_gib: float | None = _opt(None, "VRAM cap in GiB; None = no cap")
    max_ram_gib: float | None = _opt(None, "RAM cap in GiB; what does not fit goes to the offload folder")
    offload_folder: str | None = _opt(None, "disk offload folder (default: user_data/offload)")
    parallel: int = _opt(0, "requests generated at once (continuous batching), each with its own context; "
                            "0 = as many as fit, up to 4")
    draft_tokens: int = _opt(0, "speculative decoding: tokens drafted per step by prompt lookup; 0 = off")
    trust_pickle: bool = _opt(False, "allow pickle weights (still loaded with weights_only)")
    adapter: str | None = _opt(None, "LoRA adapter folder applied on the model (a run's adapter/)")
    rpc_servers: str = _opt("", "llama.cpp RPC servers (host:port,...) that hold part of the layers; "
                                "start each with `python -m workbench rpc-server`")
    weight_budget: dict | None = _opt(None, "set by the planner: weight bytes per device for placement")
    tensor_split: tuple | None = _opt(None, "set by the planner: layers per offload device (RPC servers, then GPUs)")

    def validate(self) -> "LoadOptions":
        if self.n_ctx != 0 and self.n_ctx < 16:
            raise WorkbenchError(f"Context size {self.n_ctx} is too small; use at least 16 tokens (or 0 for auto).")
        if self.n_batch < 1:
            raise WorkbenchError("Batch size must be at least 1.")
        if self.n_threads is not None and not 1 <= self.n_threads <= MAX_THREADS:
            raise WorkbenchError(f"Threads must be between 1 and {MAX_THREADS} (or empty for one per physical core).")
        if not 0 <= self.parallel <= MAX_PARALLEL:
            raise WorkbenchError(f"Parallel requests must be between 1 and {MAX_PARALLEL} (or 0 for automatic).")
        if not 0 <= self.draft_tokens <= MAX_DRAFT:
            raise WorkbenchError(f"Draft tokens must be between 0 (off) and {MAX_DRAFT}.")
        if self.cache_type not in KV_CACHE_TYPES:
            raise WorkbenchError(f"KV cache type {self.cache_type!r} is unknown; choose one of {', '.join(KV_CACHE_TYPES)}.")
        if self.dtype not in DTYPES:
            raise WorkbenchError(f"dtype {self.dtype!r} is unknown; choose one of {', '.join(DTYPES)}.")
        if self.device not in DEVICES:
            raise WorkbenchError(f"device {self.device!r} is unknown; choose one of {', '.join(DEVICES)}.")
        if self.rpc_servers:
            from .rpc import parse_endpoints

            parse_endpoints(self.rpc_servers)  # a malformed list says which entry and how it should look
        for name in ("max_vram_gib", "max_ram_gib"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value <= MAX_CAP_GIB):
                raise WorkbenchError(f"{name} must be a positive number of GiB, at most {MAX_CAP_GIB:,} "
                                     "(empty means no cap).")
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
    presence_penalty: float = 0.0     # -2..2: subtract this from every token already in the last 64 tokens
    frequency_penalty: float = 0.0    # -2..2: subtract this times the token's count in the last 64 tokens
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit (-100 bans it)
    logprobs: int | None = None       # None = off; else report each token's logprob and this many alternatives
    json_schema: dict | None = None   # constrain the reply to JSON matching this schema ({} = any JSON object)

    def validate(self) -> "GenParams":
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise WorkbenchError(f"{name} must be a finite number.")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise WorkbenchError("seed must be between 0 and 2^63 - 1 (or empty for random).")
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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not -2 <= value <= 2:
                raise WorkbenchError(f"{name} must be a number between -2 and 2 (0 = off).")
        if not isinstance(self.logit_bias, dict) or len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise WorkbenchError(f"logit_bias must map up to {MAX_LOGIT_BIAS} token ids to numbers.")
        bias = {}
        for token, value in self.logit_bias.items():
            if isinstance(token, str) and token.lstrip("-").isdigit():
                token = int(token)  # JSON object keys arrive as strings
            if not isinstance(token, int) or token < 0 or isinstance(value, bool) \
                    or not isinstance(value, (int, float)) or not -100 <= value <= 100:
                raise WorkbenchError("logit_bias must map token ids (0 or more) to numbers between -100 and 100.")
            bias[token] = float(value)
        self.logit_bias = bias
        if self.logprobs is not None and not (isinstance(self.logprobs, int) and 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            raise WorkbenchError(f"logprobs must be empty (off) or a number of alternatives from 0 to {MAX_TOP_LOGPROBS}.")
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise WorkbenchError("json_schema must be a JSON object (a JSON Schema).")
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
    tools: list[dict] | None = None     # OpenAI function tools the chat template describes to the model

    def to_dict(self) -> dict:
        return {"messages": self.messages, "prompt": self.prompt, "params": self.params.to_dict(),
                "continue_last": self.continue_last, "fit_context": self.fit_context, "tools": self.tools}

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationRequest":
        return cls(data.get("messages"), data.get("prompt"), GenParams.from_dict(data.get("params") or {}),
                   bool(data.get("continue_last")), bool(data.get("fit_context")), data.get("tools"))
