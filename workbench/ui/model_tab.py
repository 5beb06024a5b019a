"""Model tab: pick a model, choose loader and load options, see the memory plan, load/unload.

Layout and wiring only; every action is a ModelService or ProfileStore call. Names from
the browser are resolved inside models/ (or presets/hardware/) by the services.
"""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..errors import WorkbenchError
from ..model_values import ModelEntry, ModelStatus
from ..options import LoadOptions
from ..plan import MemoryPlan, plan_table
from ..profiles import ProfileStore
from ..downloads.service import DownloadService
from ..services.model_service import ModelService
from .download_panel import build_download_panel
from .load_form import build_load_form, options_from_values, values_from_options, visible_for
from .user_errors import shows_errors

TABLE_HEADERS = ["name", "format", "backend", "size (MiB)", "quantization", "parameters", "context", "note"]
PARTS = ("weights", "KV cache", "compute", "runtime", "cap")
PART_COLORS = dict(zip(PARTS, ("#4c78a8", "#f58518", "#e45756", "#72b7b2", "#9e9e9e")))
MiB = 2**20


def model_rows(entries: list[ModelEntry]) -> list[list]:
    table = []
    for e in entries:
        if e.error:
            table.append([e.name, "?", "", "", "", "", "", e.error])
        else:
            d = e.detection
            params = f"{d.parameter_count / 1e6:.0f}M" if d.parameter_count else ""
            table.append([e.name, d.format, e.backend, round(d.size_bytes / MiB, 1), d.quantization or "", params,
                          d.context_length or "", ""])
    return table


def app_rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def format_status(status: ModelStatus) -> str:
    app = f"The app itself uses {app_rss() / MiB:.0f} MiB RAM and holds no weights."
    m = status.loaded
    if m is None:
        return "**No model loaded.**" + (f" {status.error}" if status.error else "") + f"  \n{app}"
    rss = status.worker_rss_bytes or m.memory.rss_bytes
    vram = m.plan.vram_total()
    gpu = f", {vram / MiB:.0f} MiB VRAM planned" if vram else ""
    context = f"context {m.n_ctx}" + (" (auto: the largest that fits)" if m.options.n_ctx == 0 else "")
    if m.plan.parallel > 1:
        context += f", {m.plan.parallel} requests at once"
    return (f"**Loaded** `{m.name}` with **{m.backend}** on {m.device} ({m.dtype}), {context}, "
            f"{m.n_threads} threads, in {m.load_s:.1f} s.  \nRAM of the worker (pid {m.worker_pid}): "
            f"**{rss / MiB:.0f} MiB now**, planned {m.plan.ram_total() / MiB:.0f} MiB at a full context{gpu}.  \n{app}")


def plan_frame(plan: MemoryPlan) -> pd.DataFrame:
    """The chart's bars: per device its parts stacked, and beside it a bar as tall as its cap (the cap you
    set, or what is free when the plan does not fit), so a plan that does not fit looks like it."""
    rows = []
    for d in plan.devices:
        for part, value in zip(PARTS[:4], (d.weights, d.kv_cache, d.compute, d.runtime)):
            rows.append({"device": d.device, "part": part, "MiB": round(value / MiB, 1)})
        if d.cap and (d.cap_source == "cap" or not d.fits):
            rows.append({"device": f"{d.device} cap", "part": PARTS[4], "MiB": round(d.cap / MiB, 1)})
    # Gradio fixes a chart's colour legend at its first drawing and later only swaps the data,
    # so every part is named from the start (0 MiB where a plan lacks it).
    present = {row["part"] for row in rows}
    if rows:
        rows += [{"device": rows[0]["device"], "part": part, "MiB": 0.0} for part in PARTS if part not in present]
    return pd.DataFrame(rows, columns=["device", "part", "MiB"])


def plan_view(models: ModelService, name: str | None, loader: str, values) -> tuple:
    """(chart data, text, visibility of each load option) for loading `name`, or (None, why not, ...)."""
    if not name:
        return None, "Pick a model to see its memory plan.", *visible_for(None)
    try:
        path = models.resolve_name(name)
        spec = models.backend_for(path, loader)
        plan = models.plan(path, loader, options_from_values(values))
    except WorkbenchError as e:
        return None, f"**Cannot plan:** {e}", *visible_for(None)
    return plan_frame(plan), f"```\n{plan_table(plan)}\n```", *visible_for(spec)


def build_model_tab(models: ModelService, profiles: ProfileStore, defaults: LoadOptions, page: gr.Blocks,
                    default_loader: str = "auto", downloads: DownloadService | None = None) -> None:
    """The tab. Lists (models, profiles) and the status fill in on `page` load, not when the tab is built:
    the page shell is served before login, so it must hold no names from the disk."""
    with gr.Tab("Model") as tab:
        with gr.Row():
            model_name = gr.Dropdown([], value=None, allow_custom_value=True,
                                     label="Model (from models/)", scale=4, elem_id="model-name")
            loader = gr.Radio(["auto", *models.registry.names()], value=default_loader,
                              label="Loader", scale=3, info="auto picks from the file contents")
            refresh = gr.Button("Refresh list", scale=1)
        table = gr.Dataframe([], headers=TABLE_HEADERS, interactive=False, label="Models on disk")
        with gr.Row():
            profile = gr.Dropdown([], value=None, allow_custom_value=True, label="Hardware profile (presets/hardware/)",
                                  scale=3)
            apply_profile = gr.Button("Apply", scale=1)
            profile_name = gr.Textbox(label="Save current settings as", placeholder="my-laptop", scale=2)
            save_profile = gr.Button("Save profile", scale=1)
            delete_profile = gr.Button("Delete profile", scale=1)
            undo_profile = gr.Button("Undo delete", scale=1)
        with gr.Accordion("Load options", open=True):
            form = list(build_load_form(defaults).values())
        with gr.Row(elem_id="plan-row"):
            plan_chart = gr.BarPlot(None, x="device", y="MiB", color="part", color_map=PART_COLORS, color_title="",
                                    label="Memory plan (before loading)", scale=2, elem_id="plan-chart")
            plan_text = gr.Markdown("", elem_id="plan-text")
        with gr.Row():
            load = gr.Button("Load", variant="primary", elem_id="load-model")
            unload = gr.Button("Unload", elem_id="unload-model")
        status = gr.Markdown("", elem_id="model-status")
        with gr.Accordion("Add a remote server (OpenAI-compatible: vLLM, llama-server, Ollama, a workbench)",
                          open=False):
            with gr.Row():
                remote_name = gr.Textbox(label="Name", placeholder="my-server", scale=1)
                remote_url = gr.Textbox(label="Base URL", placeholder="http://192.168.1.20:8000/v1", scale=2)
                remote_model = gr.Textbox(label="Model on that server", placeholder="its /v1/models id", scale=2)
                remote_key = gr.Textbox(label="That server's key (saved in user_data/, never shown again)", type="password",
                                        scale=2)
                add_remote = gr.Button("Add remote server", scale=1)
        plan_button = gr.Button("Show plan", visible=False)  # the plan as an API endpoint
        refresh_timer = gr.Timer(5)
        seen_loaded = gr.State(None)  # the loaded model this page last showed (to follow loads made elsewhere)

    def on_plan(name, loader_choice, *values):
        return plan_view(models, name, loader_choice, values)[:2]

    def on_change(name, loader_choice, *values):
        return plan_view(models, name, loader_choice, values)  # the plan, and which options apply

    @shows_errors
    def on_load(name, loader_choice, *values, progress=gr.Progress()):
        options = options_from_values(values)
        progress(0.2, desc=f"Loading {name} (a worker process reads the weights)...")
        models.load(models.resolve_name(name), loader_choice, options)
        profiles.remember(name, loader_choice, options)
        return format_status(models.status())

    def on_pick(name):
        remembered = profiles.last_settings(name) if name else None
        if remembered is None:
            return [gr.skip()] * (len(form) + 1)
        return [remembered[0], *values_from_options(remembered[1])]

    @shows_errors
    def on_apply(profile_choice):
        p = profiles.get(profile_choice)
        warning = p.warning(models.hardware())
        if warning:
            gr.Warning(warning)
        return values_from_options(p.options())

    @shows_errors
    def on_save(new_name, *values):
        profiles.save(new_name, options_from_values(values), description="Saved from the Model tab.")
        return gr.update(choices=profiles.names(), value=new_name)

    @shows_errors
    def on_delete(profile_choice):
        profiles.delete(profile_choice)
        gr.Info(f"Deleted profile {profile_choice}; Undo delete brings it back.")
        return gr.update(choices=profiles.names(), value=None)

    @shows_errors
    def on_undo_delete():
        name = profiles.undo_delete()
        return gr.update(choices=profiles.names(), value=name)

    @shows_errors
    def on_add_remote(name, base_url, model, key):
        added = models.add_remote(name, base_url, model, key)
        gr.Info(f"Added {added}: pick it and Load, like a local model.")
        entries = models.list_models()
        return (gr.update(choices=[e.name for e in entries if e.error is None], value=added), model_rows(entries),
                "")

    def on_refresh():
        entries = models.list_models()
        return gr.update(choices=[e.name for e in entries if e.error is None]), model_rows(entries)

    def on_page_load():
        entries = models.list_models()
        names = [e.name for e in entries if e.error is None]
        loaded = models.status()
        selected = loaded.loaded.name if loaded.loaded else (names[0] if names else None)
        return (gr.update(choices=names, value=selected), model_rows(entries), gr.update(choices=profiles.names()),
                format_status(loaded))

    plan_inputs = [model_name, loader, *form]
    plan_outputs = [plan_chart, plan_text, *form]
    for component in plan_inputs:
        component.change(on_change, plan_inputs, plan_outputs, api_visibility="private", show_progress="hidden")
    model_name.change(on_pick, model_name, [loader, *form], api_visibility="private")
    load.click(on_load, plan_inputs, status, api_name="load_model")
    unload.click(lambda: (models.unload(), format_status(models.status()))[1], None, status, api_name="unload_model")
    refresh.click(on_refresh, None, [model_name, table], api_name="list_models")
    add_remote.click(on_add_remote, [remote_name, remote_url, remote_model, remote_key], [model_name, table, remote_key],
                     api_name="add_remote")
    apply_profile.click(on_apply, profile, form, api_name="apply_profile")
    save_profile.click(on_save, [profile_name, *form], profile, api_name="save_profile")
    delete_profile.click(on_delete, profile, profile, api_name="delete_profile")
    undo_profile.click(on_undo_delete, None, profile, api_name="undo_delete_profile")
    plan_button.click(on_plan, plan_inputs, [plan_chart, plan_text], api_name="plan")
    # the plan follows: model_name's change event draws it
    page.load(on_page_load, None, [model_name, table, profile, status], api_visibility="private")
    page.load(lambda: models.loaded_name(), None, seen_loaded, api_visibility="private", show_progress="hidden")
    def on_tick(seen):
        """The status, and the model list following a load made elsewhere (Training's Load in Chat, Compare)."""
        loaded = models.status()
        name = loaded.loaded.name if loaded.loaded else None
        if name is None or name == seen:
            return format_status(loaded), gr.skip(), name
        return format_status(loaded), gr.update(value=name), name

    refresh_timer.tick(on_tick, seen_loaded, [status, model_name, seen_loaded], show_progress="hidden",
                       api_visibility="private")
    with tab:  # the Get models panel, under the load controls
        build_download_panel(downloads or DownloadService(models.paths, profiles), models, page)
