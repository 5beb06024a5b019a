"""Helpers for the fast tier: fake model scripts, a registry with the fake backend, scratch roots."""

from __future__ import annotations

import json
import os

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
