"""The remote backend against a real server: a second workbench (`webui.py --api-only`) serving the
sample GGUF behind an API key, in its own process. Through ModelService the remote entry must
answer exactly as the server does when called directly, stream, stop, serve several requests
at once, act as the model behind this workbench's own API, and fail in one clear sentence."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from workbench.backends import remote_backend as rb
from workbench.errors import RemoteAuthFailed, RemoteModelNotFound, RemoteUnreachable
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from ..conftest import CAPITAL_QUESTION, ROOT, SAMPLE_NAME

KEY = "second-server-key"
TOKENS = 48


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_second_workbench(root, model_path: str) -> tuple[subprocess.Popen, str]:
    """`webui.py --api-only` serving `model_path` on a free loopback port with KEY; (process, base URL)."""
    for sub in ("models", "presets", "user_data"):
        (root / sub).mkdir(exist_ok=True)
    os.symlink(model_path, root / "models" / SAMPLE_NAME)
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "webui.py"), "--api-only", "--model", SAMPLE_NAME,
                             "--api-port", str(port), "--api-key", KEY], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "WORKBENCH_ROOT": str(root)})
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the second workbench exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {KEY}"})
            if b'"model_loaded":true' in urllib.request.urlopen(req, timeout=2).read():
                return proc, base
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail("the second workbench did not start in 120 s")


@pytest.fixture(scope="module")
def second(tmp_path_factory, sample_gguf):
    proc, base = start_second_workbench(tmp_path_factory.mktemp("second"), sample_gguf)
    yield base
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def local_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    for sub in ("models", "presets", "user_data"):
        (root / sub).mkdir()
    return root


@pytest.fixture(scope="module")
def remote(second, local_root):
    """A ModelService with a remote entry for the second workbench's model loaded."""
    path = rb.save_entry(str(local_root / "models"), "second", second, SAMPLE_NAME, api_key=KEY)
    service = ModelService(Paths(str(local_root)))
    service.load(path, options=LoadOptions(parallel=4))
    yield service
    service.close()


def greedy(max_tokens: int = TOKENS) -> GenerationRequest:
    return GenerationRequest(messages=CAPITAL_QUESTION, params=GenParams(temperature=0, max_tokens=max_tokens))


def direct(base: str, max_tokens: int = TOKENS) -> str:
    from openai import OpenAI

    client = OpenAI(base_url=base, api_key=KEY, max_retries=0)
    reply = client.chat.completions.create(model=SAMPLE_NAME, messages=CAPITAL_QUESTION, temperature=0,
                                           max_tokens=max_tokens)
    return reply.choices[0].message.content


def test_greedy_answer_equals_the_servers_own_and_streams(second, remote):
    expected = direct(second)
    assert "Paris" in expected
    events = list(remote.generate(greedy()))
    tokens = [v for k, v in events if k == "token"]
    assert "".join(tokens) == expected
    assert len(tokens) >= 2  # it streamed, not one block at the end
    stats = events[-1][1]
    assert stats.finish_reason in ("stop", "length") and stats.completion_tokens > 0 and stats.prompt_tokens > 0
    loaded = remote.loaded()
    assert loaded.backend == "remote" and loaded.plan.ram_total() < 100 * 2**20
    assert KEY not in str(loaded.details)


def test_concurrent_requests_all_get_the_whole_answer(second, remote):
    expected = direct(second)
    results = [None] * 4

    def one(i):
        results[i] = remote.complete(greedy()).text

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == [expected] * 4


def test_stop_cancels_the_remote_generation(remote):
    stop = threading.Event()
    story = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]
    events = remote.generate(GenerationRequest(messages=story, params=GenParams(temperature=0, max_tokens=2000)), stop)
    assert next(events)[0] == "token"
    stop.set()
    rest = list(events)
    assert rest[-1][1].finish_reason == "cancelled"
    assert rest[-1][1].completion_tokens < 2000
    assert "Paris" in remote.complete(greedy()).text  # the slot and the server are free again


def test_the_workbench_api_serves_the_remote_model(second, remote):
    from openai import OpenAI

    from ..fast.fakes import serving_api

    with serving_api(remote) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(model="second.remote.json", messages=CAPITAL_QUESTION,
                                               temperature=0, max_tokens=TOKENS)
    assert reply.choices[0].message.content == direct(second)


def test_errors_are_one_sentence_and_the_app_keeps_running(second, local_root):
    port = second.rsplit(":", 1)[1].split("/")[0]
    cases = [
        (rb.save_entry(str(local_root / "models"), "wrong-port", f"http://127.0.0.1:{free_port()}/v1",
                       SAMPLE_NAME, api_key=KEY), RemoteUnreachable, "Cannot reach the remote server"),
        (rb.save_entry(str(local_root / "models"), "wrong-key", second, SAMPLE_NAME, api_key="not-the-key"),
         RemoteAuthFailed, r"refused the API key \(HTTP 401\)"),
        (rb.save_entry(str(local_root / "models"), "wrong-model", f"http://127.0.0.1:{port}/v1", "no-such-model",
                       api_key=KEY), RemoteModelNotFound, rf"has no model 'no-such-model' .*it serves: {SAMPLE_NAME}"),
    ]
    service = ModelService(Paths(str(local_root)))
    try:
        for path, error, message in cases:
            with pytest.raises(error, match=message) as e:
                service.load(path)
            assert "not-the-key" not in str(e.value) and KEY not in str(e.value)
            assert str(e.value).count(". ") == 0  # one sentence
        assert service.loaded() is None
    finally:
        service.close()


LLAMA_SERVER = os.environ.get("LLAMA_SERVER") or os.path.expanduser("~/.cache/model-workbench/llama-server/bin/llama-server")


@pytest.mark.skipif(not os.access(LLAMA_SERVER, os.X_OK),
                    reason="llama.cpp's llama-server is not built (../shared/bench/build-llama-server.sh DIR, then "
                           "LLAMA_SERVER=DIR/bin/llama-server)")
def test_a_remote_entry_for_llama_server_answers_as_llama_server_does(sample_gguf, tmp_path):
    from openai import OpenAI

    port = free_port()
    proc = subprocess.Popen([LLAMA_SERVER, "-m", sample_gguf, "--port", str(port), "--host", "127.0.0.1", "-c", "2048",
                             "-np", "2", "-t", "2", "--no-webui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "LD_LIBRARY_PATH": os.path.dirname(LLAMA_SERVER)})
    try:
        deadline = time.time() + 120
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "llama-server did not start"
                time.sleep(0.3)
        base = f"http://127.0.0.1:{port}/v1"
        client = OpenAI(base_url=base, api_key="none", max_retries=0)
        expected = client.chat.completions.create(model="any", messages=CAPITAL_QUESTION, temperature=0,
                                                  max_tokens=TOKENS).choices[0].message.content
        for sub in ("models", "presets", "user_data"):
            (tmp_path / sub).mkdir()
        model_id = client.models.list().data[0].id
        path = rb.save_entry(str(tmp_path / "models"), "llama-server", base, model_id)
        service = ModelService(Paths(str(tmp_path)))
        try:
            service.load(path, options=LoadOptions(parallel=2))
            assert service.complete(greedy()).text == expected
            stop = threading.Event()
            story = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]
            events = service.generate(GenerationRequest(messages=story, params=GenParams(temperature=0, max_tokens=2000)),
                                      stop)
            assert next(events)[0] == "token"
            stop.set()
            assert list(events)[-1][1].finish_reason == "cancelled"
        finally:
            service.close()
    finally:
        proc.terminate()
        proc.wait(15)
