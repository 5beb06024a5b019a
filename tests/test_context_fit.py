"""The rule for leaving the oldest turns of a chat out of the prompt."""

from __future__ import annotations

import pytest

from workbench.context_fit import REPLY_ROOM, fit_to_context
from workbench.errors import WorkbenchError
from workbench.options import GenerationRequest, GenParams


def words(request: GenerationRequest) -> int:
    """A stand-in tokenizer: one token per word."""
    return sum(len(m["content"].split()) for m in request.messages)


def chat(*turns: str, system: str | None = "be brief", max_tokens: int = 10) -> GenerationRequest:
    roles = ["user", "assistant"]
    messages = ([{"role": "system", "content": system}] if system else [])
    messages += [{"role": roles[i % 2], "content": text} for i, text in enumerate(turns)]
    return GenerationRequest(messages=messages, params=GenParams(max_tokens=max_tokens), fit_context=True)


def test_what_fits_is_left_alone():
    request = chat("a b", "c d", "e")
    fitted, dropped = fit_to_context(request, words, n_ctx=100)
    assert dropped == 0 and fitted.messages == request.messages


def test_oldest_exchange_goes_first_and_the_system_prompt_stays():
    request = chat("one " * 20, "two " * 20, "three " * 20, "four " * 20, "five")
    fitted, dropped = fit_to_context(request, words, n_ctx=2 + 20 + 20 + 1 + 10)  # system, 2 turns, last, reply
    assert dropped == 2
    assert fitted.messages[0] == {"role": "system", "content": "be brief"}
    assert [m["content"].split()[0] for m in fitted.messages[1:]] == ["three", "four", "five"]
    assert fitted.params is request.params and fitted.fit_context


def test_the_reply_needs_room_for_at_most_reply_room_tokens():
    request = chat("x " * 10, "y " * 10, "z", max_tokens=10_000)
    _, dropped = fit_to_context(request, words, n_ctx=2 + 21 + REPLY_ROOM)
    assert dropped == 0
    _, dropped = fit_to_context(request, words, n_ctx=2 + 21 + REPLY_ROOM - 1)
    assert dropped == 2


def test_the_newest_message_is_never_dropped_and_too_long_says_so():
    request = chat("old", "reply", "new " * 50, system=None)
    fitted, dropped = fit_to_context(request, words, n_ctx=55)  # the last fits, the reply room does not
    assert dropped == 2 and len(fitted.messages) == 1
    with pytest.raises(WorkbenchError, match="The last message alone takes 50 tokens but the context holds 40"):
        fit_to_context(request, words, n_ctx=40)
