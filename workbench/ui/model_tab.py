"""Model tab: pick a model from models/, choose loader and load options, load/unload.

Layout and wiring only; every action is a ModelService call. Names from the browser
are resolved inside models/ by the service, never used as paths.
"""

from __future__ import annotations

import gradio as gr

from ..errors import WorkbenchError
from ..options import DEVICES, DTYPES, KV_CACHE_TYPES, LoadOptions
from ..services.model_service import ModelService

LOADERS = ["auto", "llama.cpp", "transformers", "gptq"]
TABLE_HEADERS = ["name", "format", "backend", "size (MiB)", "quantization", "parameters", "context", "note"]


def model_rows(rows: list[dict]) -> list[list]:
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["name"], "?", "", "", "", "", "", r["error"]])
        else:
            params = f"{r['parameter_count'] / 1e6:.0f}M" if r.get("parameter_count") else ""
            table.append([r["name"], r["format"], r["backend"], round(r["size_bytes"] / 2**20, 1),
                          r.get("quantization") or "", params, r.get("context_length") or "", ""])
    return table


def format_status(status: dict) -> str:
    if not status.get("loaded"):
        return "**No model loaded.**" + (f" {status['error']}" if status.get("error") else "")
    rss = status.get("worker_rss_bytes") or status["memory"]["rss_bytes"]
    details = ", ".join(f"{k}={v}" for k, v in (status.get("details") or {}).items() if v is not None and k != "device_map")
    return (f"**Loaded** `{status['name']}` with **{status['backend']}** on {status['device']} "
            f"({status['dtype']}), context {status['n_ctx']}, {status['n_threads']} threads. "
            f"Load took {status['load_s']:.1f} s; the worker (pid {status['worker_pid']}) uses "
            f"{rss / 2**20:.0f} MiB RAM. {details}")


def options_from_form(n_ctx, n_gpu_layers, n_batch, threads, cache_type, flash_attn, use_mmap, use_mlock,
                      dtype, device, max_ram, max_vram) -> LoadOptions:
    """LoadOptions from the form; 0 or empty means automatic / no cap."""
    return LoadOptions(
        n_ctx=int(n_ctx), n_gpu_layers=None if n_gpu_layers is None or n_gpu_layers < -1 else int(n_gpu_layers),
        n_batch=int(n_batch), n_threads=int(threads) if threads else None, cache_type=cache_type,
        flash_attn=bool(flash_attn), use_mmap=bool(use_mmap), use_mlock=bool(use_mlock), dtype=dtype, device=device,
        max_ram_gib=float(max_ram) if max_ram else None, max_vram_gib=float(max_vram) if max_vram else None,
    ).validate()


def build_model_tab(models: ModelService, defaults: LoadOptions, default_loader: str = "auto") -> None:
    rows = models.list_models()
    names = [r["name"] for r in rows if "error" not in r]
    loaded = models.status()
    with gr.Tab("Model"):
        with gr.Row():
            model_name = gr.Dropdown(names, value=loaded.get("name") or (names[0] if names else None),
                                     label="Model (from models/)", scale=4)
            loader = gr.Radio(LOADERS, value=default_loader, label="Loader", scale=3,
                              info="auto picks from the file contents")
            refresh = gr.Button("Refresh list", scale=1)
        table = gr.Dataframe(model_rows(rows), headers=TABLE_HEADERS, interactive=False, label="Models on disk")
        with gr.Accordion("Load options", open=True):
            with gr.Row():
                n_ctx = gr.Slider(256, 131072, value=defaults.n_ctx, step=256, label="Context size (tokens)",
                                  info="prompt + reply; more context needs more memory for the KV cache")
                n_batch = gr.Number(defaults.n_batch, precision=0, label="Batch size",
                                    info="llama.cpp: tokens per prompt-processing step")
                threads = gr.Number(defaults.n_threads or 0, precision=0, label="Threads",
                                    info="0 = one per physical core (fastest)")
            with gr.Row():
                n_gpu_layers = gr.Number(-2 if defaults.n_gpu_layers is None else defaults.n_gpu_layers, precision=0,
                                         label="GPU layers (llama.cpp)",
                                         info="-2 = auto (all if a GPU is present), -1 = all, 0 = CPU only")
                cache_type = gr.Dropdown(list(KV_CACHE_TYPES), value=defaults.cache_type, label="KV cache type",
                                         info="llama.cpp: q8_0/q4_0 halve/quarter the cache (need flash attention)")
                flash_attn = gr.Checkbox(defaults.flash_attn, label="Flash attention (llama.cpp)")
                use_mmap = gr.Checkbox(defaults.use_mmap, label="mmap (llama.cpp)")
                use_mlock = gr.Checkbox(defaults.use_mlock, label="mlock (llama.cpp)")
            with gr.Row():
                dtype = gr.Dropdown(list(DTYPES), value=defaults.dtype, label="dtype (Transformers)",
                                    info="auto = bfloat16 on CPU, float16/bfloat16 on GPU")
                device = gr.Dropdown(list(DEVICES), value=defaults.device, label="Device (Transformers/GPTQ)")
                max_ram = gr.Number(defaults.max_ram_gib or 0, label="RAM cap (GiB)",
                                    info="0 = none; layers beyond the cap are offloaded to disk")
                max_vram = gr.Number(defaults.max_vram_gib or 0, label="VRAM cap (GiB)", info="0 = none")
        with gr.Row():
            load = gr.Button("Load", variant="primary")
            unload = gr.Button("Unload")
        status = gr.Markdown(format_status(loaded))

    form = [n_ctx, n_gpu_layers, n_batch, threads, cache_type, flash_attn, use_mmap, use_mlock, dtype, device,
            max_ram, max_vram]

    def on_load(name, loader_choice, *values, progress=gr.Progress()):
        try:
            options = options_from_form(*values)
            progress(0.2, desc=f"Loading {name} (a worker process reads the weights)...")
            models.load(models.resolve_name(name), loader_choice, options)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return format_status(models.status())

    def on_unload():
        models.unload()
        return format_status(models.status())

    def on_refresh():
        rows = models.list_models()
        return gr.update(choices=[r["name"] for r in rows if "error" not in r]), model_rows(rows)

    load.click(on_load, [model_name, loader, *form], status, api_name="load_model")
    unload.click(on_unload, None, status, api_name="unload_model")
    refresh.click(on_refresh, None, [model_name, table], api_name="list_models")
    gr.Timer(5).tick(lambda: format_status(models.status()), None, status, show_progress="hidden",
                     api_visibility="private")
