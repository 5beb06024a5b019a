"""Conversation store: round trip, listing, corrupt files, safe ids, atomic saves under kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT
from workbench.services.conversations import ConversationError, ConversationStore, remove_turn


@pytest.fixture
def store(tmp_path):
    return ConversationStore(str(tmp_path / "chats"))


def test_round_trip_list_rename_delete_export(store, tmp_path):
    a = store.new("Be brief.")
    a.messages += [{"role": "user", "content": "Hi there, who are you?"}, {"role": "assistant", "content": "A model."}]
    store.save(a)
    time.sleep(0.01)
    b = store.new()
    b.messages.append({"role": "user", "content": "Second chat"})
    store.save(b)
    rows, errors = store.list()
    assert [r["id"] for r in rows] == [b.id, a.id] and not errors
    assert rows[1]["title"] == "Hi there, who are you?" and rows[1]["turns"] == 2
    assert store.get(a.id).system_prompt == "Be brief."
    store.rename(a.id, "  Greetings  ")
    assert store.get(a.id).title == "Greetings"
    md = open(store.export_markdown(a.id, str(tmp_path / "exports"))).read()
    assert "# Greetings" in md and "**Assistant:**" in md and "A model." in md
    store.delete(b.id)
    assert [r["id"] for r in store.list()[0]] == [a.id]


def test_corrupt_file_is_reported_and_skipped(store):
    good = store.new()
    good.messages.append({"role": "user", "content": "fine"})
    store.save(good)
    bad = store.new()
    store.save(bad)
    with open(store._path(bad.id), "w") as f:
        f.write('{"id": "x", "messages": [')
    rows, errors = store.list()
    assert [r["id"] for r in rows] == [good.id]
    assert len(errors) == 1 and "damaged" in errors[0]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/tmp/x", "20240101-000000-zzzzzz", "", None])
def test_ids_from_clients_cannot_be_paths(store, bad):
    with pytest.raises(ConversationError):
        store.get(bad)


KILLED_WRITER = """
import sys
sys.path.insert(0, {root!r})
from workbench.services.conversations import ConversationStore
store = ConversationStore({folder!r})
conv = store.get({cid!r})
i = 0
while True:
    i += 1
    conv.messages = [{{"role": "user", "content": "x" * 200000 + str(i)}}]
    store.save(conv)
"""


def test_kill_9_during_saves_never_leaves_a_broken_file(store):
    conv = store.new()
    conv.messages.append({"role": "user", "content": "original"})
    store.save(conv)
    code = KILLED_WRITER.format(root=ROOT, folder=store.folder, cid=conv.id)
    for delay in (0.3, 0.45, 0.6, 0.75):
        proc = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        with open(store._path(conv.id)) as f:
            data = json.load(f)  # always a whole file: the old one or a new one
        assert data["id"] == conv.id and len(data["messages"]) == 1
    leftovers = [f for f in os.listdir(store.folder) if f.startswith(".tmp-")]
    assert all(os.path.getsize(os.path.join(store.folder, f)) >= 0 for f in leftovers)  # temp files never replace
    assert store.list()[0][0]["id"] == conv.id


def test_remove_any_turn(store):
    conv = store.new()
    for i in range(3):
        conv.messages += [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
    assert remove_turn(conv, 2) == "q1"
    assert [m["content"] for m in conv.messages] == ["q0", "a0", "q2", "a2"]
    assert remove_turn(conv, 2) == "q2" and [m["content"] for m in conv.messages] == ["q0", "a0"]
    with pytest.raises(ConversationError, match="no turn 5"):
        remove_turn(conv, 5)


def test_markdown_export_is_named_by_the_title(store, tmp_path):
    out = str(tmp_path / "exports")
    first, second = store.new(), store.new()
    for conv in (first, second):
        conv.messages.append({"role": "user", "content": "Capital of France? / and: <Spain>"})
        store.save(conv)
    a, b = store.export_markdown(first.id, out), store.export_markdown(second.id, out)
    assert os.path.basename(a) == os.path.basename(b) == "Capital of France and Spain.md"
    assert a != b and os.path.isfile(a) and os.path.isfile(b)  # same title: neither overwrites the other


def test_deleting_a_conversation_or_a_turn_can_be_undone(store):
    from workbench.errors import WorkbenchError
    from workbench.services.chat_service import ChatService

    conv = store.new()
    conv.messages += [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
                      {"role": "user", "content": "two"}, {"role": "assistant", "content": "2"}]
    store.save(conv)
    chat = ChatService(models=None, conversations=store)
    chat.delete_turn(conv.id, 1)
    assert [m["content"] for m in store.get(conv.id).messages] == ["two", "2"]
    assert [m["content"] for m in store.undo_delete().messages] == ["one", "1", "two", "2"]
    store.delete(conv.id)
    assert store.list()[0] == []
    back = store.undo_delete()
    assert back.id == conv.id and len(back.messages) == 4 and [r["id"] for r in store.list()[0]] == [conv.id]
    with pytest.raises(WorkbenchError, match="nothing to undo"):
        store.undo_delete()
