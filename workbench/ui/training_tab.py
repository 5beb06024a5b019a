"""Training tab: dataset preview, run options with a memory estimate, live loss plot, and the result.

Layout and wiring only. Every action is a TrainingService or ModelService call; names
from the browser (models, datasets, runs, export targets) are resolved inside their
folders by the services. A timer re-reads the selected run's files, so a page reload or
an app restart shows a running run again.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from functools import partial

import gradio as gr
import pandas as pd

from ..errors import WorkbenchError
from ..jobs import JobService
from ..options import LoadOptions
from ..services.model_service import ModelService
from ..services.training_service import TrainingService
from ..training.config import SCHEDULERS, TrainConfig
from .user_errors import shows_errors

D = TrainConfig()


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f", about {minutes} min {secs:02d} s left" if minutes else f", about {secs} s left"


def status_markdown(status, root: str = ".") -> str:
    if status is None:
        return "No run selected."
    head = f"**{status.name}** ({status.method}): **{status.status}**"
    if status.max_steps:
        head += f", step {status.step} of {status.max_steps}{fmt_eta(status.eta_s)}"
        if status.status == "running" and status.eta_s is None:
            head += ", starting (loading the model and the last checkpoint)"
    lines = [head]
    if status.loss is not None:
        lines.append(f"training loss {status.loss:.4f}" + (
            f", validation loss {status.eval_loss:.4f}" if status.eval_loss is not None else ""))
    if status.perplexity_before is not None:
        after = f" → **{status.perplexity_after:.3f}**" if status.perplexity_after is not None else ""
        lines.append(f"validation perplexity {status.perplexity_before:.3f}{after}")
    if status.error:
        lines.append(f"**Failed:** {status.error}")
    if status.status == "interrupted":
        lines.append("The run's process is gone (killed or the machine restarted); **Resume** goes on from its last checkpoint.")
    if status.output:
        lines.append(f"Result: `{os.path.relpath(status.output, root)}`")
    return "  \n".join(lines)


LOSS_SERIES = {"training": "#4c78a8", "validation": "#f58518"}


def loss_frame(rows: list[dict]) -> pd.DataFrame | None:
    """The loss plot's points, one row per logged step and series; None (a blank plot) before any.

    Gradio lays a plot out and fixes its colour legend when it first draws data, and later only
    swaps the data. So the plot is blank (None) until there are points, to be drawn afresh
    then, and every series has a row with no loss (not drawn) from the start: otherwise the
    validation line would have no colour and the legend no entry. Those rows come first, so
    the legend lists the series in LOSS_SERIES order whichever was logged first (the
    validation pass before training logs before any training step).
    """
    latest = {}  # (series, step) -> loss: a resumed run logs again the steps after its checkpoint; the newest counts
    for r in rows:
        for key, series in (("loss", "training"), ("eval_loss", "validation")):
            if key in r:
                latest[series, r["step"]] = r[key]
    if not latest:
        return None
    points = [{"step": float("nan"), "loss": float("nan"), "series": series} for series in LOSS_SERIES]
    points += [{"step": step, "loss": loss, "series": series} for (series, step), loss in latest.items()]
    frame = pd.DataFrame(points, columns=["step", "loss", "series"])
    return frame.astype({"step": "float64", "loss": "float64", "series": "str"})


def preview_markdown(info: dict) -> str:
    lines = [f"**{info['format']}** data ({info['encoding']}): {info['examples']} examples "
             f"({info['train_examples']} for training, {info['validation_examples']} for validation), "
             f"{info['tokens']:,} tokens, {info['trained_tokens']:,} of them trained on."]
    if info["truncated"]:
        lines.append(f"{info['truncated']} examples were cut at the cutoff length.")
    if info["dropped"]:
        lines.append(f"{info['dropped']} examples had no assistant token left within the cutoff and were dropped.")
    if info["problem_count"]:
        lines.append(f"**{info['problem_count']} rows skipped:**  \n" + "  \n".join(info["problems"][:20]))
    return "  \n".join(lines)


# The form's fields, in the order the start_training / preview_dataset API takes them.
FORM_FIELDS = ("name", "method", "base_model", "dataset", "validation_file", "validation_fraction", "lora_rank",
               "lora_alpha", "lora_dropout", "target_modules", "tokenizer", "n_layer", "n_head", "n_embd",
               "output_model", "learning_rate", "scheduler", "warmup_steps", "epochs", "max_steps", "batch_size",
               "grad_accum", "cutoff_len", "overlap", "eval_every", "save_every", "early_stopping_patience", "seed",
               "processes")
_TYPES = {f.name: f.type for f in fields(TrainConfig)}


def config_from_values(values) -> TrainConfig:
    """A TrainConfig from the form's values (in FORM_FIELDS order); whole-number fields must be whole."""
    data = {}
    for name, value in zip(FORM_FIELDS, values):
        kind = _TYPES[name]
        if kind == "int":
            if value is None or float(value) != int(value):
                raise WorkbenchError(f"{name.replace('_', ' ').capitalize()} must be a whole number.")
            value = int(value)
        elif kind == "float":
            value = float(value or 0)
        else:
            value = (value or "").strip() if isinstance(value, str) or value is None else value
        data[name] = value
    data["tokenizer"] = data["tokenizer"] or "byte"
    return TrainConfig.from_dict(data, "the Training tab")


def restore_form(saved) -> list:
    """The form's values as this browser last had them (each field skipped when it has none)."""
    saved = saved if isinstance(saved, dict) else {}
    return [saved[name] if name in saved and saved[name] is not None else gr.skip() for name in FORM_FIELDS]


def _number(name, label, info=None, whole=True):
    return gr.Number(getattr(D, name), precision=0 if whole else None, label=label, info=info)


def _form_layout() -> dict:
    """The run form's components keyed by TrainConfig field (plus the upload and Make-a-copy button)."""
    f = {}
    with gr.Row():
        f["name"] = gr.Textbox(label="Run name", value="my-run", elem_id="run-name")
        f["method"] = gr.Radio(["lora", "scratch"], value="lora", label="Method",
                               info="LoRA adapter on a model, or a new small GPT from scratch")
    with gr.Row():
        f["base_model"] = gr.Dropdown([], value=None, allow_custom_value=True, label="Base model (Transformers form)",
                                      elem_id="base-model", scale=3)
        f["make_copy"] = gr.Button("Make a Transformers copy", scale=1)
    with gr.Row():
        f["dataset"] = gr.Dropdown([], value=None, allow_custom_value=True, label="Dataset (datasets/)",
                                   elem_id="dataset", scale=3)
        f["validation_file"] = gr.Dropdown([""], value="", allow_custom_value=True, label="Validation file",
                                           info="empty = hold out a fraction", scale=2)
        f["validation_fraction"] = gr.Number(D.validation_fraction, label="Validation fraction", scale=1)
    f["upload"] = gr.File(label="Upload a dataset (.txt, .json, .jsonl)", file_types=[".txt", ".md", ".json", ".jsonl"],
                          elem_id="dataset-upload")
    with gr.Accordion("LoRA", open=False), gr.Row():
        f["lora_rank"], f["lora_alpha"] = _number("lora_rank", "Rank"), _number("lora_alpha", "Alpha")
        f["lora_dropout"] = _number("lora_dropout", "Dropout", whole=False)
        f["target_modules"] = gr.Textbox(", ".join(D.target_modules), label="Target modules",
                                         info="comma separated, or all-linear")
    with gr.Accordion("From scratch", open=False), gr.Row():
        f["tokenizer"] = gr.Dropdown(["byte"], value="byte", allow_custom_value=True, label="Tokenizer",
                                     info="byte-level, or reuse a model's")
        f["n_layer"], f["n_head"], f["n_embd"] = (_number("n_layer", "Layers"), _number("n_head", "Heads"),
                                                  _number("n_embd", "Width"))
        f["output_model"] = gr.Textbox("", label="Output model name (models/)", info="empty = run name")
    with gr.Accordion("Optimisation", open=True):
        with gr.Row():
            f["learning_rate"] = _number("learning_rate", "Learning rate", whole=False)
            f["scheduler"] = gr.Dropdown(list(SCHEDULERS), value=D.scheduler, label="Scheduler")
            f["warmup_steps"] = _number("warmup_steps", "Warmup steps")
            f["epochs"] = _number("epochs", "Epochs", whole=False)
            f["max_steps"] = _number("max_steps", "Max steps", "0 = use epochs")
        with gr.Row():
            f["batch_size"], f["grad_accum"] = _number("batch_size", "Batch size"), _number("grad_accum",
                                                                                          "Gradient accumulation")
            f["cutoff_len"] = _number("cutoff_len", "Cutoff length (tokens)")
            f["overlap"] = _number("overlap", "Overlap (raw text)")
        with gr.Row():
            f["eval_every"] = _number("eval_every", "Evaluate every N steps", "0 = each epoch")
            f["save_every"] = _number("save_every", "Save every N steps")
            f["early_stopping_patience"] = _number("early_stopping_patience", "Early stopping patience", "0 = off")
            f["seed"] = _number("seed", "Seed")
            f["processes"] = _number("processes", "Processes", "data parallel; same global batch")
    return f


def _result_layout() -> dict:
    """The right column: runs, status, loss plot, log, and what to do with a result."""
    r = {}
    with gr.Row():
        r["run_list"] = gr.Dropdown([], value=None, allow_custom_value=True, label="Runs (user_data/runs/)",
                                    elem_id="run-list", scale=3)
        r["refresh_runs"] = gr.Button("Refresh", scale=1)
    r["run_status"] = gr.Markdown(status_markdown(None), elem_id="run-status")
    r["loss_plot"] = gr.LinePlot(None, x="step", y="loss", color="series", color_map=LOSS_SERIES, color_title="",
                                 label="Loss", elem_id="loss-plot")
    with gr.Row():
        r["cancel"] = gr.Button("Cancel", variant="stop", elem_id="cancel-run")
        r["resume"] = gr.Button("Resume", elem_id="resume-run")
        r["delete"] = gr.Button("Delete run")
        r["undo_delete"] = gr.Button("Undo delete")
    r["log_tail"] = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="run-log")
    with gr.Accordion("Use the result", open=True):
        r["load_result"] = gr.Button("Load in Chat", elem_id="load-result")
        with gr.Row():
            r["export_kind"] = gr.Radio(["transformers", "gptq", "gguf"], value="transformers", label="Export as",
                                        info="LoRA runs are merged into their base model")
            r["export_name"] = gr.Textbox(label="Output name in models/", placeholder="my-model-merged")
            r["export_button"] = gr.Button("Export")
        r["result_text"] = gr.Markdown("")
    with gr.Accordion("Perplexity of the loaded model", open=False):
        with gr.Row():
            r["ppl_text"] = gr.Dropdown([], value=None, allow_custom_value=True, label="Text file (datasets/)")
            r["ppl_window"] = gr.Number(0, precision=0, label="Window (tokens)", info="0 = min(context, 512)")
            r["ppl_button"] = gr.Button("Measure")
        r["ppl_result"] = gr.Markdown("")
    return r


SCROLL_LOG_JS = "() => { const box = document.querySelector('#run-log textarea'); if (box) box.scrollTop = box.scrollHeight; }"


def run_view_of(training: TrainingService, name: str | None) -> tuple:
    """(status, loss plot, log tail) of run `name`."""
    if not name:
        return status_markdown(None), loss_frame([]), ""
    try:
        return (status_markdown(training.status(name), training.paths.root), loss_frame(training.metrics(name)),
                training.log_tail(name, 12))
    except WorkbenchError as e:
        return f"**{e}**", loss_frame([]), ""


def runs_update_of(training: TrainingService, value: str | None = None):
    """The run list, keeping `value` selected when it still exists; skipped run folders show as warnings."""
    names, skipped = training.listing()
    for sentence in skipped:
        gr.Warning(sentence)
    return gr.update(choices=names, value=value if value in names else (names[0] if names else None))


def datasets_update_of(training: TrainingService, value: str | None = None) -> tuple:
    """The three dataset lists (dataset, validation file, perplexity text), `value` selected in the first."""
    choices = training.datasets()
    return (gr.update(choices=choices, value=value) if value else gr.update(choices=choices),
            gr.update(choices=[""] + choices), gr.update(choices=choices))


def training_form_store() -> gr.BrowserState:
    """The Training form as last typed, kept in this browser (localStorage) so a reload does not lose it.

    Made before the tabs, not in one: a component between tabs takes a tab's place in Gradio's tab bar
    (selecting Training showed Compare's button as a second "Training"), and one inside the Training
    tab is not there when the page loads (the tab renders when first opened), so nothing was restored.
    """
    return gr.BrowserState(None, storage_key="workbench-training-form")


def build_training_tab(training: TrainingService, models: ModelService, jobs: JobService, page: gr.Blocks,
                       load_defaults: LoadOptions, saved_form: gr.BrowserState) -> None:
    """The tab. Its lists (models, datasets, runs) fill in on `page` load: that also shows runs started
    since the app was built, and keeps names off the page shell, which is served before login."""
    with gr.Tab("Training") as tab:
        with gr.Row():
            with gr.Column(scale=3):
                f = _form_layout()
                with gr.Row():
                    preview_button = gr.Button("Preview dataset")
                    estimate_button = gr.Button("Memory estimate")
                    start = gr.Button("Start training", variant="primary", elem_id="start-training")
                estimate_text = gr.Markdown("", elem_id="train-estimate")
                preview_text = gr.Markdown("")
                preview_sample = gr.Code(label="One example as the model sees it", interactive=False, visible=False)
            with gr.Column(scale=3):
                r = _result_layout()
        timer = gr.Timer(2)
    form = [f[name] for name in FORM_FIELDS]
    view = [r["run_status"], r["loss_plot"], r["log_tail"]]
    dataset_lists = [f["dataset"], f["validation_file"], r["ppl_text"]]

    run_view, runs_update, datasets_update = (partial(run_view_of, training), partial(runs_update_of, training),
                                              partial(datasets_update_of, training))

    @shows_errors
    def on_preview(*values):
        info = training.preview(config_from_values(values))
        return preview_markdown(info), gr.update(value=info["sample"], visible=True)

    def on_estimate(*values):
        try:
            return "**Memory estimate:** " + training.check_memory(config_from_values(values))
        except WorkbenchError as e:
            return f"**Cannot estimate:** {e}"

    @shows_errors
    def on_start(*values):
        config = config_from_values(values)
        summary = training.check_memory(config)
        training.start(config)
        return runs_update(config.name), f"**Memory estimate:** {summary}", *run_view(config.name)

    @shows_errors
    def on_cancel(name):
        training.cancel(name)
        gr.Info("Cancelling: the run saves a checkpoint after its current step, then stops.")
        return run_view(name)

    @shows_errors
    def on_delete(name):
        training.delete(name)
        gr.Info(f"Deleted run {name}; Undo delete brings it back.")
        update = runs_update()
        return update, *run_view(update["value"])

    @shows_errors
    def on_undo_delete():
        name = training.undo_delete()
        return runs_update(name), *run_view(name)

    @shows_errors
    def on_upload(file):
        if file is None:
            return gr.skip(), gr.skip(), gr.skip()
        name = training.save_upload(file, os.path.basename(file))
        gr.Info(f"Saved as datasets/{name}.")
        return datasets_update(name)

    @shows_errors
    def on_make_copy(name, progress=gr.Progress()):
        spec = models.transformers_copy_job(name)
        result = jobs.run(spec, lambda message: progress(None, desc=message[:120]),
                          on_fraction=lambda done, message: progress(done, desc=message[:120]))
        names, made = models.model_names(), os.path.basename(result.output)
        gr.Info(f"Made models/{made}.")
        return gr.update(choices=names, value=made), gr.update(choices=["byte"] + names)

    @shows_errors
    def on_load_result(name, progress=gr.Progress()):
        path, loader, adapter = training.result_to_load(name)
        progress(0.3, desc="Loading the result in a worker...")
        loaded = models.load(path, loader, replace(load_defaults, adapter=adapter))
        with_adapter = f" with the adapter of **{name}**" if adapter else ""
        return f"Loaded `{loaded.name}`{with_adapter}: chat with it in the Chat tab."

    @shows_errors
    def on_export(name, kind, out_name, progress=gr.Progress()):
        spec = training.export_job(name, kind, out_name)
        result = jobs.run(spec, lambda message: progress(None, desc=message[:120]),
                          on_fraction=lambda done, message: progress(done, desc=message[:120]))
        return f"Exported to `models/{os.path.basename(result.output)}`; it is in the Model tab's list."

    @shows_errors
    def on_perplexity(text_name, window, progress=gr.Progress()):
        text = training.dataset_text(text_name)
        result = models.perplexity(text, int(window or 0) or None,
                                   lambda done, total: progress(done / total, desc=f"window {done} of {total}"))
        return (f"Perplexity of **{result['model']}** ({result['backend']}): **{result['perplexity']:.4f}** over "
                f"{result['tokens']:,} tokens in {result['windows']} windows of {result['window']}.")

    def on_page_load():
        names = models.model_names()
        runs = runs_update()
        return (runs, *datasets_update(), gr.update(choices=names), gr.update(choices=["byte"] + names),
                *run_view(runs["value"]))

    preview_button.click(on_preview, form, [preview_text, preview_sample], api_name="preview_dataset")
    estimate_button.click(on_estimate, form, estimate_text, api_name="training_estimate")
    start.click(on_start, form, [r["run_list"], estimate_text, *view], api_name="start_training")
    r["cancel"].click(on_cancel, r["run_list"], view, api_name="cancel_training")
    r["resume"].click(shows_errors(lambda name: (training.resume(name), run_view(name))[1]), r["run_list"], view,
                      api_name="resume_training")
    r["delete"].click(on_delete, r["run_list"], [r["run_list"], *view], api_name="delete_run")
    r["undo_delete"].click(on_undo_delete, None, [r["run_list"], *view], api_name="undo_delete_run")
    r["refresh_runs"].click(lambda name: (runs_update(name), *datasets_update()), r["run_list"],
                            [r["run_list"], *dataset_lists], api_name="list_runs")
    r["run_list"].change(run_view, r["run_list"], view, api_name="run_status")
    # The newest line is what a person follows: scroll to it on every update, in the browser only
    # (Gradio's autoscroll follows only a box already scrolled to its end).
    r["log_tail"].change(None, None, None, js=SCROLL_LOG_JS)
    tab.select(None, None, None, js=SCROLL_LOG_JS)  # a box filled while its tab was hidden had no height then
    f["upload"].upload(on_upload, f["upload"], dataset_lists, api_visibility="private")
    f["make_copy"].click(on_make_copy, f["base_model"], [f["base_model"], f["tokenizer"]],
                         api_name="make_transformers_copy")
    r["load_result"].click(on_load_result, r["run_list"], r["result_text"], api_name="load_run_result")
    r["export_button"].click(on_export, [r["run_list"], r["export_kind"], r["export_name"]], r["result_text"],
                             api_name="export_run")
    r["ppl_button"].click(on_perplexity, [r["ppl_text"], r["ppl_window"]], r["ppl_result"], api_name="perplexity")
    timer.tick(run_view, r["run_list"], view, show_progress="hidden", api_visibility="private")
    page.load(on_page_load, None, [r["run_list"], *dataset_lists, f["base_model"], f["tokenizer"], *view],
              api_visibility="private")
    # Restored from what this browser stored before any change event could store the defaults over it.
    page.load(restore_form, saved_form, form, api_visibility="private", show_progress="hidden")
    gr.on([c.change for c in form], lambda *values: dict(zip(FORM_FIELDS, values)), form, saved_form,
          api_visibility="private", show_progress="hidden", concurrency_limit=None)
