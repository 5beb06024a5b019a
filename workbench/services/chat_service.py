"""ChatService: a conversation plus a new message (or regenerate / continue) -> a streamed reply.

Owns how a conversation becomes a generation request (system prompt first, then the
turns, asking the worker to leave out the oldest turns that do not fit: context_fit.py
holds that rule, and the reply's stats say how many), saving the conversation before and
after each reply, and the per-reply numbers users see. It does not own the model
(ModelService), the files (ConversationStore) or the screen (ui/chat_tab.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

from ..errors import WorkbenchError
from ..model_values import GenerationStats
from ..options import GenerationRequest, GenParams
from .conversations import Conversation, ConversationStore, remove_turn
from .model_service import ModelService

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# A single message larger than this is refused before it reaches the engine.
MAX_MESSAGE_CHARS = 200_000
# The system prompt is saved with the conversation and sent with every reply.
MAX_SYSTEM_PROMPT_CHARS = 50_000


@dataclass(frozen=True)
class ReplyChunk:
    text: str                               # the reply so far
    stats: GenerationStats | None = None    # set on the last chunk
    context: int = 0                        # the model's context size (set with stats)


def check_message(text: str) -> None:
    if not text or not text.strip():
        raise WorkbenchError("The message is empty; type something first.")
    if len(text) > MAX_MESSAGE_CHARS:
        raise WorkbenchError(f"The message has {len(text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}. Shorten it.")


def check_system_prompt(text) -> str:
    """The system prompt as text: empty for none, refused when it is not text or too long."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise WorkbenchError("The system prompt must be text.")
    if len(text) > MAX_SYSTEM_PROMPT_CHARS:
        raise WorkbenchError(f"The system prompt has {len(text):,} characters; the limit is "
                             f"{MAX_SYSTEM_PROMPT_CHARS:,}. Shorten it.")
    return text


def with_system(system_prompt: str, turns: list[dict]) -> list[dict]:
    head = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return head + [{"role": m["role"], "content": m["content"]} for m in turns]


class ChatService:
    def __init__(self, models: ModelService, conversations: ConversationStore):
        self.models = models
        self.conversations = conversations
        self._stops: dict[str, threading.Event] = {}  # session -> the stop request of its running reply

    # --- replies ------------------------------------------------------------------------
    def send(self, conv: Conversation, text: str, params: GenParams, session: str | None = None) -> Iterator[ReplyChunk]:
        """Add the user's message, save, stream the reply, save again; `stop(session)` ends it."""
        check_message(text)
        self.models.context_size()  # no model loaded: say so before anything is saved
        conv.messages.append({"role": "user", "content": text})
        conv.model = self.models.loaded_name()
        self.conversations.save(conv)
        yield from self._reply(conv, params, False, session)

    def regenerate(self, conv: Conversation, params: GenParams, session: str | None = None) -> Iterator[ReplyChunk]:
        """Replace the last reply with a new one."""
        if conv.messages and conv.messages[-1]["role"] == "assistant":
            conv.messages.pop()
        if not conv.messages:
            raise WorkbenchError("There is nothing to regenerate yet; send a message first.")
        yield from self._reply(conv, params, False, session)

    def continue_reply(self, conv: Conversation, params: GenParams, session: str | None = None) -> Iterator[ReplyChunk]:
        """Make the last reply longer."""
        if not conv.messages or conv.messages[-1]["role"] != "assistant":
            raise WorkbenchError("There is no reply to continue; send a message first.")
        yield from self._reply(conv, params, True, session)

    def _reply(self, conv: Conversation, params: GenParams, continue_last: bool,
               session: str | None) -> Iterator[ReplyChunk]:
        # The worker leaves out the oldest turns that do not fit the context (context_fit.py).
        request = GenerationRequest(messages=with_system(conv.system_prompt, conv.messages), params=params,
                                    continue_last=continue_last, fit_context=True)
        start = conv.messages[-1]["content"] if continue_last else ""
        if not continue_last:
            conv.messages.append({"role": "assistant", "content": ""})
        text = start
        stop = threading.Event()
        if session is not None:
            self._stops[session] = stop
        try:
            for kind, value in self.models.generate(request, stop):
                if kind == "token":
                    text += value
                    conv.messages[-1]["content"] = text
                    yield ReplyChunk(text)
                else:
                    yield ReplyChunk(text, value, self.models.context_size())
        finally:
            if session is not None and self._stops.get(session) is stop:
                del self._stops[session]
            if not continue_last and not conv.messages[-1]["content"]:
                conv.messages.pop()  # nothing came (an error, or Stop before the first token): no empty reply
            self.conversations.save(conv)  # whatever came, even after Stop or an error

    def open_or_new(self, conv_id: str | None, system_prompt: str) -> Conversation:
        """The open conversation (a new one when `conv_id` is empty) with the system prompt from the screen."""
        system_prompt = check_system_prompt(system_prompt)
        conv = self.conversations.get(conv_id) if conv_id else self.conversations.new(system_prompt)
        conv.system_prompt = system_prompt
        return conv

    def delete_turn(self, conv_id: str | None, turn: int | float | None) -> tuple[Conversation, str]:
        """Remove turn `turn` (1 = the first user message, with its replies) and save; return it and its user text."""
        if turn is None or int(turn) != turn:
            raise WorkbenchError("Type the number of the turn to delete (1 is the first message).")
        conv = self.require_open(conv_id)
        text = remove_turn(conv, int(turn))
        self.conversations.keep_previous(conv.id)  # Undo delete brings the turn back
        self.conversations.save(conv)
        return conv, text

    def delete_last_turn(self, conv_id: str | None) -> tuple[Conversation, str]:
        """Remove the last turn and save; return the conversation and that turn's user text (for editing)."""
        conv = self.require_open(conv_id)
        count = sum(m["role"] == "user" for m in conv.messages)
        if not count:
            raise WorkbenchError("This conversation has no turns to delete.")
        return self.delete_turn(conv_id, count)

    def require_open(self, conv_id: str | None) -> Conversation:
        """The conversation `conv_id`; a clear error when none is open."""
        if not conv_id:
            raise WorkbenchError("No conversation is open.")
        return self.conversations.get(conv_id)

    def replying(self, session: str) -> bool:
        """Whether a reply is being written for `session` (a browser tab) now."""
        return session in self._stops

    def stop(self, session: str) -> None:
        """End the reply being written for `session` (a browser tab), and no one else's."""
        stop = self._stops.get(session)
        if stop is not None:
            stop.set()


def format_stats(stats: GenerationStats, context: int) -> str:
    """One line under a reply: tokens, speed, first-token latency, context use, why it ended."""
    reason = {"stop": "finished", "length": "hit the token limit", "cancelled": "stopped"}.get(
        stats.finish_reason, stats.finish_reason)
    line = (f"{stats.completion_tokens} tokens · {stats.tokens_per_s:.1f} tok/s · "
            f"first token {stats.ttft_s * 1000:.0f} ms · prompt {stats.prompt_tokens} tokens "
            f"({stats.cached_tokens} reused) · context {stats.prompt_tokens + stats.completion_tokens}"
            f"/{context} · {reason}")
    if stats.acceptance is not None:
        line += f" · drafts {stats.acceptance:.0%} accepted ({stats.draft_accepted}/{stats.draft_tokens})"
    if stats.dropped_messages:
        line += (f"  \n**The conversation outgrew the context: the oldest {stats.dropped_messages} messages "
                 "were left out of this reply** (the system prompt stays).")
    return line
