"""The OpenAI-compatible API, driven by the official `openai` package against a launched server."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.conftest import CAPITAL_QUESTION, SAMPLE_NAME
from tests.ui.test_webui import App, free_port

KEY = "test-key-123"


def wait_until_serving(url: str, seconds: float = 20) -> None:
    import time

    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered (401 without a key)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="module")
def api(sample_gguf):
    port = free_port()
    app = App("--api-only", "--api-port", str(port), "--api-key", KEY, "--model", SAMPLE_NAME, ready="OpenAI-compatible API")
    app.api_url = f"http://127.0.0.1:{port}"
    wait_until_serving(app.api_url + "/health")
    yield app
    app.stop()


@pytest.fixture
def client(api):
    return openai.OpenAI(base_url=api.api_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_lists_the_loaded_model(client):
    cards = client.models.list().data
    assert cards[0].id == SAMPLE_NAME and cards[0].loaded and not any(c.loaded for c in cards[1:])


def test_chat_completion(client):
    r = client.chat.completions.create(model=SAMPLE_NAME, messages=CAPITAL_QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 10 and r.usage.completion_tokens >= 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_matches_the_non_streamed_answer(client):
    story = [{"role": "user", "content": "Write a long story about a dragon."}]
    whole = client.chat.completions.create(model="any", messages=story, temperature=0, max_tokens=60)
    stream = client.chat.completions.create(model="any", messages=story, temperature=0, max_tokens=60,
                                            stream=True, stream_options={"include_usage": True})
    pieces, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) >= 2  # really streamed, in pieces
    assert finish == "length" and usage.completion_tokens == whole.usage.completion_tokens == 60


def test_completions_with_stop_and_max_tokens(client):
    r = client.completions.create(model="any", prompt="The capital of France is", max_tokens=8, temperature=0, stop=["."])
    assert "Paris" in r.choices[0].text and "." not in r.choices[0].text
    r = client.completions.create(model="any", prompt="Once upon a time", max_tokens=5, temperature=0)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_seed_repeats(client):
    args = dict(model="any", messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=12,
                temperature=1.0, seed=7)
    assert client.chat.completions.create(**args).choices[0].message.content == \
        client.chat.completions.create(**args).choices[0].message.content


def test_wrong_or_missing_key_gets_401(api):
    bad = openai.OpenAI(base_url=api.api_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(api.api_url + "/health")
    assert e.value.code == 401
    assert json.loads(e.value.read())["error"]["code"] == "invalid_api_key"


def test_errors_come_back_in_openai_shape(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="any", messages=CAPITAL_QUESTION, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="cannot be set"):
        client.chat.completions.create(model="any", messages=CAPITAL_QUESTION,
                                       extra_body={"trust_remote_code": True})
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="any", messages=[])


def test_cors_is_closed_by_default(api):
    req = urllib.request.Request(api.api_url + "/v1/models", method="OPTIONS",
                                 headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    try:
        with urllib.request.urlopen(req) as r:
            headers = r.headers
    except urllib.error.HTTPError as e:
        headers = e.headers
    assert "access-control-allow-origin" not in {k.lower() for k in headers}


def test_eight_concurrent_clients_each_get_their_own_complete_answer(client):
    prompts = [f"Count from {n} to {n + 5}:" for n in range(8)]

    def ask(prompt):
        r = client.completions.create(model="any", prompt=prompt, max_tokens=24, temperature=0)
        return r.choices[0].text, r.usage.completion_tokens

    alone = [ask(p) for p in prompts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone  # greedy: each client got exactly its own answer, complete
    assert all(tokens > 0 for _, tokens in together)


# A prompt the sample model goes on counting after for thousands of tokens (minutes on two cores).
COUNTING = {"model": "any", "prompt": "1, 2, 3, 4, 5, 6, 7, 8,", "max_tokens": 4000, "temperature": 0}
HANG_UP_BOUND_S = 30  # a liveness bound: the abandoned generation would hold the worker for minutes


def post_and_hang_up(api, body: dict, after_lines: int) -> None:
    """POST `body` to /v1/completions over a raw socket; read `after_lines` lines of the answer (0: none,
    just wait a moment), then close the connection as a client that gave up would."""
    import socket
    import time

    data = json.dumps(body).encode()
    host, port = api.api_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + f"{host}:{port}".encode()
                     + b"\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: " + str(len(data)).encode()
                     + b"\r\n\r\n" + data)
        if after_lines:
            reader = sock.makefile("rb")
            lines = [reader.readline() for _ in range(after_lines)]
            assert lines[0].startswith(b"HTTP/1.1 200"), lines
            reader.close()
        else:
            time.sleep(1)  # the generation has started and holds the worker


@pytest.mark.parametrize("stream, after_lines", [(True, 12), (False, 0)])
def test_a_client_that_hangs_up_frees_the_worker_for_the_next(api, stream, after_lines):
    post_and_hang_up(api, {**COUNTING, "stream": stream}, after_lines)
    patient = openai.OpenAI(base_url=api.api_url + "/v1", api_key=KEY, max_retries=0, timeout=HANG_UP_BOUND_S)
    r = patient.chat.completions.create(model="any", messages=CAPITAL_QUESTION, temperature=0, max_tokens=8)
    assert r.choices[0].message.content
