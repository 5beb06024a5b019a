"""Which backends exist, what each can do, and which one runs a given model.

A backend is its `BackendSpec`: the formats it loads, its capabilities, the load options
that apply to it, how the planner sizes it and its display name. `plan.py`, the CLI and
the tabs ask the spec and never compare backend names. One backend = one module + one
`register_backend` line; the engine class is named by dotted path and imported on first
use (inside the worker, which gets the path in its load message), so the UI process never
imports an engine, and a backend registered at run time (tests, plugins) works in a
worker too.

A `Registry` is a plain object that each app, CLI run or test builds (`default_registry()`:
the built-in backends plus plugins named in $WORKBENCH_BACKENDS) and hands to the services;
nothing is registered globally. A user's explicit loader choice wins over detection; an
impossible choice gets an error that lists the valid ones.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass

from ..detect import GGUF, GPTQ, TRANSFORMERS, Detection, DetectionCache, detect as detect_files
from ..errors import BackendUnavailable, WorkbenchError
from ..plan import GGUFDequantCost, KiB, MiB, PlanStrategy

# Load options that apply to every backend (the rest are listed per spec).
COMMON_OPTIONS = frozenset({"n_ctx", "n_threads", "max_ram_gib", "adapter", "weight_budget"})


@dataclass(frozen=True)
class Capabilities:
    can_stream: bool = True
    can_train: bool = False             # LoRA training runs on models this backend loads
    supports_n_gpu_layers: bool = False  # the user picks how many layers go to the GPU
    supports_memory_caps: bool = False   # RAM/VRAM caps are kept (placement or context)
    can_score: bool = True               # perplexity of a text (the engine returns logits)


@dataclass(frozen=True)
class BackendSpec:
    name: str                   # the loader name users type (--loader, the Model tab's radio)
    display_name: str           # how the UI and messages name it
    class_path: str             # "module:Class", imported lazily
    formats: tuple[str, ...]    # formats it can load; the first backend listing a format is its default
    requires: tuple[str, ...]   # importable modules the engine needs
    install_hint: str           # what to do when they are missing
    capabilities: Capabilities = Capabilities()
    load_options: frozenset[str] = COMMON_OPTIONS  # LoadOptions fields that mean something here
    planner: PlanStrategy = PlanStrategy("torch", 175 * MiB)
    sniff: str | None = None    # "module:function(path) -> Detection | None" for formats detect.py does not know

    def uses(self, option: str) -> bool:
        """Whether the load option `option` (a LoadOptions field name) applies to this backend."""
        return option in self.load_options


class Registry:
    """The registered backends, in registration order (which decides each format's default)."""

    def __init__(self, specs: tuple[BackendSpec, ...] = ()):
        self._specs: dict[str, BackendSpec] = {}
        self._detections = DetectionCache()  # the model list asks several times per page load
        for spec in specs:
            self.register(spec)

    def register(self, spec: BackendSpec) -> BackendSpec:
        """Add a backend; a second backend with the same name is refused."""
        if spec.name in self._specs:
            raise WorkbenchError(f"A backend named {spec.name!r} is already registered.")
        self._specs[spec.name] = spec
        return spec

    def unregister(self, name: str) -> None:
        self._specs.pop(name, None)

    def names(self) -> list[str]:
        return list(self._specs)

    def get(self, name: str) -> BackendSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise WorkbenchError(f"Unknown loader {name!r}; choose one of auto, {', '.join(self._specs)}.")
        return spec

    def default_for(self, fmt: str) -> BackendSpec:
        for spec in self._specs.values():
            if spec.formats[0] == fmt:
                return spec
        raise WorkbenchError(f"No backend loads the {fmt!r} format.")

    def choose(self, detection: Detection, loader: str | None = None) -> BackendSpec:
        """The backend for `detection`: the user's `loader` if it can load this format, else the default."""
        if loader in (None, "", "auto"):
            return self.default_for(detection.format)
        spec = self.get(loader)
        if detection.format not in spec.formats:
            able = [s.name for s in self._specs.values() if detection.format in s.formats]
            raise WorkbenchError(
                f"The {loader} loader cannot load a {detection.format} model; use {' or '.join(able)} (or auto)."
            )
        return spec

    def detect(self, path: str, trust_pickle: bool = False) -> Detection:
        """What is at `path`: a registered backend's own format (its `sniff`), else detect.py's formats.

        Remembered by file identity (DetectionCache): a file that did not change is not read again."""
        return self._detections.get(path, trust_pickle, self._detect_uncached)

    def _detect_uncached(self, path: str, trust_pickle: bool) -> Detection:
        if os.path.isfile(path):
            for spec in self._specs.values():
                if spec.sniff:
                    found = _import(spec.sniff)(path)
                    if found is not None:
                        return found
        return detect_files(path, trust_pickle=trust_pickle)


def _import(dotted: str):
    module_name, attr = dotted.split(":")
    return getattr(importlib.import_module(module_name), attr)


def check_installed(spec: BackendSpec) -> None:
    """Raise BackendUnavailable with the install hint if the engine's libraries are missing."""
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"{spec.install_hint} (missing: {', '.join(missing)}).")


def load_backend_class(class_path: str, requires: tuple[str, ...] = (), install_hint: str = ""):
    """Import and return the backend class at `class_path` ("module:Class")."""
    missing = [m for m in requires if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"{install_hint} (missing: {', '.join(missing)}).")
    return _import(class_path)


# Process sizes and kernel constants measured on the sample model (bench/bench_plan.py re-measures them).
# cuda_host_runtime: measured on an H200 (CUDA 13): the CUDA build's worker held 341 MiB more RAM with
# layers on the GPU, and a Transformers worker on cuda (torch 2.11 cu130) 1468 MiB more than on the CPU.
LLAMA_PLAN = PlanStrategy("gguf", runtime=62 * MiB, context_past_model=True, cuda_host_runtime=341 * MiB)
# Measured on tiny models of six architectures (bench/arch_models.py) and the sample: torch and
# transformers imported take 253 MiB, loading and a first prompt add 150 MiB beside one copy of the
# weights. transformers' GGUF loader also parses the metadata and holds the file or dequantized copies
# while loading (GGUFDequantCost; fitted with bench/arch_gguf.py's models, the sample and a 1.07B model).
# The probe (runtime_probe.py) measured 351 MiB for these imports (and torch_warmup's first tensor
# operations) where 253 + 150 MiB were calibrated; GPTQ's 509 MiB.
_TORCH_PROBE = ("torch", "transformers", "transformers.modeling_utils", "workbench.worker")
TRANSFORMERS_PLAN = PlanStrategy("torch", runtime=253 * MiB, load_overhead=150 * MiB,
                                 gguf_dequant=GGUFDequantCost(per_tokenizer_string=2.25 * KiB,
                                                              per_embedding_value=11, constant=-57 * MiB),
                                 cuda_host_runtime=1468 * MiB,
                                 probe_imports=_TORCH_PROBE + ("workbench.backends.transformers_backend",
                                                               "workbench.backends.torch_warmup"),
                                 probe_reference=351 * MiB)
# GPTQModel, torchao and their kernels on top of torch; the CPU kernel keeps 1.28 bytes per
# quantized parameter dequantized.
GPTQ_PLAN = PlanStrategy("torch", runtime=597 * MiB, weights_as_stored=True, dequant_per_param=1.28, unties_head=True,
                         cuda_host_runtime=1468 * MiB,  # torch's CUDA libraries, as Transformers (not measured apart)
                         probe_imports=_TORCH_PROBE + ("gptqmodel", "workbench.backends.gptq_backend",
                                                       "workbench.backends.torch_warmup"),
                         probe_reference=509 * MiB)

_LLAMA_OPTIONS = frozenset({"n_gpu_layers", "n_batch", "use_mmap", "use_mlock", "flash_attn", "cache_type", "rpc_servers",
                            "parallel", "draft_tokens"})
_TORCH_OPTIONS = frozenset({"n_batch", "dtype", "device", "max_vram_gib", "offload_folder", "parallel",
                            "draft_tokens"})

BUILTIN = (
    BackendSpec(
        "llama.cpp", "llama.cpp", "workbench.backends.llama_cpp_backend:LlamaCppBackend", (GGUF,),
        ("llama_cpp",), "GGUF models need llama-cpp-python: run ./start.sh",
        Capabilities(supports_n_gpu_layers=True, supports_memory_caps=True),
        (COMMON_OPTIONS | _LLAMA_OPTIONS) - {"adapter"}, LLAMA_PLAN,
    ),
    BackendSpec(
        "transformers", "Transformers", "workbench.backends.transformers_backend:TransformersBackend",
        (TRANSFORMERS, GGUF), ("torch", "transformers"),
        "Transformers models need torch and transformers: run ./start.sh",
        Capabilities(can_train=True, supports_memory_caps=True),
        COMMON_OPTIONS | _TORCH_OPTIONS | {"trust_pickle"}, TRANSFORMERS_PLAN,
    ),
    BackendSpec(
        "gptq", "GPTQ (GPTQModel)", "workbench.backends.gptq_backend:GPTQBackend", (GPTQ,),
        ("torch", "transformers", "gptqmodel"), "GPTQ models need GPTQModel: run ./start.sh",
        # LoRA trains beside the frozen quantized layers (peft + GPTQModel's torch kernel).
        Capabilities(can_train=True, supports_memory_caps=True),
        COMMON_OPTIONS | _TORCH_OPTIONS, GPTQ_PLAN,
    ),
    BackendSpec(
        # Any OpenAI-compatible server, described by a models/NAME.remote.json entry (remote_backend.py).
        "remote", "Remote server (OpenAI API)", "workbench.backends.remote_backend:RemoteBackend", ("remote",),
        ("httpx",), "Remote servers need httpx: run ./start.sh",
        Capabilities(can_score=False), frozenset({"n_ctx", "parallel"}),
        PlanStrategy("remote", runtime=45 * MiB), sniff="workbench.backends.remote_backend:sniff",
    ),
)

PLUGINS_ENV = "WORKBENCH_BACKENDS"  # extra backends: comma-separated "module:SPEC" paths (tests, plugins)


def default_registry() -> Registry:
    """The built-in backends plus any named in $WORKBENCH_BACKENDS; each app, CLI run or test builds its own."""
    registry = Registry(BUILTIN)
    for dotted in filter(None, (p.strip() for p in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            spec = _import(dotted)
        except (ImportError, AttributeError, ValueError) as e:
            raise WorkbenchError(f"${PLUGINS_ENV} names {dotted!r}, which cannot be imported ({e}).") from e
        registry.register(spec)
    return registry
