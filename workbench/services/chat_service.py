"""ChatService: turns a conversation plus a new user message into a streamed reply.

Owns how a conversation becomes a generation request (system prompt first, then the
turns) and the per-reply numbers users see (tokens, tokens/s, time to first token).
It does not own the model (ModelService) or the screen (ui/chat_tab.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..errors import WorkbenchError
from ..options import GenerationRequest, GenParams
from .model_service import ModelService

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
# A single message larger than this is refused before it reaches the engine.
MAX_MESSAGE_CHARS = 200_000


@dataclass
class ReplyChunk:
    text: str                  # the reply so far
    stats: dict | None = None  # set on the last chunk: tokens, tokens_per_s, ttft_s, finish_reason


def build_messages(history: list[dict], user_text: str, system_prompt: str) -> list[dict]:
    """System prompt (if any), the earlier turns, then the new user message."""
    if not user_text.strip():
        raise WorkbenchError("The message is empty; type something first.")
    if len(user_text) > MAX_MESSAGE_CHARS:
        raise WorkbenchError(
            f"The message has {len(user_text):,} characters; the limit is {MAX_MESSAGE_CHARS:,}. Shorten it."
        )
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    messages += [{"role": m["role"], "content": m["content"]} for m in history if m.get("role") in ("user", "assistant")]
    messages.append({"role": "user", "content": user_text})
    return messages


class ChatService:
    def __init__(self, models: ModelService):
        self.models = models

    def stream_reply(
        self, history: list[dict], user_text: str, system_prompt: str, params: GenParams
    ) -> Iterator[ReplyChunk]:
        """Yield the growing reply; the last chunk carries the stats."""
        request = GenerationRequest(messages=build_messages(history, user_text, system_prompt), params=params)
        text = ""
        for kind, value in self.models.generate(request):
            if kind == "token":
                text += value
                yield ReplyChunk(text)
            else:
                yield ReplyChunk(text, value)

    def stop(self) -> None:
        self.models.cancel()


def format_stats(stats: dict) -> str:
    """One line under a reply: tokens, speed, first-token latency, why it ended."""
    reason = {"stop": "finished", "length": "hit the token limit", "cancelled": "stopped"}.get(
        stats.get("finish_reason"), stats.get("finish_reason", ""))
    return (f"{stats.get('completion_tokens', 0)} tokens · {stats.get('tokens_per_s', 0):.1f} tok/s · "
            f"first token {stats.get('ttft_s', 0) * 1000:.0f} ms · prompt {stats.get('prompt_tokens', 0)} tokens"
            f" ({stats.get('cached_tokens', 0)} reused) · {reason}")
