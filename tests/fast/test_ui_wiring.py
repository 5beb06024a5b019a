"""The launched app's tabs wired to the services, with the fake backend and the fake training runner.

One app for the module (`webui.py` in a subprocess, a scratch root), driven with gradio_client as
any API user would; the real-model UI tests in tests/ui and the browser tests in tests/e2e remain
the proof with a real engine.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from gradio_client import Client

from tests.ui.test_webui import App, reply_text

from .fakes import scratch, write_fake_model

CHAT_ARGS = ("You are a helpful assistant.", 0, 0.95, 40, 0.05, 1.0, 24, -1)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("ui"))
    write_fake_model(root / "models", reply="Echo: {last_user}")
    write_fake_model(root / "models", "other.json", reply="The other model.")
    (root / "datasets" / "notes.txt").write_text("The lighthouse keeper lit the lamp every night. " * 40)
    app = App("--model", "fake.json", root=str(root),
              env={"WORKBENCH_BACKENDS": "workbench.backends.fake_backend:SPEC",
                   "WORKBENCH_TRAINING_RUNNER": "workbench.training.fake_runner", "WORKBENCH_FAKE_STEP_S": "0.02"})
    yield Client(app.url, verbose=False)
    app.stop()


@pytest.mark.slow  # an app of its own: six seconds
def test_ctrl_c_ends_the_app_while_a_tab_holds_its_stream_open(tmp_path):
    """A browser tab keeps a stream open (its heartbeat). uvicorn waits for open connections without
    limit and Gradio gave up on it after 5 s, so with one tab open Ctrl+C took 5.6 s; open streams
    now get one second."""
    root = scratch(tmp_path)
    write_fake_model(root / "models", reply="Echo: {last_user}")
    app = App("--model", "fake.json", root=str(root), env={"WORKBENCH_BACKENDS": "workbench.backends.fake_backend:SPEC"})
    try:
        deadline = time.time() + 30  # launch() is done once it has printed its last line
        while not any("To create a public link" in line for line in app.output) and time.time() < deadline:
            time.sleep(0.05)
        with httpx.stream("GET", app.url + "gradio_api/heartbeat/a-tab", timeout=30) as tab:
            assert tab.status_code == 200
            app.proc.send_signal(signal.SIGINT)
            assert app.proc.wait(4) == 0
    finally:
        app.stop()


def test_chat_replies_and_saves_through_the_tab(client):
    chatbot, box, stats, *_ = client.predict("hello tab", *CHAT_ARGS, api_name="/chat")
    assert reply_text(chatbot) == "Echo: hello tab" and "tok/s" in stats


def test_the_chat_json_schema_box_is_checked_and_passed_on(client):
    chatbot, *_ = client.predict("json please", *CHAT_ARGS, '{"type": "object"}', api_name="/chat")
    assert reply_text(chatbot) == "Echo: json please"  # the fake does not constrain; the schema went through
    with pytest.raises(Exception, match="JSON schema box does not hold valid JSON"):
        client.predict("x", *CHAT_ARGS, "{oops", api_name="/chat")
    with pytest.raises(Exception, match="not a valid JSON Schema"):
        client.predict("x", *CHAT_ARGS, '{"type": "strin"}', api_name="/chat")


def test_turn_numbers_are_checked_and_turns_deleted(client):
    client.predict(api_name="/new_chat")
    client.predict("first", *CHAT_ARGS, api_name="/chat")
    with pytest.raises(Exception, match="Type the number of the turn"):
        client.predict(None, api_name="/delete_turn")


def test_the_model_list_and_the_plan(client):
    _, table = client.predict(api_name="/list_models")
    rows = {row[0]: row for row in table["data"]}
    assert rows["fake.json"][2] == "fake" and rows["other.json"][2] == "fake"
    chart, text = client.predict("other.json", "auto", 0, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0,
                                 api_name="/plan")
    assert "fake, context 2048" in text and "fits" in text


def test_loading_a_model_says_auto_context(client):
    status = client.predict("other.json", "auto", 0, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0,
                            api_name="/load_model")
    assert "`other.json`" in status and "context 2048 (auto" in status
    with pytest.raises(Exception, match="Threads must be between"):
        client.predict("other.json", "auto", 0, -2, 512, 1_000_000, "f16", True, True, False, "auto", "auto", 0, 0,
                       api_name="/load_model")


def test_a_training_run_starts_and_completes_with_the_fake_runner(client):
    form = ["t1", "scratch", "", "notes.txt", "", 0.1, 8, 16, 0.05, "q_proj", "byte", 2, 2, 32, "", 1e-3, "constant",
            0, 1, 12, 2, 1, 32, 4, 4, 50, 0, 42]
    runs, estimate, status, plot, log = client.predict(*form, api_name="/start_training")
    assert runs["value"] == "t1" and "Memory estimate" in estimate
    for _ in range(100):
        status, plot, log = client.predict("t1", api_name="/run_status")
        if "completed" in status:
            break
    assert "**completed**" in status and "step 12 of 12" in status
    assert any(series == "validation" and loss is not None for _, loss, series in plot["data"])


def test_compare_refuses_an_empty_prompt(client):
    for empty in ("", "   \n"):
        with pytest.raises(Exception, match="The message is empty"):
            client.predict(empty, 0, 8, api_name="/compare")


def test_a_deleted_conversation_comes_back_with_undo(client):
    client.predict(api_name="/new_chat")
    client.predict("keep me", *CHAT_ARGS, api_name="/chat")
    chatbot, listing = client.predict(api_name="/delete_conversation")
    assert chatbot == []
    chatbot, listing, system = client.predict(api_name="/undo_delete")
    assert chatbot[0]["content"] in ("keep me", [{"type": "text", "text": "keep me"}]) and listing["value"]


def test_a_deleted_run_comes_back_with_undo(client):
    form = ["t2", "scratch", "", "notes.txt", "", 0.1, 8, 16, 0.05, "q_proj", "byte", 2, 2, 32, "", 1e-3, "constant",
            0, 1, 2, 2, 1, 32, 4, 4, 50, 0, 42]
    client.predict(*form, api_name="/start_training")
    for _ in range(100):
        status, _, _ = client.predict("t2", api_name="/run_status")
        if "completed" in status:
            break
    runs, *_ = client.predict("t2", api_name="/delete_run")
    assert "t2" not in [c[0] for c in runs["choices"]]
    runs, *_ = client.predict(api_name="/undo_delete_run")
    assert runs["value"] == "t2"


def test_a_remote_server_is_added_from_the_model_tab(client):
    from .fake_openai_server import KEY, MODEL, FakeOpenAI

    with FakeOpenAI() as server:
        picked, table, key_box = client.predict("srv", server.base_url, MODEL, KEY, api_name="/add_remote")
    rows = {row[0]: row for row in table["data"]}
    assert picked["value"] == "srv.remote.json" and rows["srv.remote.json"][1:3] == ["remote", "remote"] and key_box == ""
    with pytest.raises(Exception, match="http:// or https://"):
        client.predict("bad", "ftp://host/v1", MODEL, "", api_name="/add_remote")
