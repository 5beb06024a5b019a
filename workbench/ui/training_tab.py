"""Training tab: dataset preview, run options with a memory estimate, live loss plot, and the result.

Layout and wiring only. Every action is a TrainingService or ModelService call; names
from the browser (models, datasets, runs, export targets) are resolved inside their
folders by the services. A timer re-reads the selected run's files, so a page reload or
an app restart shows a running run again.
"""

from __future__ import annotations

import os

import gradio as gr
import pandas as pd

from ..errors import WorkbenchError
from ..options import LoadOptions
from ..services.model_service import ModelService
from ..services.training_service import TrainingService
from ..training.config import SCHEDULERS, TrainConfig

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


def build_training_tab(training: TrainingService, models: ModelService, page: gr.Blocks) -> None:
    """The tab. Its lists (models, datasets, runs) fill in on `page` load: that also shows runs started
    since the app was built, and keeps names off the page shell, which is served before login."""
    with gr.Tab("Training"):
        with gr.Row():
            with gr.Column(scale=3):
                with gr.Row():
                    run_name = gr.Textbox(label="Run name", value="my-run", elem_id="run-name")
                    method = gr.Radio(["lora", "scratch"], value="lora", label="Method",
                                      info="LoRA adapter on a model, or a new small GPT from scratch")
                with gr.Row():
                    base_model = gr.Dropdown([], value=None, allow_custom_value=True, label="Base model (Transformers form)",
                                             elem_id="base-model", scale=3)
                    make_copy = gr.Button("Make a Transformers copy", scale=1)
                with gr.Row():
                    dataset = gr.Dropdown([], value=None, allow_custom_value=True, label="Dataset (datasets/)",
                                          elem_id="dataset", scale=3)
                    validation_file = gr.Dropdown([""], value="", allow_custom_value=True, label="Validation file",
                                                  info="empty = hold out a fraction", scale=2)
                    validation_fraction = gr.Number(D.validation_fraction, label="Validation fraction", scale=1)
                upload = gr.File(label="Upload a dataset (.txt, .json, .jsonl)", file_types=[".txt", ".md", ".json", ".jsonl"],
                                 elem_id="dataset-upload")
                with gr.Accordion("LoRA", open=False):
                    with gr.Row():
                        lora_rank = gr.Number(D.lora_rank, precision=0, label="Rank")
                        lora_alpha = gr.Number(D.lora_alpha, precision=0, label="Alpha")
                        lora_dropout = gr.Number(D.lora_dropout, label="Dropout")
                        target_modules = gr.Textbox(", ".join(D.target_modules), label="Target modules",
                                                    info="comma separated, or all-linear")
                with gr.Accordion("From scratch", open=False):
                    with gr.Row():
                        tokenizer = gr.Dropdown(["byte"], value="byte", allow_custom_value=True, label="Tokenizer",
                                                info="byte-level, or reuse a model's")
                        n_layer = gr.Number(D.n_layer, precision=0, label="Layers")
                        n_head = gr.Number(D.n_head, precision=0, label="Heads")
                        n_embd = gr.Number(D.n_embd, precision=0, label="Width")
                        output_model = gr.Textbox("", label="Output model name (models/)", info="empty = run name")
                with gr.Accordion("Optimisation", open=True):
                    with gr.Row():
                        learning_rate = gr.Number(D.learning_rate, label="Learning rate")
                        scheduler = gr.Dropdown(list(SCHEDULERS), value=D.scheduler, label="Scheduler")
                        warmup_steps = gr.Number(D.warmup_steps, precision=0, label="Warmup steps")
                        epochs = gr.Number(D.epochs, label="Epochs")
                        max_steps = gr.Number(D.max_steps, precision=0, label="Max steps", info="0 = use epochs")
                    with gr.Row():
                        batch_size = gr.Number(D.batch_size, precision=0, label="Batch size")
                        grad_accum = gr.Number(D.grad_accum, precision=0, label="Gradient accumulation")
                        cutoff_len = gr.Number(D.cutoff_len, precision=0, label="Cutoff length (tokens)")
                        overlap = gr.Number(D.overlap, precision=0, label="Overlap (raw text)")
                    with gr.Row():
                        eval_every = gr.Number(D.eval_every, precision=0, label="Evaluate every N steps",
                                               info="0 = each epoch")
                        save_every = gr.Number(D.save_every, precision=0, label="Save every N steps")
                        patience = gr.Number(D.early_stopping_patience, precision=0, label="Early stopping patience",
                                             info="0 = off")
                        seed = gr.Number(D.seed, precision=0, label="Seed")
                with gr.Row():
                    preview_button = gr.Button("Preview dataset")
                    estimate_button = gr.Button("Memory estimate")
                    start = gr.Button("Start training", variant="primary", elem_id="start-training")
                estimate_text = gr.Markdown("", elem_id="train-estimate")
                preview_text = gr.Markdown("")
                preview_sample = gr.Code(label="One example as the model sees it", interactive=False, visible=False)
            with gr.Column(scale=3):
                with gr.Row():
                    run_list = gr.Dropdown([], value=None, allow_custom_value=True, label="Runs (user_data/runs/)",
                                           elem_id="run-list", scale=3)
                    refresh_runs = gr.Button("Refresh", scale=1)
                run_status = gr.Markdown(status_markdown(None),
                                         elem_id="run-status")
                loss_plot = gr.LinePlot(None, x="step", y="loss",
                                        color="series", color_map=LOSS_SERIES, color_title="", label="Loss",
                                        elem_id="loss-plot")
                with gr.Row():
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel-run")
                    resume = gr.Button("Resume", elem_id="resume-run")
                    delete = gr.Button("Delete run")
                log_tail = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True)
                with gr.Accordion("Use the result", open=True):
                    load_result = gr.Button("Load in Chat", elem_id="load-result")
                    with gr.Row():
                        export_kind = gr.Radio(["transformers", "gptq", "gguf"], value="transformers",
                                               label="Export as", info="LoRA runs are merged into their base model")
                        export_name = gr.Textbox(label="Output name in models/", placeholder="my-model-merged")
                        export_button = gr.Button("Export")
                    result_text = gr.Markdown("")
                with gr.Accordion("Perplexity of the loaded model", open=False):
                    with gr.Row():
                        ppl_text = gr.Dropdown([], value=None, allow_custom_value=True, label="Text file (datasets/)")
                        ppl_window = gr.Number(0, precision=0, label="Window (tokens)", info="0 = min(context, 512)")
                        ppl_button = gr.Button("Measure")
                    ppl_result = gr.Markdown("")
        timer = gr.Timer(2)

    form = [run_name, method, base_model, dataset, validation_file, validation_fraction, lora_rank, lora_alpha,
            lora_dropout, target_modules, tokenizer, n_layer, n_head, n_embd, output_model, learning_rate, scheduler,
            warmup_steps, epochs, max_steps, batch_size, grad_accum, cutoff_len, overlap, eval_every, save_every,
            patience, seed]

    def config_from_form(name, method_, base, data, val_file, val_fraction, rank, alpha, dropout, targets, tok,
                         layers, heads, width, out_model, lr, sched, warmup, n_epochs, steps, batch, accum, cutoff,
                         ovl, every_eval, every_save, patience_, seed_) -> TrainConfig:
        def whole(v, label):
            if v is None or float(v) != int(v):
                raise WorkbenchError(f"{label} must be a whole number.")
            return int(v)

        return TrainConfig.from_dict({
            "name": (name or "").strip(), "method": method_, "base_model": base or "", "dataset": data or "",
            "validation_file": val_file or "", "validation_fraction": float(val_fraction or 0),
            "lora_rank": whole(rank, "Rank"), "lora_alpha": whole(alpha, "Alpha"), "lora_dropout": float(dropout or 0),
            "target_modules": targets or "", "tokenizer": tok or "byte", "n_layer": whole(layers, "Layers"),
            "n_head": whole(heads, "Heads"), "n_embd": whole(width, "Width"), "output_model": (out_model or "").strip(),
            "learning_rate": float(lr or 0), "scheduler": sched, "warmup_steps": whole(warmup, "Warmup steps"),
            "epochs": float(n_epochs or 0), "max_steps": whole(steps, "Max steps"),
            "batch_size": whole(batch, "Batch size"), "grad_accum": whole(accum, "Gradient accumulation"),
            "cutoff_len": whole(cutoff, "Cutoff length"), "overlap": whole(ovl, "Overlap"),
            "eval_every": whole(every_eval, "Evaluate every"), "save_every": whole(every_save, "Save every"),
            "early_stopping_patience": whole(patience_, "Patience"), "seed": whole(seed_, "Seed"),
        }, "the Training tab")

    def run_view(name):
        if not name:
            return status_markdown(None), loss_frame([]), ""
        try:
            return status_markdown(training.status(name), training.paths.root), loss_frame(training.metrics(name)), training.log_tail(name, 12)
        except WorkbenchError as e:
            return f"**{e}**", loss_frame([]), ""

    def on_preview(*values):
        try:
            info = training.preview(config_from_form(*values))
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return preview_markdown(info), gr.update(value=info["sample"], visible=True)

    def on_estimate(*values):
        try:
            return "**Memory estimate:** " + training.check_memory(config_from_form(*values))
        except WorkbenchError as e:
            return f"**Cannot estimate:** {e}"

    def on_start(*values):
        try:
            config = config_from_form(*values)
            summary = training.check_memory(config)
            training.start(config)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        names = training.names()
        return (gr.update(choices=names, value=config.name), f"**Memory estimate:** {summary}",
                *run_view(config.name))

    def on_cancel(name):
        try:
            training.cancel(name)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        gr.Info("Cancelling: the run saves a checkpoint after its current step, then stops.")
        return run_view(name)

    def on_resume(name):
        try:
            training.resume(name)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return run_view(name)

    def on_delete(name):
        try:
            training.delete(name)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        names = training.names()
        value = names[0] if names else None
        return (gr.update(choices=names, value=value), *run_view(value))

    def on_refresh_runs(name):
        names = training.names()
        value = name if name in names else (names[0] if names else None)
        return (gr.update(choices=names, value=value), gr.update(choices=training.datasets()),
                gr.update(choices=[""] + training.datasets()), gr.update(choices=training.datasets()))

    def on_upload(file):
        if file is None:
            return gr.skip(), gr.skip(), gr.skip()
        try:
            name = training.save_upload(file, os.path.basename(file))
        except WorkbenchError as e:
            raise gr.Error(str(e))
        gr.Info(f"Saved as datasets/{name}.")
        choices = training.datasets()
        return gr.update(choices=choices, value=name), gr.update(choices=[""] + choices), gr.update(choices=choices)

    def on_make_copy(name, progress=gr.Progress()):
        if not name:
            raise gr.Error("Pick the GGUF model to copy first.")
        try:
            src = models.resolve_name(name)
            out_name = os.path.splitext(name)[0] + "-transformers"
            lines = []
            for line in training.job(["convert", src, "--to", "transformers",
                                      os.path.join(models.paths.models, out_name)]):
                lines.append(line)
                progress(None, desc=line[:120])
        except WorkbenchError as e:
            raise gr.Error(str(e))
        names = [r["name"] for r in models.list_models() if "error" not in r]
        gr.Info(f"Made models/{out_name}.")
        return gr.update(choices=names, value=out_name), gr.update(choices=["byte"] + names)

    def on_load_result(name, progress=gr.Progress()):
        try:
            status = training.status(name)
            if status.status != "completed":
                raise WorkbenchError(f"Run {name!r} has not completed ({status.status}); finish or resume it first.")
            progress(0.3, desc="Loading the result in a worker...")
            if status.method == "lora":
                base, adapter = training.adapter_of(name)
                models.load(base, None, LoadOptions(n_ctx=2048, adapter=adapter))
                return f"Loaded `{os.path.basename(base)}` with the adapter of **{name}**: chat with it in the Chat tab."
            models.load(status.output, "transformers", LoadOptions(n_ctx=2048))
            return f"Loaded `{os.path.basename(status.output)}`: chat with it in the Chat tab."
        except WorkbenchError as e:
            raise gr.Error(str(e))

    def on_export(name, kind, out_name, progress=gr.Progress()):
        try:
            if not name:
                raise WorkbenchError("Pick a run to export.")
            out_name = (out_name or "").strip() or f"{name}-{kind}"
            if kind == "gguf" and not out_name.endswith(".gguf"):
                out_name += ".gguf"
            from ..paths import resolve_inside

            out = resolve_inside(models.paths.models, out_name, "model")
            status = training.status(name)
            source = name if status.method == "lora" else status.output
            if status.status != "completed" or not source:
                raise WorkbenchError(f"Run {name!r} has not completed; there is nothing to export yet.")
            if status.method != "lora" and kind == "transformers":
                raise WorkbenchError(f"The scratch model is already a Transformers folder: models/{os.path.basename(source)}.")
            for line in training.job(["export", source, "--to", kind, out]):
                progress(None, desc=line[:120])
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return f"Exported to `models/{out_name}`; it is in the Model tab's list."

    def on_perplexity(text_name, window, progress=gr.Progress()):
        try:
            text = open(training.dataset_path(text_name), encoding="utf-8").read() if text_name else ""
            result = models.perplexity(text, int(window or 0) or None,
                                       lambda done, total: progress(done / total, desc=f"window {done} of {total}"))
        except (WorkbenchError, UnicodeDecodeError, OSError) as e:
            raise gr.Error(str(e))
        return (f"Perplexity of **{result['model']}** ({result['backend']}): **{result['perplexity']:.4f}** over "
                f"{result['tokens']:,} tokens in {result['windows']} windows of {result['window']}.")

    view = [run_status, loss_plot, log_tail]
    preview_button.click(on_preview, form, [preview_text, preview_sample], api_name="preview_dataset")
    estimate_button.click(on_estimate, form, estimate_text, api_name="training_estimate")
    start.click(on_start, form, [run_list, estimate_text, *view], api_name="start_training")
    cancel.click(on_cancel, run_list, view, api_name="cancel_training")
    resume.click(on_resume, run_list, view, api_name="resume_training")
    delete.click(on_delete, run_list, [run_list, *view], api_name="delete_run")
    refresh_runs.click(on_refresh_runs, run_list, [run_list, dataset, validation_file, ppl_text],
                       api_name="list_runs")
    run_list.change(run_view, run_list, view, api_name="run_status")
    upload.upload(on_upload, upload, [dataset, validation_file, ppl_text], api_visibility="private")
    make_copy.click(on_make_copy, base_model, [base_model, tokenizer], api_name="make_transformers_copy")
    load_result.click(on_load_result, run_list, result_text, api_name="load_run_result")
    export_button.click(on_export, [run_list, export_kind, export_name], result_text, api_name="export_run")
    ppl_button.click(on_perplexity, [ppl_text, ppl_window], ppl_result, api_name="perplexity")
    timer.tick(run_view, run_list, view, show_progress="hidden", api_visibility="private")

    def on_page_load():
        names = training.names()
        datasets = training.datasets()
        model_choices = [r["name"] for r in models.list_models() if "error" not in r]
        value = names[0] if names else None
        return (gr.update(choices=names, value=value), gr.update(choices=datasets), gr.update(choices=[""] + datasets),
                gr.update(choices=datasets), gr.update(choices=model_choices), gr.update(choices=["byte"] + model_choices),
                *run_view(value))

    page.load(on_page_load, None, [run_list, dataset, validation_file, ppl_text, base_model, tokenizer, *view],
              api_visibility="private")
