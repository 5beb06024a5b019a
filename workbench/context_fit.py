"""Fitting a chat into the model's context: which of the oldest turns to leave out of the prompt.

Owns the rule: the system prompt always stays; the oldest user turn goes first, with the
assistant reply that answered it; the newest message is never dropped; the prompt must
leave room for min(max_tokens, REPLY_ROOM) reply tokens. It runs in the model worker,
beside the tokenizer, so a chat reply costs one trip to the worker, not a count and then a
generation, each waiting behind other users' replies. It does not touch the saved
conversation (ChatService keeps every turn).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from .errors import WorkbenchError
from .options import GenerationRequest

REPLY_ROOM = 256  # tokens kept free for the reply when max_tokens is larger


def fit_to_context(request: GenerationRequest, count_tokens: Callable[[GenerationRequest], int],
                   n_ctx: int) -> tuple[GenerationRequest, int]:
    """(the request with the oldest turns dropped until prompt + reply room fit `n_ctx`, how many were dropped)."""
    messages = list(request.messages or [])
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(head):]
    room = min(request.params.max_tokens, REPLY_ROOM)
    dropped = 0
    while True:
        fitted = replace(request, messages=head + turns)
        used = count_tokens(fitted)
        if used + room <= n_ctx or len(turns) <= 1:
            break
        cut = 2 if len(turns) > 2 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        turns, dropped = turns[cut:], dropped + cut
    if used >= n_ctx:
        raise WorkbenchError(
            f"The last message alone takes {used} tokens but the context holds {n_ctx}; shorten it or load "
            "the model with a larger context."
        )
    return fitted, dropped
