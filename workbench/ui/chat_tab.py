"""Chat tab: streaming chat, Stop, Regenerate, Continue, Edit last, Delete a turn,
saved conversations (open, rename, delete, export) and generation presets.

Layout and wiring only. The open conversation is an id in a `gr.State`; every action
reads it from the ConversationStore and ChatService saves it, so nothing lives only in
the browser.
"""

from __future__ import annotations

import os
import time

import gradio as gr

from ..errors import WorkbenchError
from ..generation_presets import GenerationPresetStore
from ..options import GenParams
from ..services.chat_service import DEFAULT_SYSTEM_PROMPT, ChatService, format_stats
from ..services.conversations import Conversation, remove_turn


WAITING_REPLIES = 16  # chat replies handed to the model worker's line at once (each holds a thread while it waits)


def conversation_choices(chat: ChatService) -> list[tuple[str, str]]:
    rows, errors = chat.conversations.list()
    for error in errors:
        gr.Warning(error)
    return [(f"{r['title']} · {time.strftime('%b %d %H:%M', time.localtime(r['updated']))}", r["id"]) for r in rows]


def params_from(temp, top_p, top_k, min_p, rep, max_new, seed) -> GenParams:
    return GenParams(max_tokens=int(max_new), temperature=float(temp), top_p=float(top_p), top_k=int(top_k),
                     min_p=float(min_p), repetition_penalty=float(rep),
                     seed=None if seed is None or seed < 0 else int(seed)).validate()


def sliders_from(p: GenParams) -> list:
    return [p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty, p.max_tokens,
            -1 if p.seed is None else p.seed]


def build_chat_tab(chat: ChatService, presets: GenerationPresetStore, export_folder: str, page: gr.Blocks) -> None:
    """The tab. The conversation and preset lists fill in on `page` load: the page shell is served
    before login, so it must hold no titles or names from the disk."""
    balanced = presets.get("Balanced").gen_params() if "Balanced" in presets.names() else GenParams()
    with gr.Tab("Chat"):
        conv_id = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                conversations = gr.Dropdown([], value=None, allow_custom_value=True, label="Saved conversations",
                                            elem_id="conversations")
                new_chat = gr.Button("New chat", elem_id="new-chat")
                title = gr.Textbox(label="Title", placeholder="rename the open conversation")
                rename = gr.Button("Rename")
                delete = gr.Button("Delete conversation", variant="stop")
                export = gr.Button("Export as Markdown")
                exported = gr.File(label="Export", interactive=False)
            with gr.Column(scale=4):
                chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chatbot")
                with gr.Row():
                    message = gr.Textbox(placeholder="Type a message and press Enter", show_label=False, scale=8,
                                         lines=2, elem_id="chat-input")
                    send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
                    stop = gr.Button("Stop", scale=1, elem_id="stop")
                with gr.Row():
                    regenerate = gr.Button("Regenerate")
                    cont = gr.Button("Continue")
                    edit_last = gr.Button("Edit last message")
                    delete_last = gr.Button("Delete last turn")
                with gr.Row():
                    turn_number = gr.Number(1, precision=0, minimum=1, label="Turn #", scale=1)
                    delete_turn = gr.Button("Delete that turn", scale=1)
                stats = gr.Markdown(elem_id="chat-stats")
                with gr.Accordion("Settings", open=False, elem_id="chat-settings"):
                    system = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2)
                    with gr.Row():
                        preset = gr.Dropdown([], value=None, allow_custom_value=True, label="Generation preset", scale=2,
                                             elem_id="generation-preset")
                        apply_preset = gr.Button("Apply", scale=1, elem_id="apply-preset")
                        preset_name = gr.Textbox(label="Save settings as", scale=2)
                        save_preset = gr.Button("Save preset", scale=1)
                        delete_preset = gr.Button("Delete preset", scale=1)
                    with gr.Row():
                        temperature = gr.Slider(0, 2, value=balanced.temperature, step=0.05, label="Temperature",
                                                info="0 = greedy")
                        top_p = gr.Slider(0.05, 1, value=balanced.top_p, step=0.01, label="top_p")
                        top_k = gr.Slider(0, 200, value=balanced.top_k, step=1, label="top_k", info="0 = off")
                        min_p = gr.Slider(0, 0.5, value=balanced.min_p, step=0.01, label="min_p")
                    with gr.Row():
                        repetition_penalty = gr.Slider(0.8, 2, value=balanced.repetition_penalty, step=0.01,
                                                       label="Repetition penalty")
                        max_tokens = gr.Slider(1, 4096, value=balanced.max_tokens, step=1, label="Max new tokens",
                                               elem_id="max-tokens")
                        seed = gr.Number(-1, precision=0, label="Seed", info="-1 = random", elem_id="seed")
    sliders = [temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, seed]

    def open_or_new(cid: str | None, system_prompt: str) -> Conversation:
        conv = chat.conversations.get(cid) if cid else chat.conversations.new(system_prompt)
        conv.system_prompt = system_prompt
        return conv

    def stream(action, session, cid, system_prompt, text, *values):
        """Run one of send/regenerate/continue and stream (chatbot, box, stats, id, list) updates.

        `session` (the browser tab's Gradio session) is what this tab's Stop button stops.
        """
        try:
            conv = open_or_new(cid, system_prompt)
            params = params_from(*values)
            if action == "send":
                chunks = chat.send(conv, text, params, session)
            elif action == "regenerate":
                chunks = chat.regenerate(conv, params, session)
            else:
                chunks = chat.continue_reply(conv, params, session)
            first = next(chunks)  # errors (no model, empty message) surface before the box is cleared
        except WorkbenchError as e:
            raise gr.Error(str(e))
        line = format_stats(first.stats) if first.stats else ""
        # The list only changes when this message started a new conversation: do not reread every file.
        listing = gr.update(choices=conversation_choices(chat), value=conv.id) if cid != conv.id else gr.skip()
        yield conv.messages, "", line, conv.id, listing
        try:
            for chunk in chunks:
                if chunk.stats:
                    line = format_stats(chunk.stats)
                yield conv.messages, gr.skip(), line, gr.skip(), gr.skip()
        except WorkbenchError as e:
            yield conv.messages, gr.skip(), f"**Error:** {e}", gr.skip(), gr.skip()

    def on_send(request: gr.Request, text, cid, system_prompt, *values):
        yield from stream("send", request.session_hash, cid, system_prompt, text, *values)

    def on_regenerate(request: gr.Request, cid, system_prompt, *values):
        yield from stream("regenerate", request.session_hash, cid, system_prompt, "", *values)

    def on_continue(request: gr.Request, cid, system_prompt, *values):
        yield from stream("continue", request.session_hash, cid, system_prompt, "", *values)

    def on_stop(request: gr.Request):
        chat.stop(request.session_hash)

    def on_open(cid):
        if not cid:
            return [], None, "", gr.skip()
        try:
            conv = chat.conversations.get(cid)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return conv.messages, conv.id, "", conv.system_prompt or DEFAULT_SYSTEM_PROMPT

    def on_new():
        return [], None, "", gr.update(choices=conversation_choices(chat), value=None)

    def without_turn(cid, turn: int | None, keep_text: bool):
        """Remove a turn (None = the last); return (messages, its user text when editing)."""
        if not cid:
            raise gr.Error("No conversation is open.")
        try:
            conv = chat.conversations.get(cid)
            count = sum(m["role"] == "user" for m in conv.messages)
            text = remove_turn(conv, count if turn is None else int(turn)) if count else ""
        except WorkbenchError as e:
            raise gr.Error(str(e))
        chat.conversations.save(conv)
        return conv.messages, text if keep_text else gr.skip()

    def on_rename(cid, new_title):
        try:
            chat.conversations.rename(cid, new_title) if cid else None
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return gr.update(choices=conversation_choices(chat), value=cid), ""

    def on_delete(cid):
        if cid:
            try:
                chat.conversations.delete(cid)
            except WorkbenchError as e:
                raise gr.Error(str(e))
        return [], None, gr.update(choices=conversation_choices(chat), value=None)

    def on_export(cid):
        if not cid:
            raise gr.Error("No conversation is open.")
        return chat.conversations.export_markdown(cid, export_folder)

    def on_apply_preset(name):
        try:
            return sliders_from(presets.get(name).gen_params())
        except WorkbenchError as e:
            raise gr.Error(str(e))

    def on_save_preset(name, *values):
        try:
            presets.save(name, params_from(*values), "Saved from the Chat tab.")
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return gr.update(choices=presets.names(), value=name)

    def on_delete_preset(name):
        try:
            presets.delete(name)
        except WorkbenchError as e:
            raise gr.Error(str(e))
        return gr.update(choices=presets.names(), value=None)

    outputs = [chatbot, message, stats, conv_id, conversations]
    # Replies from every browser tab (and API client) wait their turn at the model worker, in arrival
    # order; Gradio's queue (which shows a position) only holds those beyond WAITING_REPLIES.
    replies = dict(concurrency_id="chat-reply", concurrency_limit=WAITING_REPLIES)
    send.click(on_send, [message, conv_id, system, *sliders], outputs, api_name="chat", **replies)
    message.submit(on_send, [message, conv_id, system, *sliders], outputs, api_visibility="private", **replies)
    regenerate.click(on_regenerate, [conv_id, system, *sliders], outputs, api_name="regenerate", **replies)
    cont.click(on_continue, [conv_id, system, *sliders], outputs, api_name="continue", **replies)
    stop.click(on_stop, None, None, api_name="stop", queue=False)
    edit_last.click(lambda cid: without_turn(cid, None, True), conv_id, [chatbot, message], api_name="edit_last")
    delete_last.click(lambda cid: without_turn(cid, None, False)[0], conv_id, chatbot, api_name="delete_last")
    delete_turn.click(lambda cid, n: without_turn(cid, n, False)[0], [conv_id, turn_number], chatbot,
                      api_name="delete_turn")
    conversations.input(on_open, conversations, [chatbot, conv_id, stats, system], api_name="open_conversation")
    new_chat.click(on_new, None, [chatbot, conv_id, stats, conversations], api_name="new_chat")
    page.load(lambda: (gr.update(choices=conversation_choices(chat)), gr.update(choices=presets.names())), None,
              [conversations, preset], api_visibility="private")
    rename.click(on_rename, [conv_id, title], [conversations, title], api_name="rename_conversation")
    delete.click(on_delete, conv_id, [chatbot, conv_id, conversations], api_name="delete_conversation")
    export.click(on_export, conv_id, exported, api_name="export_conversation")
    apply_preset.click(on_apply_preset, preset, sliders, api_name="apply_preset")
    save_preset.click(on_save_preset, [preset_name, *sliders], preset, api_name="save_preset")
    delete_preset.click(on_delete_preset, preset, preset, api_name="delete_preset")
    os.makedirs(export_folder, exist_ok=True)
