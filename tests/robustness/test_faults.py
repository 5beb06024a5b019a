"""Faults from outside the app: a full disk while saving, a model file deleted while it is
loaded, and the worker killed with SIGKILL in the middle of a reply.

Saves are faulted in-process (os.fsync or the temp file's write raise ENOSPC) on the real
store classes; the model and worker faults use the real sample model. The kill between two
replies is covered in tests/backends/test_contract.py; here the kill lands mid-reply, in the
ChatService and through the launched UI.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import shutil
import signal
import time

import pytest
from gradio_client import Client

from tests.conftest import CAPITAL_QUESTION, SAMPLE_NAME
from tests.robustness.conftest import assert_one_sentence, launch, scratch_root
from tests.ui.test_webui import reply_text
from workbench.errors import DetectionError, PathOutsideModels, WorkbenchError, WorkerDied
from workbench.generation_presets import GenerationPresetStore
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.profiles import ProfileStore
from workbench.services.chat_service import ChatService
from workbench.services.conversations import ConversationStore
from workbench.services.model_service import ModelService

STORY = [{"role": "user", "content": "Write a very long story about a dragon and a knight."}]


# --- a full disk while saving --------------------------------------------------------------

def _conversation(tmp_path):
    store = ConversationStore(str(tmp_path / "chats"))
    conv = store.new("Be brief.")
    conv.messages.append({"role": "user", "content": "first version"})
    store.save(conv)
    path = store._path(conv.id)

    def save_again():
        conv.messages.append({"role": "assistant", "content": "second version"})
        store.save(conv)

    return path, save_again


def _generation_preset(tmp_path):
    store = GenerationPresetStore(str(tmp_path / "generation"))
    store.save("mine", GenParams(temperature=0.3))
    return store.path("mine"), lambda: store.save("mine", GenParams(temperature=1.1))


def _hardware_profile(tmp_path):
    store = ProfileStore(str(tmp_path / "hardware"), str(tmp_path / "model_settings.json"))
    store.save("mine", LoadOptions(n_ctx=2048))
    return store.path("mine"), lambda: store.save("mine", LoadOptions(n_ctx=4096))


def _model_settings(tmp_path):
    store = ProfileStore(str(tmp_path / "hardware"), str(tmp_path / "model_settings.json"))
    store.remember("a.gguf", "auto", LoadOptions(n_ctx=2048))
    return store.settings_path, lambda: store.remember("a.gguf", "auto", LoadOptions(n_ctx=4096))


def _fsync_fails(monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)


def _write_fails(monkeypatch):
    real_fdopen = os.fdopen

    class FullFile:
        def __init__(self, f):
            self.f = f

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullFile(real_fdopen(*a, **k)))


@pytest.mark.parametrize("fault", [_fsync_fails, _write_fails], ids=["fsync", "write"])
@pytest.mark.parametrize("saved", [_conversation, _generation_preset, _hardware_profile, _model_settings],
                         ids=["conversation", "generation-preset", "hardware-profile", "model-settings"])
def test_full_disk_keeps_the_old_file_and_says_why(tmp_path, monkeypatch, saved, fault):
    path, save_again = saved(tmp_path)
    before = open(path, "rb").read()
    with monkeypatch.context() as m:
        fault(m)
        with pytest.raises(WorkbenchError) as e:
            save_again()
    message = assert_one_sentence(str(e.value))
    assert re.search(r"space|disk", message, re.IGNORECASE), message
    assert open(path, "rb").read() == before
    assert not glob.glob(os.path.join(os.path.dirname(path), ".tmp-*"))  # no half-written leftovers
    save_again()  # with room again, the save goes through
    assert open(path, "rb").read() != before


# --- a model file deleted while it is loaded --------------------------------------------------

def test_model_file_removed_while_loaded(sample_gguf, tmp_path):
    paths = Paths(str(tmp_path))
    os.makedirs(paths.models)
    shutil.copyfile(sample_gguf, os.path.join(paths.models, "doomed.gguf"))
    service = ModelService(paths)
    try:
        service.load(service.resolve_name("doomed.gguf"), options=LoadOptions(n_ctx=512))
        os.remove(os.path.join(paths.models, "doomed.gguf"))
        request = GenerationRequest(messages=CAPITAL_QUESTION, params=GenParams(temperature=0, max_tokens=24))
        try:
            assert "Paris" in service.complete(request).text  # the open file lives on until it is closed
        except WorkbenchError as e:
            assert_one_sentence(str(e))
        with pytest.raises(PathOutsideModels, match="There is no model 'doomed.gguf'"):
            service.resolve_name("doomed.gguf")  # what the UI and API do with a name
        with pytest.raises(DetectionError, match="does not exist") as e:
            service.load(os.path.join(paths.models, "doomed.gguf"), options=LoadOptions(n_ctx=512))
        assert_one_sentence(str(e.value))
    finally:
        service.close()


# --- the worker killed in the middle of a reply -----------------------------------------------

def test_worker_killed_mid_reply_in_the_chat_service(sample_gguf, tmp_path):
    models = ModelService(Paths(str(tmp_path)))
    chat = ChatService(models, ConversationStore(str(tmp_path / "chats")))
    try:
        models.load(sample_gguf, options=LoadOptions(n_ctx=1024))
        conv = chat.conversations.new("You are a helpful assistant.")
        chunks = chat.send(conv, STORY[0]["content"], GenParams(temperature=0.8, max_tokens=600))
        first = next(chunks)
        os.kill(models.worker_pid(), signal.SIGKILL)
        with pytest.raises(WorkerDied) as e:
            for _ in chunks:
                pass
        assert "load the model again" in assert_one_sentence(str(e.value))
        saved = chat.conversations.get(conv.id)  # the partial reply was kept
        assert saved.messages[-1]["role"] == "assistant" and saved.messages[-1]["content"].startswith(first.text)
        assert models.status().loaded is None
        models.load(sample_gguf, options=LoadOptions(n_ctx=1024))
        *_, last = chat.send(conv, "What is the capital of France?", GenParams(temperature=0, max_tokens=24))
        assert last.stats.finish_reason in ("stop", "length")
    finally:
        models.close()


@pytest.fixture(scope="module")
def app(sample_gguf, tmp_path_factory):
    app = launch(scratch_root(tmp_path_factory.mktemp("faults"), sample_gguf), "--model", SAMPLE_NAME,
                 "--n-ctx", "1024")
    yield app
    app.stop()


FORM = (1024, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0)


def test_worker_killed_mid_reply_through_the_ui(app):
    client = Client(app.url, verbose=False)
    status = client.predict(SAMPLE_NAME, "auto", *FORM, api_name="/load_model")
    pid = int(re.search(r"pid (\d+)", status).group(1))
    job = client.submit(STORY[0]["content"], "You are a helpful assistant.", 0.8, 0.95, 40, 0.05, 1.0, 2000, -1,
                        api_name="/chat")
    deadline = time.time() + 120
    while not any(reply_text(out[0]) for out in job.outputs() if out[0] and out[0][-1]["role"] == "assistant"):
        assert time.time() < deadline and not job.done(), "no reply started"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    job.result()
    stats = next(value for value in job.outputs()[-1] if isinstance(value, str) and "**Error:**" in value)
    assert "load the model again" in assert_one_sentence(stats.replace("**Error:** ", ""))
    assert "No model loaded" in client.predict(api_name="/unload_model")
    assert "llama.cpp" in client.predict(SAMPLE_NAME, "auto", *FORM, api_name="/load_model")
    chatbot, *_ = client.predict("What is the capital of France?", "You are a helpful assistant.", 0, 0.95, 40,
                                 0.05, 1.0, 24, -1, api_name="/chat")
    assert "Paris" in reply_text(chatbot)
