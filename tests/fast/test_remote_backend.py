"""The remote backend against a tiny in-process OpenAI server: entries, plan, streaming, stop,
concurrency and the error sentences (unreachable, bad key, unknown model, timeout)."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest

from workbench.backends import remote_backend as rb
from workbench.backends.registry import default_registry
from workbench.errors import (GenerationError, LoadError, RemoteAuthFailed, RemoteModelNotFound, RemoteUnreachable,
                              WorkbenchError)
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from .fake_openai_server import KEY, MODEL, FakeOpenAI
from .fakes import scratch

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture
def root(tmp_path):
    return scratch(tmp_path)


@pytest.fixture
def server():
    with FakeOpenAI() as s:
        yield s


def add(root, base_url, name="srv", model=MODEL, key=KEY, **kw) -> str:
    return rb.save_entry(str(root / "models"), name, base_url, model, api_key=key, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_inline(path: str, request: GenerationRequest, options: LoadOptions | None = None):
    """Load the entry in this process and run one request to its end: (text, DoneEvent)."""
    backend = rb.RemoteBackend()
    try:
        backend.load(default_registry().detect(path), options or LoadOptions(n_ctx=2048, parallel=4))
        text, done = "", None
        for event in backend.generate(request, lambda: False):
            if event is None:
                continue
            if isinstance(event, rb.TokenEvent):
                text += event.text
            else:
                done = event
        return text, done
    finally:
        backend.unload()


def test_an_entry_is_listed_beside_local_models_and_keeps_its_key_out_of_models(root, server):
    path = add(root, server.base_url + "/")
    assert os.path.basename(path) == "srv.remote.json"
    with open(path) as f:
        saved = json.load(f)[rb.KEY]
    assert saved == {"base_url": server.base_url, "model": MODEL} and KEY not in open(path).read()
    key_file = rb.key_path(path)
    assert key_file == str(root / "user_data" / "remote_keys" / "srv.remote.json.key")
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    service = ModelService(Paths(str(root)))
    [entry] = service.list_models()
    assert (entry.name, entry.detection.format, entry.backend) == ("srv.remote.json", "remote", "remote")
    plan = service.plan(path)
    assert plan.fits and sum(d.weights + d.kv_cache for d in plan.devices) == 0
    assert any("no local weights" in n for n in plan.notes) and plan.parallel == rb_parallel()
    with pytest.raises(WorkbenchError, match="exists already"):
        add(root, server.base_url)


def rb_parallel() -> int:
    from workbench.plan import REMOTE_PARALLEL

    return REMOTE_PARALLEL


@pytest.mark.parametrize("url, message", [
    ("ftp://host/v1", "http:// or https://"), ("http://user:pw@host/v1", "must not hold a user or password"),
    ("file:///etc/passwd", "http:// or https://"), ("http://host/v1?x=1", "query or fragment"),
])
def test_only_plain_http_base_urls_are_accepted(root, url, message):
    with pytest.raises(LoadError, match=message):
        add(root, url)


def test_a_key_written_into_the_entry_is_refused(root):
    path = root / "models" / "bad.remote.json"
    path.write_text(json.dumps({rb.KEY: {"base_url": "http://h/v1", "model": "m", "api_key": "sk-secret"}}))
    with pytest.raises(LoadError, match="keys are not kept in models/") as e:
        rb.read_entry(str(path))
    assert "sk-secret" not in str(e.value)


def test_greedy_reply_streams_with_usage_and_sampling_sent(root, server):
    text, done = run_inline(add(root, server.base_url),
                            GenerationRequest(messages=HELLO, params=GenParams(temperature=0, seed=3, stop=["x"])))
    assert text == "one two three four five"
    assert (done.finish_reason, done.prompt_tokens, done.completion_tokens) == ("stop", 11, 5)
    sent = server.requests[-1]
    assert sent["messages"] == HELLO and sent["stream"] and sent["temperature"] == 0 and sent["seed"] == 3
    assert sent["stop"] == ["x"] and sent["top_k"] == 40 and sent["model"] == MODEL


def test_raw_prompt_uses_completions_and_budget_gives_length(root, server):
    text, done = run_inline(add(root, server.base_url, strict_openai=True),
                            GenerationRequest(prompt="Once", params=GenParams(max_tokens=2)))
    assert text == "one two " and done.finish_reason == "length" and done.completion_tokens == 2
    assert server.requests[-1]["prompt"] == "Once" and "top_k" not in server.requests[-1]


def test_unreachable_host_is_one_sentence(root):
    path = add(root, f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RemoteUnreachable, match=r"^Cannot reach the remote server at http://127\.0\.0\.1:\d+/v1 .*"
                                                r"check that it is running"):
        run_inline(path, GenerationRequest(messages=HELLO))


def test_wrong_key_is_named_without_showing_it(root, server):
    path = add(root, server.base_url, key="wrong-key-123")
    with pytest.raises(RemoteAuthFailed, match="refused the API key \\(HTTP 401\\); check the key saved") as e:
        run_inline(path, GenerationRequest(messages=HELLO))
    assert "wrong-key-123" not in str(e.value)


def test_key_from_an_environment_variable(root, server, monkeypatch):
    path = rb.save_entry(str(root / "models"), "env", server.base_url, MODEL, api_key_env="FAKE_REMOTE_KEY")
    monkeypatch.delenv("FAKE_REMOTE_KEY", raising=False)
    with pytest.raises(LoadError, match="FAKE_REMOTE_KEY .* is not set"):
        run_inline(path, GenerationRequest(messages=HELLO))
    monkeypatch.setenv("FAKE_REMOTE_KEY", KEY)
    assert run_inline(path, GenerationRequest(messages=HELLO))[0] == "one two three four five"


def test_unknown_model_lists_what_the_server_serves(root, server):
    path = add(root, server.base_url, model="nope")
    with pytest.raises(RemoteModelNotFound, match="has no model 'nope' \\(HTTP 404\\); it serves: tiny"):
        run_inline(path, GenerationRequest(messages=HELLO))


def test_a_silent_server_times_out(root, server):
    server.stall_s = 1.5
    path = add(root, server.base_url, timeout_s=1)
    with pytest.raises(RemoteUnreachable, match="sent nothing for 1 s during a reply"):
        run_inline(path, GenerationRequest(messages=HELLO))


# --- through ModelService: a real worker process ------------------------------------------------------------

@pytest.fixture
def service(root):
    s = ModelService(Paths(str(root)))
    yield s
    s.close()


def test_service_streams_runs_requests_at_once_and_stop_closes_the_stream(root, service):
    with FakeOpenAI(reply=" ".join(f"w{i}" for i in range(40)), token_delay_s=0.02) as server:
        loaded = service.load(add(root, server.base_url), options=LoadOptions(parallel=4))
        assert (loaded.backend, loaded.device, loaded.plan.parallel) == ("remote", "remote", 4)
        assert KEY not in json.dumps(loaded.details) and loaded.details["api_key"].startswith("the key saved")
        results = []

        def one():
            results.append(service.complete(GenerationRequest(messages=HELLO, params=GenParams(temperature=0))))

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert server.max_active == 4  # all four streamed at once, not one after another
        assert all(r.text.split() == [f"w{i}" for i in range(40)] and r.stats.completion_tokens == 40
                   for r in results)

        stop = threading.Event()
        events = service.generate(GenerationRequest(messages=HELLO), stop)
        assert next(events)[0] == "token"
        stop.set()
        rest = list(events)
        assert rest[-1][1].finish_reason == "cancelled"
        assert server.hung_up.wait(5)  # the server saw the stream close before its reply ended


def test_service_errors_and_perplexity_keep_the_app_running(root, service, server):
    with pytest.raises(RemoteModelNotFound):
        service.load(add(root, server.base_url, name="other", model="nope"))
    service.load(add(root, server.base_url))
    with pytest.raises(GenerationError, match="not supported by this remote server"):
        service.perplexity("some text to score")
    vectors, tokens = service.embed(["ab", "abcd"])
    assert vectors == [[2.0, 1.0], [4.0, 1.0]] and tokens == 7
    assert service.complete(GenerationRequest(messages=HELLO)).text == "one two three four five"


def test_cli_remote_add_reads_the_key_from_stdin_and_remove_deletes_both(root, monkeypatch, capsys):
    import io

    from workbench import cli

    monkeypatch.setenv("WORKBENCH_ROOT", str(root))
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-cli\n"))
    assert cli.main(["remote", "add", "c1", "--base-url", "http://h:8000", "--model", "m", "--api-key-stdin"]) == 0
    assert "sk-cli" not in capsys.readouterr().out
    path = str(root / "models" / "c1.remote.json")
    assert rb.read_entry(path).base_url == "http://h:8000/v1"  # a bare host gets /v1
    assert open(rb.key_path(path)).read().strip() == "sk-cli"
    assert cli.main(["remote", "remove", "c1"]) == 0
    assert not os.path.exists(path) and not os.path.exists(rb.key_path(path))
    assert cli.main(["remote", "add", "c2", "--base-url", "ftp://h", "--model", "m"]) == 2
    assert "http:// or https://" in capsys.readouterr().err


def test_the_service_adds_an_entry_with_a_saved_key_only(root):
    service = ModelService(Paths(str(root)))
    assert service.add_remote(" ui ", "http://h:1/v1", "m", " sk-ui ") == "ui.remote.json"
    assert open(rb.key_path(str(root / "models" / "ui.remote.json"))).read().strip() == "sk-ui"
    with pytest.raises(WorkbenchError, match="Give the model name"):
        service.add_remote("x", "http://h:1/v1", " ")


def test_a_closed_stream_hangs_up_and_leaves_no_news_behind(root):
    with FakeOpenAI(reply=" ".join(["w"] * 300), token_delay_s=0.005) as server:
        backend = rb.RemoteBackend()
        backend.load(default_registry().detect(add(root, server.base_url)), LoadOptions(n_ctx=2048, parallel=2))
        try:
            events = backend.generate(GenerationRequest(messages=HELLO), lambda: False)
            event = None
            while not isinstance(event, rb.TokenEvent):
                event = next(events)
            time.sleep(0.05)  # more arrives meanwhile, untaken
            events.close()
            assert server.hung_up.wait(5)
            time.sleep(0.05)
            assert backend._arrivals.pending == 0  # else every later generator would spin instead of waiting
        finally:
            backend.unload()
