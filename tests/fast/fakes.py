"""Helpers for the fast tier: fake model scripts, a registry with the fake backend, scratch roots."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

from workbench.backends.fake_backend import SPEC as FAKE_SPEC
from workbench.backends.registry import BUILTIN, Registry


def fake_registry() -> Registry:
    return Registry((*BUILTIN, FAKE_SPEC))


def write_fake_model(models_folder, name: str = "fake.json", **script) -> str:
    """A fake model script in `models_folder`; its keys are the fake backend's (see fake_backend.py)."""
    path = os.path.join(str(models_folder), name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"workbench_fake_model": 1, **script}, f)
    return path


def scratch(tmp_path):
    """A workbench root with models/, presets/, user_data/ and datasets/."""
    for sub in ("models", "presets", "user_data", "datasets"):
        (tmp_path / sub).mkdir(exist_ok=True)
    return tmp_path


@contextlib.contextmanager
def serving_api(models):
    """The OpenAI-compatible API over `models` on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from workbench.api.server import build_api

    server = uvicorn.Server(uvicorn.Config(build_api(models), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
