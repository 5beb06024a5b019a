"""Model tab: pick a model, choose loader and load options, see the memory plan, load/unload.

Layout and wiring only; every action is a ModelService or ProfileStore call. Names from
the browser are resolved inside models/ (or presets/hardware/) by the services.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..errors import WorkbenchError
from ..options import DEVICES, DTYPES, KV_CACHE_TYPES, LoadOptions
from ..plan import plan_table
from ..profiles import ProfileStore
from ..services.model_service import ModelService

LOADERS = ["auto", "llama.cpp", "transformers", "gptq"]
TABLE_HEADERS = ["name", "format", "backend", "size (MiB)", "quantization", "parameters", "context", "note"]
PARTS = ("weights", "KV cache", "compute", "runtime", "free under cap")
PART_COLORS = dict(zip(PARTS, ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#d3d3d3")))
MiB = 2**20


def model_rows(rows: list[dict]) -> list[list]:
    table = []
    for r in rows:
        if "error" in r:
            table.append([r["name"], "?", "", "", "", "", "", r["error"]])
        else:
            params = f"{r['parameter_count'] / 1e6:.0f}M" if r.get("parameter_count") else ""
            table.append([r["name"], r["format"], r["backend"], round(r["size_bytes"] / MiB, 1),
                          r.get("quantization") or "", params, r.get("context_length") or "", ""])
    return table


def app_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def format_status(status: dict) -> str:
    app = f"The app itself uses {app_rss() / MiB:.0f} MiB RAM and holds no weights."
    if not status.get("loaded"):
        return "**No model loaded.**" + (f" {status['error']}" if status.get("error") else "") + f"  \n{app}"
    rss = status.get("worker_rss_bytes") or status["memory"]["rss_bytes"]
    planned = sum(d["total"] for d in status["plan"]["devices"] if d["device"] == "cpu")
    vram = sum(d["total"] for d in status["plan"]["devices"] if d["device"].startswith("cuda"))
    gpu = f", {vram / MiB:.0f} MiB VRAM planned" if vram else ""
    return (f"**Loaded** `{status['name']}` with **{status['backend']}** on {status['device']} "
            f"({status['dtype']}), context {status['n_ctx']}, {status['n_threads']} threads, "
            f"in {status['load_s']:.1f} s.  \nRAM of the worker (pid {status['worker_pid']}): "
            f"**{rss / MiB:.0f} MiB now**, planned {planned / MiB:.0f} MiB at a full context{gpu}.  \n{app}")


def plan_frame(plan: dict) -> pd.DataFrame:
    rows = []
    for d in plan["devices"]:
        for part, key in zip(PARTS[:4], ("weights", "kv_cache", "compute", "runtime")):
            rows.append({"device": d["device"], "part": part, "MiB": round(d[key] / MiB, 1)})
        if d["cap"] and d["cap_source"] == "cap" and d["model_bytes"] < d["cap"]:
            rows.append({"device": d["device"], "part": PARTS[4], "MiB": round((d["cap"] - d["model_bytes"]) / MiB, 1)})
    # Gradio fixes a chart's colour legend at its first drawing and later only swaps the data,
    # so every part is named from the start (0 MiB where a plan lacks it).
    present = {row["part"] for row in rows}
    if rows:
        rows += [{"device": rows[0]["device"], "part": part, "MiB": 0.0} for part in PARTS if part not in present]
    return pd.DataFrame(rows, columns=["device", "part", "MiB"])


def plan_view(models: ModelService, name: str | None, loader: str, options: LoadOptions):
    """(chart data, text) of the memory plan for loading `name`, or (None, why not)."""
    if not name:
        return None, "Pick a model to see its memory plan."
    try:
        plan = models.plan(models.resolve_name(name), loader, options).to_dict()
    except WorkbenchError as e:
        return None, f"**Cannot plan:** {e}"
    return plan_frame(plan), f"```\n{plan_table(plan)}\n```"


def options_from_form(n_ctx, n_gpu_layers, n_batch, threads, cache_type, flash_attn, use_mmap, use_mlock,
                      dtype, device, max_ram, max_vram) -> LoadOptions:
    """LoadOptions from the form; 0 or empty means automatic / no cap, -2 GPU layers means auto."""
    return LoadOptions(
        n_ctx=int(n_ctx), n_gpu_layers=None if n_gpu_layers is None or n_gpu_layers < -1 else int(n_gpu_layers),
        n_batch=int(n_batch), n_threads=int(threads) if threads else None, cache_type=cache_type,
        flash_attn=bool(flash_attn), use_mmap=bool(use_mmap), use_mlock=bool(use_mlock), dtype=dtype, device=device,
        max_ram_gib=float(max_ram) if max_ram else None, max_vram_gib=float(max_vram) if max_vram else None,
    ).validate()


def form_from_options(o: LoadOptions) -> list:
    return [o.n_ctx, -2 if o.n_gpu_layers is None else o.n_gpu_layers, o.n_batch, o.n_threads or 0, o.cache_type,
            o.flash_attn, o.use_mmap, o.use_mlock, o.dtype, o.device, o.max_ram_gib or 0, o.max_vram_gib or 0]


def build_model_tab(models: ModelService, profiles: ProfileStore, defaults: LoadOptions, page: gr.Blocks,
                    default_loader: str = "auto") -> None:
    """The tab. Lists (models, profiles) and the status fill in on `page` load, not when the tab is built:
    the page shell is served before login, so it must hold no names from the disk."""
    with gr.Tab("Model"):
        with gr.Row():
            model_name = gr.Dropdown([], value=None, allow_custom_value=True,
                                     label="Model (from models/)", scale=4, elem_id="model-name")
            loader = gr.Radio(LOADERS, value=default_loader, label="Loader", scale=3,
                              info="auto picks from the file contents")
            refresh = gr.Button("Refresh list", scale=1)
        table = gr.Dataframe([], headers=TABLE_HEADERS, interactive=False, label="Models on disk")
        with gr.Row():
            profile = gr.Dropdown([], value=None, allow_custom_value=True, label="Hardware profile (presets/hardware/)", scale=3)
            apply_profile = gr.Button("Apply", scale=1)
            profile_name = gr.Textbox(label="Save current settings as", placeholder="my-laptop", scale=2)
            save_profile = gr.Button("Save profile", scale=1)
            delete_profile = gr.Button("Delete profile", scale=1)
        with gr.Accordion("Load options", open=True):
            with gr.Row():
                n_ctx = gr.Slider(0, 131072, value=defaults.n_ctx, step=256, label="Context size (tokens)",
                                  info="prompt + reply; more needs more memory for the KV cache; 0 = largest that fits")
                n_batch = gr.Number(defaults.n_batch, precision=0, label="Batch size",
                                    info="tokens per prompt-processing step")
                threads = gr.Number(defaults.n_threads or 0, precision=0, label="Threads",
                                    info="0 = one per physical core (fastest)")
            with gr.Row():
                n_gpu_layers = gr.Number(-2 if defaults.n_gpu_layers is None else defaults.n_gpu_layers, precision=0,
                                         label="GPU layers (llama.cpp)",
                                         info="-2 = auto (as many as fit), -1 = all, 0 = CPU only")
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
                                    info="0 = none; Transformers/GPTQ layers beyond the cap go to disk")
                max_vram = gr.Number(defaults.max_vram_gib or 0, label="VRAM cap (GiB)", info="0 = none")
        with gr.Row():
            plan_chart = gr.BarPlot(None, x="device", y="MiB", color="part", color_map=PART_COLORS, color_title="",
                                    label="Memory plan (before loading)", scale=2,
                                    elem_id="plan-chart")
            plan_text = gr.Markdown("", elem_id="plan-text")
        with gr.Row():
            load = gr.Button("Load", variant="primary", elem_id="load-model")
            unload = gr.Button("Unload", elem_id="unload-model")
        status = gr.Markdown("", elem_id="model-status")
        plan_button = gr.Button("Show plan", visible=False)  # the plan as an API endpoint
        refresh_timer = gr.Timer(5)

    form = [n_ctx, n_gpu_layers, n_batch, threads, cache_type, flash_attn, use_mmap, use_mlock, dtype, device,
            max_ram, max_vram]

    def on_plan(name, loader_choice, *values):
        try:
            options = options_from_form(*values)
        except WorkbenchError as e:
            return None, f"**Cannot plan:** {e}"
        return plan_view(models, name, loader_choice, options)

    def on_load(name, loader_choice, *values, progress=gr.Progress()):
        try:
            options = options_from_form(*values)
            progress(0.2, desc=f"Loading {name} (a worker process reads the weights)...")
            models.load(models.resolve_name(name), loader_choice, options)
            profiles.remember(name, loader_choice, options)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return format_status(models.status())

    def on_pick(name):
        remembered = profiles.last_settings(name) if name else None
        if remembered is None:
            return [gr.skip()] * (len(form) + 1)
        return [remembered[0], *form_from_options(remembered[1])]

    def on_apply(profile_choice):
        try:
            p = profiles.get(profile_choice)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        warning = p.warning(models.hardware())
        if warning:
            gr.Warning(warning)
        return form_from_options(p.options())

    def on_save(new_name, *values):
        try:
            profiles.save(new_name, options_from_form(*values), description="Saved from the Model tab.")
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return gr.update(choices=profiles.names(), value=new_name)

    def on_delete(profile_choice):
        try:
            profiles.delete(profile_choice)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return gr.update(choices=profiles.names(), value=None)

    def on_refresh():
        rows = models.list_models()
        return gr.update(choices=[r["name"] for r in rows if "error" not in r]), model_rows(rows)

    plan_inputs = [model_name, loader, *form]
    for component in plan_inputs:
        component.change(on_plan, plan_inputs, [plan_chart, plan_text], api_visibility="private",
                         show_progress="hidden")
    model_name.change(on_pick, model_name, [loader, *form], api_visibility="private")
    load.click(on_load, plan_inputs, status, api_name="load_model")
    def on_unload():
        models.unload()
        return format_status(models.status())

    unload.click(on_unload, None, status, api_name="unload_model")
    refresh.click(on_refresh, None, [model_name, table], api_name="list_models")
    apply_profile.click(on_apply, profile, form, api_name="apply_profile")
    save_profile.click(on_save, [profile_name, *form], profile, api_name="save_profile")
    delete_profile.click(on_delete, profile, profile, api_name="delete_profile")
    plan_button.click(on_plan, plan_inputs, [plan_chart, plan_text], api_name="plan")
    def on_page_load():
        rows = models.list_models()
        names = [r["name"] for r in rows if "error" not in r]
        loaded = models.status()
        selected = loaded.get("name") or (names[0] if names else None)
        return (gr.update(choices=names, value=selected), model_rows(rows), gr.update(choices=profiles.names()),
                format_status(loaded))

    # the plan follows: model_name's change event draws it
    page.load(on_page_load, None, [model_name, table, profile, status], api_visibility="private")
    refresh_timer.tick(lambda: format_status(models.status()), None, status, show_progress="hidden",
                       api_visibility="private")
