"""Maps a detected format to the backend that runs it.

One backend = one module + one `BACKENDS` entry. Classes are named by dotted path
and imported on first use (inside the worker), so the UI process never imports an
engine. A user's explicit loader choice wins over detection; an impossible choice
gets an error that lists the valid ones.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..detect import GGUF, GPTQ, TRANSFORMERS, Detection
from ..errors import BackendUnavailable, WorkbenchError


@dataclass(frozen=True)
class BackendSpec:
    name: str
    class_path: str             # "module:Class", imported lazily
    formats: tuple[str, ...]    # formats it can load; the first backend listing a format is its default
    requires: tuple[str, ...]   # importable modules the engine needs
    install_hint: str           # what to do when they are missing


BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "llama.cpp", "workbench.backends.llama_cpp_backend:LlamaCppBackend", (GGUF,),
            ("llama_cpp",), "GGUF models need llama-cpp-python: run ./start.sh",
        ),
        BackendSpec(
            "transformers", "workbench.backends.transformers_backend:TransformersBackend", (TRANSFORMERS, GGUF),
            ("torch", "transformers"), "Transformers models need torch and transformers: run ./start.sh",
        ),
        BackendSpec(
            "gptq", "workbench.backends.gptq_backend:GPTQBackend", (GPTQ,),
            ("torch", "transformers", "gptqmodel"), "GPTQ models need GPTQModel: run ./start.sh",
        ),
    )
}


def default_backend(fmt: str) -> str:
    for spec in BACKENDS.values():
        if spec.formats[0] == fmt:
            return spec.name
    raise WorkbenchError(f"No backend loads the {fmt!r} format.")


def choose(detection: Detection, loader: str | None = None) -> BackendSpec:
    """The backend for `detection`: the user's `loader` if it can load this format, else the default."""
    if loader in (None, "", "auto"):
        return BACKENDS[default_backend(detection.format)]
    spec = BACKENDS.get(loader)
    if spec is None:
        raise WorkbenchError(f"Unknown loader {loader!r}; choose one of auto, {', '.join(BACKENDS)}.")
    if detection.format not in spec.formats:
        able = [s.name for s in BACKENDS.values() if detection.format in s.formats]
        raise WorkbenchError(
            f"The {loader} loader cannot load a {detection.format} model; use {' or '.join(able)} (or auto)."
        )
    return spec


def check_installed(spec: BackendSpec) -> None:
    """Raise BackendUnavailable with the install hint if the engine's libraries are missing."""
    missing = [m for m in spec.requires if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(f"{spec.install_hint} (missing: {', '.join(missing)}).")


def load_backend_class(name: str):
    """Import and return the backend class registered as `name`."""
    spec = BACKENDS[name]
    check_installed(spec)
    module_name, class_name = spec.class_path.split(":")
    return getattr(importlib.import_module(module_name), class_name)
