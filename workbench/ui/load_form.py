"""The load-options form: one component per LoadOptions field, built from the dataclass.

Owns how each field looks on screen (widget, label, the "0 = automatic" encodings) and
turning the form's values into a `LoadOptions` and back. The hint under each component
is the field's own help (options.py); which fields show depends on the chosen backend's
spec (`visible_for`), so an option a backend cannot use is hidden.
"""

from __future__ import annotations

from dataclasses import fields

import gradio as gr

from ..errors import WorkbenchError

from ..backends.registry import BackendSpec
from ..options import DEVICES, DTYPES, KV_CACHE_TYPES, LoadOptions

# field -> (label, widget factory(value, label, info)); fields not listed are not on the form.
_WIDGETS = {
    "n_ctx": ("Context size (tokens)", lambda v, label, info: gr.Slider(0, 131072, value=v, step=256, label=label,
                                                                          info=info)),
    "n_batch": ("Batch size", lambda v, label, info: gr.Number(v, precision=0, label=label, info=info)),
    "n_threads": ("Threads", lambda v, label, info: gr.Number(v, precision=0, label=label, info="0 = " + info.split(
        "None = ")[-1])),
    "n_gpu_layers": ("GPU layers", lambda v, label, info: gr.Number(
        v, precision=0, label=label, info="-2 = auto (as many as fit), -1 = all, 0 = CPU only")),
    "cache_type": ("KV cache type", lambda v, label, info: gr.Dropdown(list(KV_CACHE_TYPES), value=v, label=label,
                                                                        info=info)),
    "flash_attn": ("Flash attention", lambda v, label, info: gr.Checkbox(v, label=label, info=info)),
    "use_mmap": ("mmap", lambda v, label, info: gr.Checkbox(v, label=label, info=info)),
    "use_mlock": ("mlock", lambda v, label, info: gr.Checkbox(v, label=label, info=info)),
    "dtype": ("dtype", lambda v, label, info: gr.Dropdown(list(DTYPES), value=v, label=label, info=info)),
    "device": ("Device", lambda v, label, info: gr.Dropdown(list(DEVICES), value=v, label=label)),
    "max_ram_gib": ("RAM cap (GiB)", lambda v, label, info: gr.Number(v, label=label, info="0 = none; " + info)),
    "max_vram_gib": ("VRAM cap (GiB)", lambda v, label, info: gr.Number(v, label=label, info="0 = none")),
    "parallel": ("Parallel requests", lambda v, label, info: gr.Number(
        v, precision=0, minimum=0, label=label, info="at once, each with its own context; 0 = as many as fit (up to 4)")),
    "draft_tokens": ("Draft tokens", lambda v, label, info: gr.Number(
        v, precision=0, minimum=0, label=label, info="speculative decoding by prompt lookup; 0 = off")),
    "rpc_servers": ("RPC servers", lambda v, label, info: gr.Textbox(
        v, label=label, placeholder="127.0.0.1:50052,127.0.0.1:50053", info=info)),
}
ROWS = (("n_ctx", "n_batch", "n_threads", "parallel", "draft_tokens"), ("n_gpu_layers", "cache_type", "flash_attn", "use_mmap", "use_mlock"),
        ("dtype", "device", "max_ram_gib", "max_vram_gib"), ("rpc_servers",))
# The order the load_model / plan / save_profile API endpoints take the values in (kept stable for clients).
FORM_FIELDS = ["n_ctx", "n_gpu_layers", "n_batch", "n_threads", "cache_type", "flash_attn", "use_mmap", "use_mlock",
               "dtype", "device", "max_ram_gib", "max_vram_gib", "parallel", "draft_tokens", "rpc_servers"]
_HELP = {f.name: f.metadata["help"] for f in fields(LoadOptions)}


def _shown(name: str, value):
    """A field's value as the form shows it (None as its "automatic" number)."""
    if name == "n_gpu_layers":
        return -2 if value is None else value
    if name in ("n_threads", "max_ram_gib", "max_vram_gib"):
        return value or 0
    return value


def _parsed(name: str, value):
    """A form value as the field holds it ("automatic" numbers back to None)."""
    if name == "n_gpu_layers":
        return None if value is None or value < -1 else int(value)
    if name == "n_threads":
        return int(value) if value else None
    if name in ("max_ram_gib", "max_vram_gib"):
        if value is not None and value < 0:  # the form's own words: 0 means no cap
            raise WorkbenchError(f"The {_WIDGETS[name][0]} must be 0 (no cap) or a positive number of GiB.")
        return float(value) if value else None
    if name in ("n_ctx", "n_batch", "parallel", "draft_tokens"):
        return int(value or 0)
    if name in ("flash_attn", "use_mmap", "use_mlock"):
        return bool(value)
    if name == "rpc_servers":
        return (value or "").strip()
    return value


def build_load_form(defaults: LoadOptions) -> dict[str, gr.components.Component]:
    """The components, laid out in rows, keyed by LoadOptions field (in FORM_FIELDS order)."""
    made = {}
    for row in ROWS:
        with gr.Row():
            for name in row:
                label, make = _WIDGETS[name]
                made[name] = make(_shown(name, getattr(defaults, name)), label, _HELP[name])
    return {name: made[name] for name in FORM_FIELDS}


def options_from_values(values) -> LoadOptions:
    """LoadOptions from the form's values (in FORM_FIELDS order); a bad value gets its one-sentence error."""
    return LoadOptions(**{name: _parsed(name, v) for name, v in zip(FORM_FIELDS, values)}).validate()


def values_from_options(options: LoadOptions) -> list:
    """The form's values (in FORM_FIELDS order) for `options`."""
    return [_shown(name, getattr(options, name)) for name in FORM_FIELDS]


def visible_for(spec: BackendSpec | None) -> list:
    """Updates that show only the fields `spec` uses (every field when no backend is known yet)."""
    return [gr.update(visible=spec is None or spec.uses(name)) for name in FORM_FIELDS]
