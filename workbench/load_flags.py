"""Command-line flags for loading a model, shared by `python -m workbench` and `webui.py`.

Owns the flag names and turning parsed flags (plus an optional hardware profile) into a
`LoadOptions`. The help of each flag is the field's own help (options.py); which backends
a flag applies to comes from the registered backends' specs. Knows no backend by name.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields, replace

from .backends.registry import Registry, default_registry
from .options import DEVICES, DTYPES, KV_CACHE_TYPES, LoadOptions
from .paths import Paths

# LoadOptions field -> (flag, argparse keywords) where the flag is not simply --field-name.
_SPECIAL = {
    "n_threads": ("--threads", {"type": int}),
    "use_mmap": ("--no-mmap", {"action": "store_false", "default": None,
                               "help": "read the file instead of mapping it"}),
    "use_mlock": ("--mlock", {"action": "store_true", "default": None}),
    "flash_attn": ("--flash-attn", {"action": argparse.BooleanOptionalAction, "default": None}),
    "cache_type": ("--cache-type", {"choices": KV_CACHE_TYPES}),
    "dtype": ("--dtype", {"choices": DTYPES}),
    "device": ("--device", {"choices": DEVICES}),
    "max_vram_gib": ("--max-vram", {"type": float, "metavar": "GIB"}),
    "max_ram_gib": ("--max-ram", {"type": float, "metavar": "GIB"}),
    "trust_pickle": ("--trust-pickle", {"action": "store_true", "default": None}),
}
_NOT_FLAGS = {"adapter", "weight_budget", "tensor_split"}  # set by the workbench, not typed by a user
_TYPES = {"int": int, "int | None": int, "float | None": float, "str": str, "str | None": str}


def _applies_to(registry: Registry, option: str) -> str:
    names = [s.display_name for s in map(registry.get, registry.names()) if s.uses(option)]
    return "" if len(names) == len(registry.names()) else f" [{', '.join(names)}]"


def add_load_flags(parser: argparse.ArgumentParser, registry: Registry | None = None) -> None:
    """--profile, --loader and a flag for every LoadOptions field a user sets."""
    registry = registry or default_registry()
    g = parser.add_argument_group("load options")
    g.add_argument("--profile", help="hardware profile from presets/hardware/ (flags override it)")
    g.add_argument("--loader", choices=["auto", *registry.names()], default="auto",
                   help="backend to use (default: detected from the files)")
    for f in fields(LoadOptions):
        if f.name in _NOT_FLAGS:
            continue
        if f.name in _SPECIAL:
            flag, kwargs = _SPECIAL[f.name]
        else:
            flag, kwargs = "--" + f.name.replace("_", "-"), {"type": _TYPES[str(f.type)]}
        kwargs = dict(kwargs)
        help_text = (kwargs.pop("help", f.metadata["help"]) + _applies_to(registry, f.name)).replace("%", "%%")
        g.add_argument(flag, dest=f.name, help=help_text, **kwargs)


def load_options_from_args(args: argparse.Namespace, paths: Paths | None = None) -> LoadOptions:
    """LoadOptions from --profile (if given) with the explicit flags on top."""
    options = LoadOptions()
    if getattr(args, "profile", None):
        options = profile_store(paths).get(args.profile).options()
    given = {f.name: getattr(args, f.name) for f in fields(LoadOptions)
             if f.name not in _NOT_FLAGS and getattr(args, f.name, None) is not None}
    return replace(options, **given).validate()


def profile_store(paths: Paths | None = None):
    from .profiles import ProfileStore

    paths = paths or Paths.default()
    return ProfileStore(os.path.join(paths.presets, "hardware"), os.path.join(paths.user_data, "model_settings.json"))
