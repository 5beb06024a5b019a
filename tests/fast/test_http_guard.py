"""The request guard on the API: Host header (DNS rebinding), cross-site pages, JSON only, body size,
bad values that used to give 500s, and the per-client throttle on wrong API keys.

In process (Starlette's TestClient); no model is loaded, so a request that passes every check
answers 503 "no model" and one that is refused answers before that.
"""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from workbench.api.server import MAX_BODY_BYTES, build_api
from workbench.http_guard import FailureThrottle, HostPolicy
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch

CHAT = "/v1/chat/completions"
GOOD = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    models = ModelService(Paths(str(scratch(tmp_path_factory.mktemp("guard")))), registry=fake_registry())
    yield models
    models.close()


@pytest.fixture(scope="module")
def api(models):
    app = build_api(models, cors_origins=["http://friend.example"],
                    hosts=HostPolicy("127.0.0.1", allowed=("workbench.lan",)))
    return TestClient(app, base_url="http://127.0.0.1:5000")


def test_a_request_that_passes_every_check_reaches_the_route(api):
    assert api.post(CHAT, json=GOOD).status_code == 503  # no model loaded: it got through


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_api_posts_must_be_json(api, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    reply = api.post(CHAT, content=json.dumps(GOOD).encode(), headers=headers)
    assert reply.status_code == 415
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("host, allowed", [("evil.example", False), ("evil.example:5000", False),
                                           ("localhost:5000", True), ("127.0.0.1:5000", True),
                                           ("workbench.lan:5000", True), ("10.0.0.5:5000", False)])
def test_api_answers_only_its_own_host_names(api, host, allowed):
    reply = api.get("/v1/models", headers={"Host": host})
    assert (reply.status_code == 200) is allowed
    if not allowed:
        assert reply.status_code == 403 and "--allowed-host" in reply.json()["error"]["message"]


@pytest.mark.parametrize("origin, allowed", [("http://evil.example", False), ("null", False),
                                             ("http://friend.example", True), ("http://127.0.0.1:5000", True)])
def test_api_refuses_pages_from_other_sites(api, origin, allowed):
    reply = api.post(CHAT, json=GOOD, headers={"Origin": origin})
    assert reply.status_code == (503 if allowed else 403)


def test_api_body_size_is_limited(api):
    big = {"messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 10)}]}
    assert api.post(CHAT, json=big).status_code == 413

    def chunks():  # no Content-Length: the guard counts the bytes as they come
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    reply = api.post(CHAT, content=chunks(), headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and "limit" in reply.json()["error"]["message"]


def _nested(depth: int) -> bytes:
    return b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("raw", [
    json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}).encode(),
    json.dumps({"messages": [{"role": "system", "content": None}, {"role": "user", "content": "hi"}]}).encode(),
    _nested(100_000),
    b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + b"7" * 5000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": ' + b"9" * 400 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "seed": ' + str(2 ** 70).encode() + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
], ids=["text-part-not-a-string", "null-system", "deep-json", "5000-digits", "400-digit-float-field", "seed-2^70",
        "nan"])
def test_bad_values_are_400_not_500(api, raw):
    reply = api.post(CHAT, content=raw, headers={"Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_wrong_api_keys_are_throttled_per_client(models):
    clock = [1000.0]
    throttle = FailureThrottle(clock=lambda: clock[0])
    app = build_api(models, api_key="right-key", throttle=throttle)
    api = TestClient(app, base_url="http://127.0.0.1:5000")
    guesses = ({"Authorization": f"Bearer guess-{i}"} for i in range(100))
    stale = {"Authorization": "Bearer stale-key"}
    for _ in range(10):  # a client retrying with one stale key is not guessing: it is never locked out
        assert api.get("/v1/models", headers=stale).status_code == 401
    for _ in range(throttle.free - 1):
        assert api.get("/v1/models", headers=next(guesses)).status_code == 401
    refused = api.get("/v1/models", headers={"Authorization": "Bearer right-key"})
    assert refused.status_code == 429 and "try again" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    clock[0] += 1.5
    assert api.get("/v1/models", headers=next(guesses)).status_code == 401
    clock[0] += 1.5
    assert api.get("/v1/models", headers=next(guesses)).status_code == 429  # the wait doubled
    clock[0] += 3
    assert api.get("/v1/models", headers={"Authorization": "Bearer right-key"}).status_code == 200
    assert api.get("/v1/models", headers=next(guesses)).status_code == 401  # the right key forgave the client


def test_throttle_forgets_old_failures_and_bounds_its_memory():
    clock = [0.0]
    throttle = FailureThrottle(free=2, max_clients=3, clock=lambda: clock[0])
    for client in "abcd":
        throttle.failed(client, b"guess one")
        throttle.failed(client, b"guess two")
    assert "a" not in throttle._seen and throttle.wait_s("d") > 0
    clock[0] += throttle.forget_s + 1
    assert throttle.wait_s("d") == 0


@pytest.mark.parametrize("bound, host, allowed", [
    ("127.0.0.1", "localhost", True), ("127.0.0.1", "app.localhost:7860", True),
    ("127.0.0.1", "rebind.attacker.example", False), ("0.0.0.0", "192.168.1.20:7860", True),
    ("0.0.0.0", "my-box.lan", False), ("192.168.1.20", "192.168.1.20:7860", True),
    ("192.168.1.20", "localhost", False), ("::1", "[::1]:7860", True), ("my-box.lan", "my-box.lan:7860", True),
])
def test_host_policy(bound, host, allowed):
    assert HostPolicy(bound).allows(host) is allowed


def test_host_policy_names_the_user_allows_and_share_links():
    assert HostPolicy("0.0.0.0", allowed=("My-Box.lan",)).allows("my-box.lan:7860")
    assert HostPolicy("127.0.0.1", share=True).allows("abcdef.gradio.live")
    assert not HostPolicy("127.0.0.1").allows("abcdef.gradio.live")


@pytest.mark.parametrize("text, shown", [
    ("{root}/models/broken has no config.json.", "models/broken has no config.json."),
    ("config.json in {root}/models/x is not valid JSON; fix it.", "config.json in models/x is not valid JSON; fix it."),
    ("'/srv/secret/place/model.gguf' is truncated.", "'model.gguf' is truncated."),
    ("needs 0.31 GiB RAM/VRAM at 12 tok/s; see https://example.org/a/b", None),
])
def test_messages_show_names_not_server_paths(text, shown):
    from workbench.paths import public_text

    root = "/opt/workbench"
    assert public_text(text.format(root=root), root) == (shown or text)


def test_the_app_raises_its_open_file_limit():
    import resource
    import subprocess
    import sys

    from tests.conftest import ROOT

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    script = ("import resource, webui; resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit("
              "resource.RLIMIT_NOFILE)[1])); webui.raise_open_file_limit(5000); "
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    raised = int(subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout)
    assert raised == (5000 if hard == resource.RLIM_INFINITY else min(5000, hard))
