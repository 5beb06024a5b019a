"""Chat tab: streaming chat with the loaded model, Stop, sampling settings.

Layout and wiring only: the conversation lives in a `gr.State` as plain
{"role", "content"} dicts; ChatService builds the request and streams the reply.
"""

from __future__ import annotations

import gradio as gr

from ..errors import WorkbenchError
from ..options import GenParams
from ..services.chat_service import DEFAULT_SYSTEM_PROMPT, ChatService, format_stats


def build_chat_tab(chat: ChatService) -> None:
    with gr.Tab("Chat"):
        chatbot = gr.Chatbot(label="Conversation", height=480)
        history = gr.State([])
        with gr.Row():
            message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=8, lines=2)
            send = gr.Button("Send", variant="primary", scale=1)
            stop = gr.Button("Stop", scale=1)
        stats = gr.Markdown()
        new_chat = gr.Button("New chat")
        with gr.Accordion("Settings", open=False):
            system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2)
            with gr.Row():
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", info="0 = greedy")
                top_p = gr.Slider(0.05, 1, value=0.95, step=0.01, label="top_p")
                top_k = gr.Slider(0, 200, value=40, step=1, label="top_k", info="0 = off")
                min_p = gr.Slider(0, 0.5, value=0.05, step=0.01, label="min_p")
            with gr.Row():
                repetition_penalty = gr.Slider(0.8, 2, value=1.0, step=0.01, label="Repetition penalty")
                max_tokens = gr.Slider(1, 4096, value=512, step=1, label="Max new tokens")
                seed = gr.Number(-1, precision=0, label="Seed", info="-1 = random")

    def respond(user_text, turns, system_prompt, temp, p, k, mp, rep, max_new, seed_value):
        try:
            params = GenParams(max_tokens=int(max_new), temperature=float(temp), top_p=float(p), top_k=int(k),
                               min_p=float(mp), repetition_penalty=float(rep),
                               seed=None if seed_value is None or seed_value < 0 else int(seed_value)).validate()
            stream = chat.stream_reply(turns, user_text, system_prompt, params)
            first = next(stream)  # errors (no model, empty message) surface before the box is cleared
        except WorkbenchError as e:
            raise gr.Error(str(e))
        shown = turns + [{"role": "user", "content": user_text}, {"role": "assistant", "content": first.text}]
        line = format_stats(first.stats) if first.stats else ""
        yield shown, "", line, turns
        try:
            for chunk in stream:
                shown[-1]["content"] = chunk.text
                if chunk.stats:
                    line = format_stats(chunk.stats)
                yield shown, gr.skip(), line, gr.skip()
        except WorkbenchError as e:
            yield shown, gr.skip(), f"**Error:** {e}", turns
            return
        yield shown, gr.skip(), line, shown

    inputs = [message, history, system, temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, seed]
    outputs = [chatbot, message, stats, history]
    send.click(respond, inputs, outputs, api_name="chat")
    message.submit(respond, inputs, outputs, api_visibility="private")
    stop.click(chat.stop, None, None, api_name="stop", queue=False)
    new_chat.click(lambda: ([], [], ""), None, [chatbot, history, stats], api_name="new_chat")
