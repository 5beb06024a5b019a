"""Smoke tests of the launched app, driven through gradio_client like any API user.

Each test starts `webui.py` as a real subprocess on a free loopback port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from gradio_client import Client

from tests.conftest import ROOT, SAMPLE_NAME


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    def __init__(self, *args: str, env: dict | None = None, ready: str = "Running on local URL", root: str = ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.proc = subprocess.Popen(
            [sys.executable, "webui.py", "--port", str(self.port), *args], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "WORKBENCH_ROOT": str(root), **(env or {})},
        )
        self.output: list[str] = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError("webui.py exited:\n" + "".join(self.output))
            self.output.append(line)
            if ready in line:
                # Keep reading: an app that logs a lot would otherwise block on a full pipe.
                threading.Thread(target=lambda: self.output.extend(self.proc.stdout), daemon=True).start()
                return
        raise RuntimeError("webui.py did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def app(sample_gguf):
    app = App("--model", SAMPLE_NAME)
    yield app
    app.stop()


CHAT_ARGS = ("You are a helpful assistant.", 0, 0.95, 40, 0.05, 1.0, 24, -1)


def reply_text(chatbot: list[dict]) -> str:
    content = chatbot[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


def test_chat_answers_with_the_loaded_model(app):
    client = Client(app.url, verbose=False)
    chatbot, _, stats, *_ = client.predict("What is the capital of France?", *CHAT_ARGS, api_name="/chat")
    assert "Paris" in reply_text(chatbot)
    assert "tok/s" in stats


@pytest.mark.parametrize("leaves_by", ["cancel", "closing the client"])
def test_a_user_who_leaves_mid_reply_frees_the_model_for_the_next(app, leaves_by):
    """The first user asks for thousands of tokens (minutes here) and leaves once the reply has started."""
    leaving = Client(app.url, verbose=False)
    long_args = (CHAT_ARGS[0], 0.8, *CHAT_ARGS[2:6], 3000, 1)
    job = leaving.submit("Count from 1 to 5000, separated by commas.", *long_args, api_name="/chat")
    deadline = time.time() + 120
    while not any(out and out[0] and reply_text(out[0]) for out in job.outputs()):
        assert time.time() < deadline and not job.done(), "the reply did not start"
        time.sleep(0.1)
    if leaves_by == "cancel":
        job.cancel()
    else:
        leaving.close()
    # A liveness bound, not a speed check: had the first reply kept the model, this would wait minutes.
    patient = Client(app.url, verbose=False, httpx_kwargs={"timeout": 30})
    job = patient.submit("What is the capital of France?", *CHAT_ARGS, api_name="/chat")
    chatbot, *_ = job.result(timeout=30)
    assert "Paris" in reply_text(chatbot)


def test_model_names_from_the_browser_cannot_be_paths(app):
    client = Client(app.url, verbose=False)
    form = (2048, -2, 512, 0, "f16", False, True, False, "auto", "auto", 0, 0)
    for bad in ("../webui.py", "/etc/passwd", "nonexistent.gguf"):
        with pytest.raises(Exception, match="names inside models|no model|not in the list of choices"):
            client.predict(bad, "auto", *form, api_name="/load_model")


def test_unload_then_chat_says_no_model_then_reload(app):
    client = Client(app.url, verbose=False)
    status = client.predict(api_name="/unload_model")
    assert "No model loaded" in status
    with pytest.raises(Exception, match="No model is loaded"):
        client.predict("Hello", *CHAT_ARGS, api_name="/chat")
    form = (2048, -2, 512, 0, "f16", False, True, False, "auto", "auto", 0, 0)
    status = client.predict(SAMPLE_NAME, "auto", *form, api_name="/load_model")
    assert "llama.cpp" in status
    chatbot, *_ = client.predict("What is the capital of France?", *CHAT_ARGS, api_name="/chat")
    assert "Paris" in reply_text(chatbot)


def test_listen_without_auth_makes_a_password_and_requires_it(sample_gguf):
    app = App("--listen")
    try:
        printed = "".join(app.output)
        match = re.search(r"user 'workbench', password '([^']+)'", printed)
        assert match, printed
        with pytest.raises(Exception):
            Client(app.url, verbose=False)
        client = Client(app.url, auth=("workbench", match.group(1)), verbose=False)
        assert "No model loaded" in client.predict(api_name="/unload_model")
    finally:
        app.stop()


def test_share_without_network_says_so_and_keeps_serving(sample_gguf):
    # A closed loopback port stands in for the unreachable share server.
    closed = free_port()
    app = App("--share", "--auth", "me:secret", env={"WORKBENCH_SHARE_SERVER": f"127.0.0.1:{closed}"})
    try:
        notes = [line for line in app.output if "--share" in line]
        assert len(notes) == 1 and "serving locally only" in notes[0]
        client = Client(app.url, auth=("me", "secret"), verbose=False)
        assert "No model loaded" in client.predict(api_name="/unload_model")
    finally:
        app.stop()


def test_model_tab_plan_follows_the_options(app):
    client = Client(app.url, verbose=False)

    def plan(n_ctx, max_ram):
        chart, text = client.predict(SAMPLE_NAME, "auto", n_ctx, -2, 512, 0, "f16", False, True, False, "auto",
                                     "auto", max_ram, 0, api_name="/plan")
        kv = next(row[2] for row in chart["data"] if row[:2] == ["cpu", "KV cache"])
        return kv, text

    kv_small, text_small = plan(1024, 0)
    kv_big, text_big = plan(8192, 0)
    assert kv_big == pytest.approx(8 * kv_small, rel=0.01)
    assert "fits" in text_small
    _, refused = plan(8192, 0.3)
    assert "DOES NOT FIT" in refused


def test_profiles_apply_and_save_through_the_ui(app, tmp_path):
    client = Client(app.url, verbose=False)
    form = client.predict("cpu-8gb", api_name="/apply_profile")
    assert form[0] == 4096 and form[10] == 6
    name = f"ui-test-{os.getpid()}"
    try:
        client.predict(name, 2048, -2, 256, 0, "f16", False, True, False, "auto", "cpu", 3, 0, api_name="/save_profile")
        saved = client.predict(name, api_name="/apply_profile")
        assert (saved[0], saved[2], saved[9], saved[10]) == (2048, 256, "cpu", 3)
        with pytest.raises(Exception, match="shipped"):
            client.predict("cpu-8gb", api_name="/delete_profile")
    finally:
        client.predict(name, api_name="/delete_profile")
    assert not os.path.exists(os.path.join(ROOT, "presets", "hardware", f"{name}.yaml"))


def scratch_root(tmp_path, sample_gguf):
    """A workbench root of its own: the sample model linked in, the shipped presets copied."""
    import shutil

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / SAMPLE_NAME).symlink_to(sample_gguf)
    shutil.copytree(os.path.join(ROOT, "presets"), tmp_path / "presets",
                    ignore=shutil.ignore_patterns("this-machine.yaml"))
    return tmp_path


def test_conversation_flow_and_it_survives_a_restart(sample_gguf, tmp_path):
    root = scratch_root(tmp_path, sample_gguf)
    app = App("--model", SAMPLE_NAME, root=root)
    try:
        client = Client(app.url, verbose=False)
        client.predict("What is the capital of France?", *CHAT_ARGS, api_name="/chat")
        chatbot, _, stats, _ = client.predict("And the capital of Germany?", *CHAT_ARGS, api_name="/chat")
        assert len(chatbot) == 4 and "Berlin" in reply_text(chatbot)
        assert "reused" in stats
        chatbot, _, _, _ = client.predict(*CHAT_ARGS, api_name="/regenerate")
        assert len(chatbot) == 4 and "Berlin" in reply_text(chatbot)
        client.predict("And of Italy?", *CHAT_ARGS, api_name="/chat")
        chatbot = client.predict(2, api_name="/delete_turn")  # the Germany turn, from the middle
        assert [reply_text([m]) for m in chatbot if m["role"] == "user"] == ["What is the capital of France?",
                                                                              "And of Italy?"]
        chatbot, text = client.predict(api_name="/edit_last")
        assert len(chatbot) == 2 and text == "And of Italy?"
        client.predict("Quick title", api_name="/rename_conversation")
        exported = client.predict(api_name="/export_conversation")
        assert "# Quick title" in open(exported).read()
    finally:
        app.stop()
    chats = list((root / "user_data" / "chats").glob("*.json"))
    assert len(chats) == 1
    app = App(root=root)  # restarted, no model loaded
    try:
        client = Client(app.url, verbose=False)
        chatbot, _, system = client.predict(chats[0].stem, api_name="/open_conversation")
        assert len(chatbot) == 2 and "Paris" in reply_text(chatbot)
        assert system == "You are a helpful assistant."
    finally:
        app.stop()


def test_side_by_side_answers_from_two_workers(sample_gguf, sample_transformers, tmp_path):
    root = scratch_root(tmp_path, sample_gguf)
    (root / "models" / "smol-transformers").symlink_to(sample_transformers)
    app = App("--model", SAMPLE_NAME, root=root)
    try:
        client = Client(app.url, verbose=False)
        assert "transformers" in client.predict("smol-transformers", 1024, api_name="/load_b")
        a_title, b_title, a_text, b_text, a_stats, b_stats = client.predict(
            "What is the capital of France?", 0, 24, api_name="/compare")
        assert SAMPLE_NAME in a_title and "smol-transformers" in b_title
        assert "Paris" in a_text and "Paris" in b_text
        assert "tok/s" in a_stats and "worker RAM" in b_stats
    finally:
        app.stop()
