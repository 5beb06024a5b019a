"""Chat tab: streaming chat, Stop, Regenerate, Continue, Edit last, Delete a turn,
saved conversations (open, rename, delete, export) and generation presets.

Layout and wiring only. The open conversation is an id in a `gr.State`; every action
reads it from the ConversationStore and ChatService saves it, so nothing lives only in
the browser.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import gradio as gr

from ..errors import WorkbenchError
from ..generation_presets import GenerationPresetStore
from ..options import GenParams
from ..services.chat_service import DEFAULT_SYSTEM_PROMPT, ChatService, format_stats
from .user_errors import shows_errors


WAITING_REPLIES = 16  # chat replies handed to the model worker's line at once (each holds a thread while it waits)


def conversation_choices(chat: ChatService) -> list[tuple[str, str]]:
    rows, errors = chat.conversations.list()
    for error in errors:
        gr.Warning(error)
    return [(f"{r['title']} · {time.strftime('%b %d %H:%M', time.localtime(r['updated']))}", r["id"]) for r in rows]


def params_from(temp, top_p, top_k, min_p, rep, max_new, seed, json_schema: str = "") -> GenParams:
    return GenParams(max_tokens=int(max_new), temperature=float(temp), top_p=float(top_p), top_k=int(top_k),
                     min_p=float(min_p), repetition_penalty=float(rep),
                     seed=None if seed is None or seed < 0 else int(seed),
                     json_schema=schema_from(json_schema)).validate()


def schema_from(text: str | None) -> dict | None:
    """The JSON schema box's value: None when empty, else a checked JSON Schema ({} = any JSON object)."""
    import json

    from ..api.structured import check_json_schema

    if not text or not text.strip():
        return None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkbenchError(f"The JSON schema box does not hold valid JSON ({e.msg} at line {e.lineno}).") from e
    return check_json_schema(schema, "JSON schema")


def sliders_from(p: GenParams) -> list:
    return [p.temperature, p.top_p, p.top_k, p.min_p, p.repetition_penalty, p.max_tokens,
            -1 if p.seed is None else p.seed]


@dataclass
class ChatView:
    """The tab's components that handlers read or write."""

    conv_id: gr.State
    conversations: gr.Dropdown
    new_chat: gr.Button
    title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    undo: gr.Button
    export: gr.Button
    exported: gr.File
    model_line: gr.Markdown
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    regenerate: gr.Button
    cont: gr.Button
    edit_last: gr.Button
    delete_last: gr.Button
    turn_number: gr.Number
    delete_turn: gr.Button
    stats: gr.Markdown
    system: gr.Textbox
    preset: gr.Dropdown
    apply_preset: gr.Button
    preset_name: gr.Textbox
    save_preset: gr.Button
    delete_preset: gr.Button
    undo_preset: gr.Button
    sliders: list
    json_schema: gr.Code


def _layout(balanced: GenParams) -> ChatView:
    conv_id = gr.State(None)
    with gr.Row(elem_id="chat-row"):
        with gr.Column(scale=1, min_width=220, elem_id="chat-side"):
            conversations = gr.Dropdown([], value=None, allow_custom_value=True, label="Saved conversations",
                                        elem_id="conversations")
            new_chat = gr.Button("New chat", elem_id="new-chat")
            title = gr.Textbox(label="Title", placeholder="rename the open conversation")
            rename = gr.Button("Rename")
            delete = gr.Button("Delete conversation", variant="stop")
            undo = gr.Button("Undo delete", elem_id="undo-delete")
            export = gr.Button("Export as Markdown")
            exported = gr.File(label="Export", interactive=False)
        with gr.Column(scale=4):
            model_line = gr.Markdown("", elem_id="chat-model")
            chatbot = gr.Chatbot(label="Conversation", height=460, elem_id="chatbot")
            with gr.Row():
                # One line that grows: Gradio submits a one-line box on Enter and lets Shift+Enter add a line.
                message = gr.Textbox(placeholder="Type a message and press Enter (Shift+Enter: new line)",
                                     show_label=False, scale=8, lines=1, max_lines=12, elem_id="chat-input")
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
                    undo_preset = gr.Button("Undo delete", scale=1)
                sliders = _sampling_sliders(balanced)
                json_schema = gr.Code("", language="json", label="JSON schema (replies are JSON matching it; "
                                      "{} = any JSON object; empty = free text)", elem_id="json-schema")
    return ChatView(conv_id, conversations, new_chat, title, rename, delete, undo, export, exported, model_line, chatbot,
                    message, send,
                    stop, regenerate, cont, edit_last, delete_last, turn_number, delete_turn, stats, system, preset,
                    apply_preset, preset_name, save_preset, delete_preset, undo_preset, sliders, json_schema)


def _sampling_sliders(p: GenParams) -> list:
    with gr.Row():
        temperature = gr.Slider(0, 2, value=p.temperature, step=0.05, label="Temperature", info="0 = greedy")
        top_p = gr.Slider(0.05, 1, value=p.top_p, step=0.01, label="top_p")
        top_k = gr.Slider(0, 200, value=p.top_k, step=1, label="top_k", info="0 = off")
        min_p = gr.Slider(0, 0.5, value=p.min_p, step=0.01, label="min_p")
    with gr.Row():
        repetition_penalty = gr.Slider(0.8, 2, value=p.repetition_penalty, step=0.01, label="Repetition penalty")
        max_tokens = gr.Slider(1, 4096, value=p.max_tokens, step=1, label="Max new tokens", elem_id="max-tokens")
        seed = gr.Number(-1, precision=0, label="Seed", info="-1 = random", elem_id="seed")
    return [temperature, top_p, top_k, min_p, repetition_penalty, max_tokens, seed]


def _reply_stream(chat: ChatService, action: str, session: str, cid, system_prompt: str, text: str, values):
    """Run send/regenerate/continue; stream (chatbot, box, stats, id, list) updates.

    `session` (the browser tab's Gradio session) is what this tab's Stop button stops.
    """
    conv = chat.open_or_new(cid, system_prompt)
    params = params_from(*values)
    if action == "send":
        chunks = chat.send(conv, text, params, session)
    elif action == "regenerate":
        chunks = chat.regenerate(conv, params, session)
    else:
        chunks = chat.continue_reply(conv, params, session)
    first = next(chunks)  # errors (no model, empty message) surface before the box is cleared
    line = format_stats(first.stats, first.context) if first.stats else ""
    # The list only changes when this message started a new conversation: do not reread every file.
    listing = gr.update(choices=conversation_choices(chat), value=conv.id) if cid != conv.id else gr.skip()
    yield conv.messages, "", line, conv.id, listing
    try:
        for chunk in chunks:
            if chunk.stats:
                line = format_stats(chunk.stats, chunk.context)
            yield conv.messages, gr.skip(), line, gr.skip(), gr.skip()
    except WorkbenchError as e:  # mid-reply: keep what came, say why it ended
        yield conv.messages, gr.skip(), f"**Error:** {e}", gr.skip(), gr.skip()


def model_line(chat: ChatService) -> str:
    """Which model replies here: its name, engine and context, or how to get one."""
    loaded = chat.models.loaded()
    if loaded is None:
        return "**No model is loaded**: pick one in the Model tab and press Load."
    adapter = ""
    if loaded.options.adapter:  # a training run's adapter/ folder: named by its run
        folder = os.path.normpath(loaded.options.adapter)
        run = os.path.basename(os.path.dirname(folder)) if os.path.basename(folder) == "adapter" else folder
        adapter = f" with adapter **{os.path.basename(run)}**"
    return f"Talking to **{loaded.name}**{adapter} · {loaded.backend} · context {loaded.n_ctx:,}"


def build_chat_tab(chat: ChatService, presets: GenerationPresetStore, export_folder: str, page: gr.Blocks) -> None:
    """The tab. The conversation and preset lists fill in on `page` load: the page shell is served
    before login, so it must hold no titles or names from the disk."""
    balanced = presets.get("Balanced").gen_params() if "Balanced" in presets.names() else GenParams()
    with gr.Tab("Chat") as tab:
        v = _layout(balanced)
    os.makedirs(export_folder, exist_ok=True)

    @shows_errors
    def on_send(request: gr.Request, text, cid, system_prompt, *values):
        yield from _reply_stream(chat, "send", request.session_hash, cid, system_prompt, text, values)

    @shows_errors
    def on_regenerate(request: gr.Request, cid, system_prompt, *values):
        yield from _reply_stream(chat, "regenerate", request.session_hash, cid, system_prompt, "", values)

    @shows_errors
    def on_continue(request: gr.Request, cid, system_prompt, *values):
        yield from _reply_stream(chat, "continue", request.session_hash, cid, system_prompt, "", values)

    def on_stop(request: gr.Request):
        chat.stop(request.session_hash)

    @shows_errors
    def on_edit_last(cid):
        conv, text = chat.delete_last_turn(cid)
        return conv.messages, text

    def listing(value=None):
        return gr.update(choices=conversation_choices(chat), value=value)

    @shows_errors
    def on_open(cid):
        if not cid:
            return [], None, "", gr.skip()
        conv = chat.conversations.get(cid)
        return conv.messages, conv.id, "", conv.system_prompt or DEFAULT_SYSTEM_PROMPT

    @shows_errors
    def on_rename(cid, new_title):
        if cid:
            chat.conversations.rename(cid, new_title)
        return listing(cid), ""

    @shows_errors
    def on_delete(cid):
        if cid:
            title = chat.conversations.get(cid).title
            chat.conversations.delete(cid)
            gr.Info(f"Deleted “{title}”; Undo delete brings it back.")
        return [], None, listing()

    @shows_errors
    def on_undo():
        conv = chat.conversations.undo_delete()
        gr.Info(f"“{conv.title}” is back as it was.")
        return conv.messages, conv.id, listing(conv.id), conv.system_prompt or DEFAULT_SYSTEM_PROMPT

    def turn_deleted(conv, text):
        gr.Info(f"Deleted the turn “{text[:40]}”; Undo delete brings it back.")
        return conv.messages

    @shows_errors
    def on_export(cid):
        return chat.conversations.export_markdown(chat.require_open(cid).id, export_folder)

    @shows_errors
    def on_save_preset(name, *values):
        presets.save(name, params_from(*values), "Saved from the Chat tab.")
        return gr.update(choices=presets.names(), value=name)

    @shows_errors
    def on_delete_preset(name):
        presets.delete(name)
        gr.Info(f"Deleted preset {name}; Undo delete brings it back.")
        return gr.update(choices=presets.names(), value=None)

    @shows_errors
    def on_undo_preset():
        return gr.update(choices=presets.names(), value=presets.undo_delete())

    outputs = [v.chatbot, v.message, v.stats, v.conv_id, v.conversations]
    with_text = [v.message, v.conv_id, v.system, *v.sliders, v.json_schema]  # new inputs go last (API order)
    without_text = [v.conv_id, v.system, *v.sliders, v.json_schema]
    # Replies from every browser tab (and API client) wait their turn at the model worker, in arrival
    # order; Gradio's queue (which shows a position) only holds those beyond WAITING_REPLIES.
    # Gradio's own "processing 0.5/9.8 s" estimate is wrong for replies of any length and covered the
    # conversation list: the reply streams into the chatbot, which shows only a small timer.
    line = dict(concurrency_id="chat-reply", concurrency_limit=WAITING_REPLIES, show_progress="minimal",
                show_progress_on=v.chatbot)
    for event in (v.send.click(on_send, with_text, outputs, api_name="chat", **line),
                  v.message.submit(on_send, with_text, outputs, api_visibility="private", **line)):
        event.then(lambda: model_line(chat), None, v.model_line, api_visibility="private", show_progress="hidden")
    tab.select(lambda: model_line(chat), None, v.model_line, api_visibility="private", show_progress="hidden")

    def on_send_while_replying(request: gr.Request):
        # Gradio ignores a second Send while the first reply runs; say why instead of doing nothing.
        if chat.replying(request.session_hash):
            gr.Warning("A reply is still being written; wait for it or press Stop, then send your message.")

    for trigger in (v.send.click, v.message.submit):
        trigger(on_send_while_replying, None, None, trigger_mode="multiple", show_progress="hidden",
                concurrency_limit=None, api_visibility="private")  # queued: warnings travel with queued events
    v.regenerate.click(on_regenerate, without_text, outputs, api_name="regenerate", **line)
    v.cont.click(on_continue, without_text, outputs, api_name="continue", **line)
    v.stop.click(on_stop, None, None, api_name="stop", queue=False)
    v.edit_last.click(on_edit_last, v.conv_id, [v.chatbot, v.message], api_name="edit_last")
    v.delete_last.click(shows_errors(lambda cid: turn_deleted(*chat.delete_last_turn(cid))), v.conv_id, v.chatbot,
                        api_name="delete_last")
    v.delete_turn.click(shows_errors(lambda cid, n: turn_deleted(*chat.delete_turn(cid, n))),
                        [v.conv_id, v.turn_number], v.chatbot, api_name="delete_turn")
    v.undo.click(on_undo, None, [v.chatbot, v.conv_id, v.conversations, v.system], api_name="undo_delete")
    v.conversations.input(on_open, v.conversations, [v.chatbot, v.conv_id, v.stats, v.system],
                          api_name="open_conversation")
    v.new_chat.click(lambda: ([], None, "", listing()), None, [v.chatbot, v.conv_id, v.stats, v.conversations],
                     api_name="new_chat")
    # The chatbot's own trash icon empties the view: start a new conversation too, so the next message
    # is not sent with the old history (which stays saved in the list).
    v.chatbot.clear(lambda: (None, "", listing()), None, [v.conv_id, v.stats, v.conversations],
                    api_visibility="private")
    page.load(lambda: (listing(), gr.update(choices=presets.names()), model_line(chat)), None,
              [v.conversations, v.preset, v.model_line], api_visibility="private")
    v.rename.click(on_rename, [v.conv_id, v.title], [v.conversations, v.title], api_name="rename_conversation")
    v.delete.click(on_delete, v.conv_id, [v.chatbot, v.conv_id, v.conversations], api_name="delete_conversation")
    v.export.click(on_export, v.conv_id, v.exported, api_name="export_conversation")
    v.apply_preset.click(shows_errors(lambda name: sliders_from(presets.get(name).gen_params())), v.preset,
                         v.sliders, api_name="apply_preset")
    v.save_preset.click(on_save_preset, [v.preset_name, *v.sliders], v.preset, api_name="save_preset")
    v.delete_preset.click(on_delete_preset, v.preset, v.preset, api_name="delete_preset")
    v.undo_preset.click(on_undo_preset, None, v.preset, api_name="undo_delete_preset")
