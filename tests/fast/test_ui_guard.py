"""The red team's cases against the launched UI (fake backend): DNS rebinding, cross-site calls and
uploads, upload size, and login brute force.

One app for the module with a login and a 1 MiB upload limit; the throttle test runs last because
every request here comes from one client (127.0.0.1).
"""

from __future__ import annotations

import os

import httpx
import pytest
from gradio_client import Client

from tests.ui.test_webui import App, free_port

from .fakes import scratch, write_fake_model

LOGIN = ("user", "right-password")


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("uiguard"))
    write_fake_model(root / "models", reply="Echo: {last_user}")
    (root / "models" / "broken").mkdir()  # no config.json: its error names the folder
    uploads = tmp_path_factory.mktemp("gradio-tmp")
    api_port = free_port()
    app = App("--auth", ":".join(LOGIN), "--max-upload-mib", "1", "--model", "fake.json", "--api",
              "--api-port", str(api_port), "--api-key", "the-key", root=str(root),
              env={"WORKBENCH_BACKENDS": "workbench.backends.fake_backend:SPEC", "GRADIO_TEMP_DIR": str(uploads)})
    app.uploads, app.root, app.api = uploads, str(root), f"http://127.0.0.1:{api_port}"
    yield app
    app.stop()


@pytest.fixture(scope="module")
def session(app):
    """An httpx client logged in as the browser would be."""
    client = httpx.Client(base_url=app.url, timeout=30)
    assert client.post("login", data={"username": LOGIN[0], "password": LOGIN[1]}).status_code == 200
    yield client
    client.close()


@pytest.mark.parametrize("method, route", [("GET", ""), ("GET", "config"), ("GET", "gradio_api/info"),
                                           ("POST", "gradio_api/queue/join"), ("POST", "login")])
def test_ui_refuses_a_rebound_host_name(session, method, route):
    reply = session.request(method, route, headers={"Host": "rebind.attacker.example"},
                            json={"data": [], "fn_index": 0, "session_hash": "x"} if method == "POST" else None)
    assert reply.status_code == 403 and "--allowed-host" in reply.json()["detail"]


def test_ui_serves_its_own_host(session):
    assert session.get("config").status_code == 200
    assert session.get("config", headers={"Host": f"localhost:{session.base_url.port}"}).status_code == 200


def _upload(session, size: int, headers: dict | None = None):
    return session.post("gradio_api/upload", files={"files": ("notes.txt", b"x" * size, "text/plain")},
                        headers=headers or {})


def test_ui_refuses_cross_site_uploads_and_calls(session):
    evil = {"Origin": "http://evil.example"}
    assert _upload(session, 100, evil).status_code == 403
    call = session.post("gradio_api/queue/join", headers=evil,
                        json={"data": [], "fn_index": 0, "session_hash": "x"})
    assert call.status_code == 403
    page = session.get("gradio_api/info", headers=evil)  # a CORS read of the app's data
    assert page.status_code == 403


def test_ui_upload_size_is_limited_and_leaves_no_file(app, session):
    before = sorted(p for p, _, files in os.walk(app.uploads) for _ in files)
    assert _upload(session, 100, {"Origin": app.url.rstrip("/")}).status_code == 200
    reply = _upload(session, 3 << 20)
    assert reply.status_code == 413
    # The accepted upload is there; nothing of the refused one is.
    after = [os.path.join(p, f) for p, _, files in os.walk(app.uploads) for f in files]
    assert len(after) == len(before) + 1 and all(os.path.getsize(f) < 1000 for f in after)


def test_ui_errors_name_files_inside_the_workbench_not_server_paths(app):
    client = Client(app.url, auth=LOGIN, verbose=False)
    with pytest.raises(Exception) as e:
        client.predict("broken", "auto", 0, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0,
                       api_name="/load_model")
    assert "models/broken" in str(e.value) and app.root not in str(e.value)


def test_api_red_team_cases_against_the_launched_app(app):
    """45 cross-site `text/plain` posts (no preflight), a rebound host name, a 9 MiB body: all refused
    before any work, and the API still answers."""
    import concurrent.futures

    key = {"Authorization": "Bearer the-key"}
    body = '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2000}'

    def cross_site(_):
        return httpx.post(app.api + "/v1/chat/completions", content=body, timeout=30,
                          headers={**key, "Content-Type": "text/plain", "Origin": "http://evil.example"}).status_code

    with concurrent.futures.ThreadPoolExecutor(45) as pool:
        assert set(pool.map(cross_site, range(45))) == {403}
    plain = httpx.post(app.api + "/v1/chat/completions", content=body, headers={**key, "Content-Type": "text/plain"})
    assert plain.status_code == 415
    rebound = httpx.get(app.api + "/v1/models", headers={**key, "Host": "rebind.attacker.example"})
    assert rebound.status_code == 403
    big = httpx.post(app.api + "/v1/chat/completions", headers=key,
                     json={"messages": [{"role": "user", "content": "x" * (9 << 20)}]})
    assert big.status_code == 413
    assert httpx.get(app.api + "/health", headers=key).json()["model_loaded"] is True


def test_ui_stays_up_while_1050_slow_connections_hold_their_headers_open(app, session):
    # The red team's case: 1,050 connections that never finish their request head exhausted the
    # app's 1,024 file handles and took the UI down. The app raises its open-file limit at start.
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    port = httpx.URL(app.url).port
    held = []
    try:
        for _ in range(1050):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never finished
            held.append(s)
        assert session.get("config", timeout=20).status_code == 200
    finally:
        for s in held:
            s.close()
    assert session.get("config").status_code == 200


def test_ui_refuses_a_huge_request_head(app, session):
    import socket

    with socket.create_connection(("127.0.0.1", httpx.URL(app.url).port), timeout=10) as s:
        s.sendall(b"GET /config HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        answer = s.recv(200)
    assert answer.startswith(b"HTTP/1.1 400") or answer == b""  # h11's 16 KiB head limit: refused or closed
    assert session.get("config").status_code == 200


def test_ui_login_brute_force_is_throttled(app):
    client = httpx.Client(base_url=app.url, timeout=30)
    statuses = [client.post("login", data={"username": LOGIN[0], "password": f"guess{i}"}).status_code
                for i in range(8)]
    assert statuses[:5] == [400] * 5 and 429 in statuses[5:]
    refused = client.post("login", data={"username": LOGIN[0], "password": LOGIN[1]})
    assert refused.status_code == 429 and "try again" in refused.json()["detail"]
    with pytest.raises(Exception):
        Client(app.url, auth=LOGIN, verbose=False)


def test_every_child_of_the_tab_bar_is_a_tab(session):
    """A component placed between tabs (the Training form's BrowserState) took a tab's place in Gradio's
    tab bar: selecting Training then showed Compare's button as a second "Training"."""
    config = session.get("config").json()
    types = {c["id"]: c["type"] for c in config["components"]}

    def children_of_tabs(node):
        if types.get(node["id"]) == "tabs":
            yield [types[child["id"]] for child in node.get("children", [])]
        for child in node.get("children", []):
            yield from children_of_tabs(child)

    bars = list(children_of_tabs(config["layout"]))
    assert bars and all(kinds and set(kinds) == {"tabitem"} for kinds in bars), bars
