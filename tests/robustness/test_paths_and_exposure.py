"""What the launched app exposes: names from the browser and the API stay inside their
folders, no file is served that the user did not export, nothing a client sends can
change startup flags, and with --listen the generated password guards every route.

One app per module: `--listen --api` on a scratch root whose presets/ and user_data/chats/
hold symlinks that lead out of their folders.
"""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
from gradio_client import Client

from tests.conftest import CAPITAL_QUESTION, ROOT
from tests.robustness.conftest import SAMPLE_NAME, assert_one_sentence, http, launch, scratch_root

FORM = (1024, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0)
SECRET = "SECRET-OUTSIDE-THE-FOLDER"
LEAKING_CHAT = "20240101-000000-abcdef"


@pytest.fixture(scope="module")
def root(sample_gguf, tmp_path_factory):
    base = tmp_path_factory.mktemp("exposure")
    (base / "root").mkdir()
    root = scratch_root(base / "root", sample_gguf)
    outside = base / "outside"
    outside.mkdir()
    (outside / "preset.yaml").write_text(f"description: {SECRET}\nparams: {{temperature: 0.1}}\n")
    (outside / "profile.yaml").write_text(f"description: {SECRET}\nload: {{n_ctx: 512}}\n")
    (outside / "chat.json").write_text(json.dumps({"id": LEAKING_CHAT, "title": SECRET, "messages": []}))
    (root / "presets" / "generation" / "leak.yaml").symlink_to(outside / "preset.yaml")
    (root / "presets" / "hardware" / "leak.yaml").symlink_to(outside / "profile.yaml")
    (root / "user_data" / "chats").mkdir(parents=True)
    (root / "user_data" / "chats" / f"{LEAKING_CHAT}.json").symlink_to(outside / "chat.json")
    (root / "user_data" / "secret.txt").write_text(SECRET)
    return root


@pytest.fixture(scope="module")
def app(root):
    app = launch(root, "--listen", "--model", SAMPLE_NAME, "--n-ctx", "1024")
    app.password = re.search(r"user 'workbench', password '([^']+)'", "".join(app.output)).group(1)
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, auth=("workbench", app.password), verbose=False)


def key(app) -> dict:
    return {"Authorization": f"Bearer {app.password}"}


# --- the password guards every route -------------------------------------------------------

GRADIO_ROUTES = [("GET", ""), ("GET", "config"), ("GET", "gradio_api/info"), ("GET", "gradio_api/file=/etc/passwd"),
                 ("POST", "gradio_api/call/load_model"), ("POST", "gradio_api/call/chat"),
                 ("POST", "gradio_api/queue/join"), ("POST", "gradio_api/run/unload_model"),
                 ("GET", "gradio_api/upload_progress"), ("POST", "gradio_api/upload")]
API_ROUTES = [("GET", "v1/models"), ("POST", "v1/chat/completions"), ("POST", "v1/completions"), ("GET", "health")]


@pytest.mark.parametrize("method, route", GRADIO_ROUTES)
def test_gradio_routes_need_the_login(app, method, route):
    body = {"data": [SAMPLE_NAME, "auto", *FORM], "fn_index": 0, "session_hash": "x"} if method == "POST" else None
    status, headers, reply = http(method, app.url + route, body=body)
    if route == "":
        # The page shell (with Gradio's login form) is served to anyone; it must hold no names from the
        # disk: the tabs fill their lists in on page load, after login.
        assert status == 200
    elif status in (301, 302, 303, 307):
        assert "login" in headers.get("location", "")
    else:
        assert status in (401, 403, 404, 405, 422), (status, reply[:200])
    assert b"root:" not in reply and SAMPLE_NAME.encode() not in reply and b"cpu-8gb" not in reply


@pytest.mark.parametrize("method, route", API_ROUTES)
@pytest.mark.parametrize("credential", ["none", "wrong", "basic-auth"])
def test_api_routes_need_the_generated_password(app, method, route, credential):
    headers = {"none": {}, "wrong": {"Authorization": "Bearer wrong"},
               "basic-auth": {"Authorization": "Basic " + base64.b64encode(
                   f"workbench:{app.password}".encode()).decode()}}[credential]
    body = {"messages": CAPITAL_QUESTION, "prompt": "x", "max_tokens": 2} if method == "POST" else None
    status, _, reply = http(method, f"{app.api_url}/{route}", body=body, headers=headers)
    assert status == 401 and json.loads(reply)["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("method, route", API_ROUTES)
def test_api_routes_answer_with_the_password(app, method, route):
    body = {"messages": CAPITAL_QUESTION, "prompt": "The capital of France is", "max_tokens": 2} \
        if method == "POST" else None
    assert http(method, f"{app.api_url}/{route}", body=body, headers=key(app))[0] == 200


# --- CORS -------------------------------------------------------------------------------------

def _preflight(url: str, origin: str) -> dict:
    _, headers, _ = http("OPTIONS", url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                                  "Access-Control-Request-Headers": "authorization"})
    return headers


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
def test_api_cors_is_closed_without_api_cors_origin(app, origin):
    assert "access-control-allow-origin" not in _preflight(app.api_url + "/v1/chat/completions", origin)
    _, headers, _ = http("GET", app.api_url + "/v1/models", headers={"Origin": origin, **key(app)})
    assert "access-control-allow-origin" not in headers


def test_api_cors_opens_only_for_the_named_origin():
    from fastapi.testclient import TestClient

    from workbench.api.server import build_api
    from workbench.paths import Paths
    from workbench.services.model_service import ModelService

    api = TestClient(build_api(ModelService(Paths(ROOT)), "k", ["http://ok.example"]), base_url="http://127.0.0.1")
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    ok = api.options("/v1/chat/completions", headers={"Origin": "http://ok.example", **ask})
    assert ok.headers.get("access-control-allow-origin") == "http://ok.example"
    evil = api.options("/v1/chat/completions", headers={"Origin": "http://evil.example", **ask})
    assert "access-control-allow-origin" not in evil.headers


# --- no arbitrary files ---------------------------------------------------------------------

def _files(root) -> list[str]:
    return ["/etc/passwd", os.path.join(ROOT, "README.md"), os.path.join(ROOT, "webui.py"),
            str(root / "models" / SAMPLE_NAME), str(root / "user_data" / "secret.txt"),
            str(root / "presets" / "hardware" / "cpu-8gb.yaml"), "../../../../etc/passwd", "webui.py"]


@pytest.mark.parametrize("prefix", ["file=", "gradio_api/file=", "gradio_api/file/", "static/", "assets/",
                                    "gradio_api/static/"])
@pytest.mark.parametrize("which", range(8))
def test_app_does_not_serve_arbitrary_files(app, client, root, prefix, which):
    target = _files(root)[which]
    cookies = client.cookies if hasattr(client, "cookies") else {}
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    status, _, reply = http("GET", app.url + prefix + target, headers={"Cookie": cookie} if cookie else {})
    assert status != 200 or not (b"root:" in reply or SECRET.encode() in reply or b"GGUF" in reply[:4]
                                 or b"Model Workbench" in reply[:200] or b"description:" in reply), (status, reply[:200])


# --- names from the browser ------------------------------------------------------------------

OUTSIDE = ["../webui.py", "/etc/passwd", "..", "../../etc", "a/../../b", "x\x00y", "ü" * 70]


@pytest.mark.parametrize("name", OUTSIDE + ["leak"])
@pytest.mark.parametrize("endpoint", ["/apply_preset", "/delete_preset", "/apply_profile", "/delete_profile",
                                      "/open_conversation", "/load_model", "/plan"])
def test_browser_names_stay_inside_their_folder(client, root, endpoint, name):
    if endpoint == "/open_conversation" and name == "leak":
        name = LEAKING_CHAT
    args = {"/load_model": (name, "auto", *FORM), "/plan": (name, "auto", *FORM), "/load_b": (name, 1024)}.get(
        endpoint, (name,))
    with pytest.raises(Exception) as e:
        result = client.predict(*args, api_name=endpoint)
        if endpoint == "/plan":  # the plan answers with a sentence instead of raising
            raise RuntimeError(result[1])
    message = assert_one_sentence(str(e.value))
    assert re.search(r"not in the list of choices|names inside|leads outside|not allowed|no model|not a conversation"
                     r"|Cannot plan|no saved|refused", message, re.IGNORECASE), message
    assert SECRET not in message
    assert os.path.exists(root / "presets" / "generation" / "leak.yaml")  # a refused delete removed nothing


@pytest.mark.parametrize("name", OUTSIDE + ["leak", "shipped"])
@pytest.mark.parametrize("endpoint", ["/save_preset", "/save_profile"])
def test_saves_cannot_write_outside_or_over_what_they_must_not(client, root, endpoint, name):
    if name == "shipped":
        name = "Balanced" if endpoint == "/save_preset" else "cpu-8gb"
    args = (name, 0.5, 0.9, 40, 0.05, 1.0, 64, -1) if endpoint == "/save_preset" else (name, *FORM)
    if name == "leak":  # a symlink that leads out: the file outside must stay as it was
        before = (root.parent / "outside" / "preset.yaml").read_text()
    with pytest.raises(Exception) as e:
        client.predict(*args, api_name=endpoint)
    assert_one_sentence(str(e.value))
    if name == "leak":
        assert (root.parent / "outside" / "preset.yaml").read_text() == before


def test_conversation_list_survives_a_symlink_leading_out(client):
    choices = client.view_api(return_format="dict", print_info=False)
    assert choices  # the app built its Chat tab although user_data/chats holds a link that leads out


# --- nothing a client sends changes startup flags ---------------------------------------------

FLAG_WORDS = re.compile(r"(^|[^a-z])(share|listen|trust_remote_code|trust_pickle|auth|host|port|api_key|cors"
                        r"|allowed_paths|offload_folder)([^a-z]|$)")


def test_no_ui_endpoint_takes_a_startup_flag(client):
    info = client.view_api(return_format="dict", print_info=False)
    names = [(endpoint, (p.get("parameter_name") or "") + " " + (p.get("label") or ""))
             for endpoint, spec in info["named_endpoints"].items() for p in spec["parameters"]]
    assert names
    for endpoint, name in names:
        assert not FLAG_WORDS.search(name.lower().replace(" ", "_")), (endpoint, name)


@pytest.mark.parametrize("extra", [{"model": "../../etc/passwd"}, {"model": "/etc/passwd"}, {"model": "x\x00y"},
                                   {"model": "ü" * 500}, {"trust_pickle": True}, {"share": True},
                                   {"listen": True}, {"n_ctx": 10**9}, {"options": {"trust_remote_code": True}}])
def test_api_extras_cannot_name_files_or_change_flags(app, extra):
    status, _, reply = http("POST", app.api_url + "/v1/chat/completions",
                            body={"messages": CAPITAL_QUESTION, "max_tokens": 2, **extra}, headers=key(app))
    if status == 200:
        assert json.loads(reply)["model"] == SAMPLE_NAME  # served by the loaded model; the extra did nothing
    else:
        assert status == 400 and assert_one_sentence(json.loads(reply)["error"]["message"])
    _, _, models = http("GET", app.api_url + "/v1/models", headers=key(app))
    assert [m["id"] for m in json.loads(models)["data"]] == [SAMPLE_NAME]


def test_pickle_weights_cannot_be_loaded_from_the_browser(client, root):
    folder = root / "models" / "pickled"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    _, table = client.predict(api_name="/list_models")
    row = next(r for r in table["data"] if r[0] == "pickled")
    assert "pickle" in row[-1]
    with pytest.raises(Exception, match="not in the list of choices|pickle"):
        client.predict("pickled", "auto", *FORM, api_name="/load_model")



def _upload_event(app, path: str | None = None) -> tuple[bool, dict]:
    """Fire the dataset upload event as the browser does (it is private: no API name), naming `path`,
    or, without one, a file first sent through Gradio's upload route. Returns (success, last message)."""
    import httpx

    with httpx.Client(base_url=app.url, timeout=120) as web:
        assert web.post("login", data={"username": "workbench", "password": app.password}).status_code == 200
        if path is None:
            sent = web.post("gradio_api/upload", files={"files": ("notes.txt", b"Uploaded notes.\n", "text/plain")})
            path = sent.json()[0]
        config = web.get("config").json()
        labels = {c["id"]: c.get("props", {}).get("label") or "" for c in config["components"]}
        fn_index, trigger = next((i, t[0]) for i, d in enumerate(config["dependencies"]) for t in d["targets"]
                                 if t[1] == "upload" and labels.get(t[0], "").startswith("Upload a dataset"))
        session = f"upload-{os.getpid()}-{len(path)}"
        joined = web.post("gradio_api/queue/join", json={
            "data": [{"path": path, "meta": {"_type": "gradio.FileData"}}], "fn_index": fn_index,
            "session_hash": session, "trigger_id": trigger, "event_data": None})
        assert joined.status_code == 200, joined.text
        with web.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "process_completed":
                    return message["success"], message
    raise AssertionError("the upload event never completed")


def _datasets(root) -> list[str]:
    return sorted(os.listdir(root / "datasets")) if (root / "datasets").is_dir() else []


@pytest.mark.parametrize("target", ["secret", "/etc/passwd", "../webui.py"])
def test_a_dataset_upload_cannot_name_a_file_on_the_server(app, root, target):
    """The upload event takes only files the browser uploaded: a path on the server is refused."""
    path = str(root / "user_data" / "secret.txt") if target == "secret" else target
    before = _datasets(root)
    success, message = _upload_event(app, path)
    assert success is False and "not uploaded by a user" in message["output"]["error"], message
    assert _datasets(root) == before


def test_a_real_upload_lands_in_datasets(app, root):
    """The control for the test above: the same call with an uploaded file works."""
    success, message = _upload_event(app)
    assert success is True, message
    assert (root / "datasets" / "notes.txt").read_text() == "Uploaded notes.\n"
