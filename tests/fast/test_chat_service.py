"""ChatService rules with the fake backend: what is saved, what is sent, turns, and the context fit."""

from __future__ import annotations

import pytest

from workbench.errors import NoModelLoaded, WorkbenchError
from workbench.options import GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.chat_service import ChatService, format_stats
from workbench.services.conversations import ConversationStore
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch, write_fake_model

GREEDY = GenParams(temperature=0, max_tokens=64)


@pytest.fixture
def chat(tmp_path):
    root = scratch(tmp_path)
    models = ModelService(Paths(str(root)), registry=fake_registry())
    models.load(write_fake_model(root / "models", reply="You said: {last_user}", context_length=96),
                options=LoadOptions(n_ctx=96))
    yield ChatService(models, ConversationStore(str(root / "user_data" / "chats")))
    models.close()


def last(chunks):
    *_, final = chunks
    return final


def test_a_reply_is_saved_with_the_question_and_its_stats(chat):
    conv = chat.open_or_new(None, "Be brief.")
    final = last(chat.send(conv, "hello", GREEDY))
    assert final.text == "You said: hello" and final.stats.finish_reason == "stop" and final.context == 96
    saved = chat.conversations.get(conv.id)
    assert [m["content"] for m in saved.messages] == ["hello", "You said: hello"]
    assert saved.system_prompt == "Be brief."
    assert "tokens" in format_stats(final.stats, final.context)


def test_regenerate_replaces_and_continue_extends_the_last_reply(chat):
    conv = chat.open_or_new(None, "")
    last(chat.send(conv, "one", GREEDY))
    last(chat.regenerate(conv, GREEDY))
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]
    longer = last(chat.continue_reply(conv, GREEDY))
    assert longer.text.startswith("You said: one") and len(longer.text) > len("You said: one")


def test_old_turns_leave_the_prompt_but_stay_saved(chat):
    conv = chat.open_or_new(None, "")
    for i in range(8):
        final = last(chat.send(conv, f"message number {i} with several words in it", GenParams(max_tokens=8)))
    assert final.stats.dropped_messages >= 2
    assert "outgrew the context" in format_stats(final.stats, final.context)
    assert sum(m["role"] == "user" for m in chat.conversations.get(conv.id).messages) == 8


def test_turns_are_deleted_by_number_and_an_empty_number_is_refused(chat):
    conv = chat.open_or_new(None, "")
    for text in ("first", "second", "third"):
        last(chat.send(conv, text, GREEDY))
    with pytest.raises(WorkbenchError, match="Type the number of the turn"):
        chat.delete_turn(conv.id, None)
    with pytest.raises(WorkbenchError, match="There is no turn 9"):
        chat.delete_turn(conv.id, 9)
    kept, text = chat.delete_turn(conv.id, 2)
    assert text == "second" and [m["content"] for m in kept.messages if m["role"] == "user"] == ["first", "third"]
    edited, text = chat.delete_last_turn(conv.id)
    assert text == "third" and [m["content"] for m in chat.conversations.get(conv.id).messages] == [
        "first", "You said: first"]
    with pytest.raises(WorkbenchError, match="No conversation is open"):
        chat.delete_last_turn(None)


def test_empty_messages_and_no_model_are_refused_before_anything_is_saved(chat):
    conv = chat.open_or_new(None, "")
    with pytest.raises(WorkbenchError, match="empty"):
        next(chat.send(conv, "   ", GREEDY))
    chat.models.unload()
    with pytest.raises(NoModelLoaded):
        next(chat.send(conv, "hello", GREEDY))
    assert chat.conversations.list()[0] == []


def test_a_missing_system_prompt_is_none_and_a_huge_one_is_refused(chat):
    from workbench.services.chat_service import MAX_SYSTEM_PROMPT_CHARS

    conv = chat.open_or_new(None, None)  # gradio_client may send null
    assert conv.system_prompt == ""
    with pytest.raises(WorkbenchError, match="system prompt has .* the limit is"):
        chat.open_or_new(None, "x" * (MAX_SYSTEM_PROMPT_CHARS + 1))
    with pytest.raises(WorkbenchError, match="must be text"):
        chat.open_or_new(None, 5)
