"""Compare tab: the Model tab's model (A) beside a second one (B), one prompt to both.

Layout and wiring only; CompareService runs both generations at once.
"""

from __future__ import annotations

import gradio as gr

from ..model_values import GenerationStats
from ..options import GenParams, LoadOptions
from ..services.chat_service import DEFAULT_SYSTEM_PROMPT
from ..services.compare_service import CompareService
from .user_errors import shows_errors

MiB = 2**20


def side_stats(stats: GenerationStats | None, rss: int | None) -> str:
    if not stats:
        return ""
    memory = f" · worker RAM {rss / MiB:.0f} MiB" if rss else ""
    return (f"{stats.completion_tokens} tokens · {stats.tokens_per_s:.1f} tok/s · "
            f"first token {stats.ttft_s * 1000:.0f} ms{memory}")


def build_compare_tab(compare: CompareService, page: gr.Blocks) -> None:
    """The tab; the model list fills in on `page` load (the page shell, served before login, holds no names)."""
    a, b = compare.slots["a"], compare.slots["b"]
    with gr.Tab("Compare"):
        gr.Markdown("Model **A** is the one loaded in the Model tab. Load a second model as **B**, "
                    "then send one prompt to both (they run at the same time, each in its own worker).")
        with gr.Row():
            b_name = gr.Dropdown([], value=None, allow_custom_value=True, label="Model B (from models/)", scale=3)
            b_ctx = gr.Slider(256, 32768, value=2048, step=256, label="Context for B", scale=2)
            load_b = gr.Button("Load B", scale=1)
            unload_b = gr.Button("Unload B", scale=1)
        b_status = gr.Markdown()
        prompt = gr.Textbox(label="Prompt", lines=2, placeholder="Ask both models the same thing")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature", info="0 = greedy")
            max_tokens = gr.Slider(1, 2048, value=256, step=1, label="Max new tokens")
            run = gr.Button("Send to both", variant="primary")
            stop = gr.Button("Stop")
        with gr.Row():
            with gr.Column():
                a_title = gr.Markdown("**A**")
                a_text = gr.Textbox(label="A", lines=12, interactive=False)
                a_stats = gr.Markdown()
            with gr.Column():
                b_title = gr.Markdown("**B**")
                b_text = gr.Textbox(label="B", lines=12, interactive=False)
                b_stats = gr.Markdown()

    @shows_errors
    def on_load_b(name, n_ctx):
        loaded = b.load(b.resolve_name(name), None, LoadOptions(n_ctx=int(n_ctx)))
        return f"B: `{loaded.name}` with {loaded.backend} ({loaded.dtype})."

    @shows_errors
    def on_run(text, temp, max_new, request: gr.Request):
        params = GenParams(temperature=float(temp), max_tokens=int(max_new)).validate()
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": text}]
        events = compare.stream(messages, params, request.session_hash)
        texts, stats = {"a": "", "b": ""}, {"a": "", "b": ""}
        titles = (f"**A**: {a.loaded_name()}", f"**B**: {b.loaded_name()}")
        for side, kind, value in events:
            if kind == "token":
                texts[side] += value
            elif kind == "done":
                stats[side] = side_stats(value, compare.memory(side))
            else:
                stats[side] = f"**Error:** {value}"
            yield (*titles, texts["a"], texts["b"], stats["a"], stats["b"])

    load_b.click(on_load_b, [b_name, b_ctx], b_status, api_name="load_b")
    unload_b.click(lambda: (b.unload(), "B is not loaded.")[1], None, b_status, api_name="unload_b")
    run.click(on_run, [prompt, temperature, max_tokens], [a_title, b_title, a_text, b_text, a_stats, b_stats],
              api_name="compare", concurrency_limit=1)
    def on_stop(request: gr.Request):
        compare.stop(request.session_hash)

    stop.click(on_stop, None, None, queue=False, api_name="compare_stop")
    # The list is read again whenever it is opened (new downloads and exports show up), and a reload
    # shows what B still has loaded.
    b_name.focus(lambda: gr.update(choices=b.model_names()), None, b_name, api_visibility="private",
                 show_progress="hidden")
    page.load(lambda: (gr.update(choices=b.model_names()), compare.describe("b")), None, [b_name, b_status],
              api_visibility="private")
