"""ChatService on the real sample model: saving, regenerate, continue, context overflow, cache reuse."""

from __future__ import annotations

import pytest

from workbench.errors import NoModelLoaded, WorkbenchError
from workbench.options import GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.chat_service import ChatService, format_stats
from workbench.services.conversations import ConversationStore
from workbench.services.model_service import ModelService

GREEDY = GenParams(temperature=0, max_tokens=24)


@pytest.fixture(scope="module")
def chat(sample_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    models = ModelService(Paths(str(root)))
    models.load(sample_gguf, options=LoadOptions(n_ctx=512))
    yield ChatService(models, ConversationStore(str(root / "chats")))
    models.close()


def last(chunks):
    *_, final = list(chunks)
    return final


def test_reply_is_saved_with_the_question_and_the_cache_is_reused(chat):
    conv = chat.conversations.new("You are a helpful assistant.")
    first = last(chat.send(conv, "What is the capital of France?", GREEDY))
    assert "Paris" in first.text and first.stats.finish_reason == "stop"
    saved = chat.conversations.get(conv.id)
    assert [m["role"] for m in saved.messages] == ["user", "assistant"] and "Paris" in saved.messages[1]["content"]
    second = last(chat.send(conv, "And what is the capital of Germany?", GREEDY))
    assert "Berlin" in second.text
    assert second.stats.cached_tokens >= first.stats.prompt_tokens  # turn 1 was not computed again
    assert len(chat.conversations.get(conv.id).messages) == 4


def test_regenerate_replaces_and_continue_extends(chat):
    conv = chat.conversations.new("You are a helpful assistant.")
    short = last(chat.send(conv, "Write a long story about a cat.", GenParams(temperature=0, max_tokens=6)))
    assert short.stats.finish_reason == "length"
    longer = last(chat.continue_reply(conv, GenParams(temperature=0, max_tokens=6)))
    assert longer.text.startswith(short.text) and len(longer.text) > len(short.text)
    again = last(chat.regenerate(conv, GenParams(temperature=0, max_tokens=6)))
    assert again.text == short.text  # greedy: the same first reply again
    assert len(chat.conversations.get(conv.id).messages) == 2


def test_overflowing_conversation_drops_oldest_turns_keeps_system_prompt(chat):
    conv = chat.conversations.new("You are a helpful assistant.")
    for i in range(6):
        conv.messages += [{"role": "user", "content": f"Remember fact {i}: " + "blue " * 40},
                          {"role": "assistant", "content": "Noted. " * 20}]
    chat.conversations.save(conv)
    final = last(chat.send(conv, "What color?", GenParams(temperature=0, max_tokens=16)))
    assert final.stats.dropped_messages >= 2 and final.stats.prompt_tokens + 16 <= 512
    assert "outgrew the context" in format_stats(final.stats, final.context)
    assert len(chat.conversations.get(conv.id).messages) == 14  # nothing dropped from the saved chat


def test_a_message_larger_than_the_context_is_refused_and_no_empty_reply_is_saved(chat):
    conv = chat.conversations.new("You are a helpful assistant.")
    with pytest.raises(WorkbenchError, match=r"The last message alone takes \d+ tokens but the context holds 512"):
        last(chat.send(conv, "blue " * 800, GREEDY))
    saved = chat.conversations.get(conv.id)
    assert [m["role"] for m in saved.messages] == ["user"]  # the question is kept, to shorten and resend
    assert "Paris" in last(chat.send(conv, "What is the capital of France?", GREEDY)).text  # the model still serves


def test_no_model_is_reported_before_anything_is_saved(tmp_path):
    chat = ChatService(ModelService(Paths(str(tmp_path))), ConversationStore(str(tmp_path / "chats")))
    conv = chat.conversations.new()
    with pytest.raises(NoModelLoaded):
        last(chat.send(conv, "Hello", GREEDY))
    assert chat.conversations.list() == ([], [])


def test_stop_ends_only_the_reply_of_the_session_that_asked(chat):
    """Two browser tabs share one model: Stop in one must not cut the other's reply."""
    import threading

    long = GenParams(temperature=0, max_tokens=120)
    results = {}

    def talk(session):
        conv = chat.conversations.new("You are a helpful assistant.")
        results[session] = last(chat.send(conv, "Write a long story about a dragon.", long, session))

    first = threading.Thread(target=talk, args=("tab-a",))
    first.start()
    while "tab-a" not in chat._stops:
        threading.Event().wait(0.01)
    second = threading.Thread(target=talk, args=("tab-b",))
    second.start()
    while "tab-b" not in chat._stops:
        threading.Event().wait(0.01)
    chat.stop("tab-b")        # tab b is still waiting for the worker: it ends without running
    chat.stop("tab-unknown")  # a tab with nothing running: nothing happens
    second.join(60)
    first.join(120)
    assert results["tab-b"].stats.finish_reason == "cancelled"
    assert results["tab-a"].stats.finish_reason in ("length", "stop")
    assert results["tab-a"].stats.completion_tokens > 20

    conv = chat.conversations.new("You are a helpful assistant.")
    chunks = chat.send(conv, "Write a long story about a dragon.", long, "tab-a")
    next(chunks)
    chat.stop("tab-a")
    assert last(chunks).stats.finish_reason == "cancelled"
