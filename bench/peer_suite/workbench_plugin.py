"""pytest plugin that points llama.cpp's server tests at the workbench API instead of llama-server.

Loaded by run.py with `-p workbench_plugin` while pytest runs inside llama.cpp's
`tools/server/tests` folder. It replaces `utils.ServerProcess.start/stop` so a test's
"server" is `webui.py --api-only` serving the sample GGUF on the port the test expects,
with the test's server options mapped where the workbench has them:

    n_ctx / n_slots  -> --n-ctx (per request: llama-server splits n_ctx over its slots) and --parallel
    n_batch          -> --n-batch
    api_key          -> --api-key
    cors_origins     -> --api-cors-origin (each one)

Everything else (model files, --alias, --n-predict, server-wide temperature/seed, --jinja,
chat templates, slots, metrics...) is llama-server's own and is not mapped. A server is
reused by the next test when its mapped options are the same (loading per test would take
most of the run); all are stopped at the end. Requests to llama-server's unprefixed OpenAI
routes (`/chat/completions`, `/models`) go to the workbench's `/v1/...` (OpenAI's base path);
its own routes (`/completion`, `/completions`, `/embeddings`, `/tokenize`, `/props`...) are
sent as they are. Each test's outcome goes to $PEER_SUITE_RESULTS (JSON lines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import pytest

WORKBENCH_ROOT = os.environ["PEER_SUITE_WORKBENCH"]
MODEL = os.environ.get("PEER_SUITE_MODEL", os.path.join(WORKBENCH_ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
PYTHON = os.environ.get("PEER_SUITE_PYTHON", sys.executable)
RESULTS = os.environ.get("PEER_SUITE_RESULTS")
LOG_DIR = os.environ.get("PEER_SUITE_LOGS")

# utils.py imports wget (downloads of test models); nothing here downloads.
sys.modules.setdefault("wget", types.SimpleNamespace(download=lambda *a, **k: None))

# llama-server's unprefixed OpenAI routes; its "/completions" (without /v1) is its own /completion, so it stays.
OPENAI_ALIASES = {"/chat/completions": "/v1/chat/completions", "/models": "/v1/models"}

_running: dict = {}  # (port, options) -> Popen; at most one per port


def _options(server) -> tuple:
    slots = server.n_slots or 1
    n_ctx = max(64, server.n_ctx // slots) if server.n_ctx else 4096
    return (("--n-ctx", n_ctx), ("--parallel", min(slots, 4)), ("--n-batch", server.n_batch or 512),
            ("--api-key", server.api_key), ("--api-cors-origin", server.cors_origins))


def _stop_process(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _start(self, timeout_seconds: int = 120) -> None:
    import requests
    import utils

    key = (self.server_port, _options(self))
    for old_key, proc in list(_running.items()):
        if old_key[0] == self.server_port and (old_key != key or proc.poll() is not None):
            _stop_process(proc)
            del _running[old_key]
    utils.server_instances.add(self)
    if key in _running:
        self.process = _running[key]
        return
    args = [PYTHON, os.path.join(WORKBENCH_ROOT, "webui.py"), "--api-only", "--host", self.server_host,
            "--api-port", str(self.server_port), "--model", MODEL, "--threads", "2"]
    for flag, value in key[1]:
        if value is None:
            continue
        for v in (value.split(",") if flag == "--api-cors-origin" else [value]):
            args += [flag, str(v).strip()]
    log = open(os.path.join(LOG_DIR, f"server-{self.server_port}.log"), "a") if LOG_DIR else subprocess.DEVNULL
    if LOG_DIR:
        log.write(f"\n=== {' '.join(args)}\n")
        log.flush()
    proc = subprocess.Popen(args, cwd=WORKBENCH_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _running[key] = proc
    self.process = proc
    headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
    deadline = time.time() + timeout_seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"workbench API server exited with code {proc.returncode}")
        try:
            r = requests.get(self.make_url("/health"), headers=headers, timeout=2)
            if r.status_code == 200 and r.json().get("model_loaded"):
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise TimeoutError(f"workbench API server did not start within {timeout_seconds} s")


def _stop(self) -> None:
    import utils

    utils.server_instances.discard(self)
    self.process = None  # the process stays up for the next test with the same options


def _make_url(original):
    def make_url(self, path: str, host: str | None = None) -> str:
        route, sep, query = path.partition("?")
        return original(self, OPENAI_ALIASES.get(route, route) + sep + query, host)
    return make_url


def pytest_configure(config):
    sys.path.insert(0, str(config.rootpath))
    import utils

    utils.ServerProcess.start = _start
    utils.ServerProcess.stop = _stop
    utils.ServerProcess.make_url = _make_url(utils.ServerProcess.make_url)
    utils.ServerPreset.load_all = staticmethod(lambda: None)


def pytest_unconfigure(config):
    for proc in _running.values():
        _stop_process(proc)
    _running.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not RESULTS:
        return
    failed_setup = report.when == "setup" and report.outcome != "passed"
    if report.when == "call" or failed_setup:
        if report.outcome == "skipped":
            message = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        elif report.outcome == "failed":
            message = _short(report, call)
        else:
            message = ""
        with open(RESULTS, "a") as f:
            f.write(json.dumps({"nodeid": item.nodeid, "outcome": report.outcome, "message": message}) + "\n")


def _short(report, call) -> str:
    """The failing assertion or exception in a line or two."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    return text.strip()[:600]
