"""Shared fixtures: the real sample model in its three forms, and a scratch workbench root.

The Transformers and GPTQ forms are derived from the sample GGUF by the project's own
`python -m workbench convert` once per machine and cached outside the repo
(`$WORKBENCH_TEST_CACHE`, default ~/.cache/model-workbench/test-models), keyed by the
GGUF's checksum and the library versions, so the suite stays fast after the first run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SAMPLE_GGUF = os.path.join(ROOT, "models", SAMPLE_NAME)
CACHE_ROOT = os.environ.get("WORKBENCH_TEST_CACHE") or os.path.expanduser("~/.cache/model-workbench/test-models")
# The sample model answers this correctly with a plain system prompt (its built-in
# default system prompt makes the 135M model ramble).
CAPITAL_QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def run_cli(*args: str, timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m workbench ARGS` from the repo root."""
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "WORKBENCH_ROOT": ROOT, **(env or {})},
    )


def _cache_dir() -> str:
    h = hashlib.sha256()
    with open(SAMPLE_GGUF, "rb") as f:
        h.update(f.read(1 << 20))
    key = f"{h.hexdigest()[:12]}-tf{version('transformers')}-gptq{version('gptqmodel')}"
    return os.path.join(CACHE_ROOT, key)


def _derive(kind: str) -> str:
    """Path of the sample model converted to `kind`, converting (under a lock) if missing."""
    folder = _cache_dir()
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _derive_locked(folder, kind)


def _derive_locked(folder: str, kind: str) -> str:
    target = os.path.join(folder, kind)
    if os.path.isdir(target):
        return target
    if kind == "autogptq":  # AutoGPTQ-era layout: quantize_config.json + gptq_model-4bit-128g.safetensors
        src = _derive_locked(folder, "gptq")
        tmp = target + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        os.rename(os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "gptq_model-4bit-128g.safetensors"))
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
        config.pop("quantization_config", None)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        os.rename(tmp, target)
        return target
    src = SAMPLE_GGUF if kind == "transformers" else _derive_locked(folder, "transformers")
    result = run_cli("convert", src, "--to", kind, target)
    if result.returncode != 0:
        pytest.fail(f"deriving the {kind} form failed:\n{result.stderr[-3000:]}")
    return target


REAL_MODEL_FIXTURES = {"sample_gguf", "sample_transformers", "sample_gptq", "sample_autogptq"}


def pytest_collection_modifyitems(config, items):
    """Tiers: a test that uses a real model is `model`; tests/e2e is `browser`; both are also `slow`.

    `./test.sh -m "not model and not browser and not slow"` is the fast tier (README)."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
            item.add_marker(pytest.mark.slow)
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def sample_gguf() -> str:
    if not os.path.isfile(SAMPLE_GGUF):
        pytest.fail(f"{SAMPLE_GGUF} is missing: run ./test.sh (it fetches the sample model)")
    return SAMPLE_GGUF


@pytest.fixture(scope="session")
def sample_transformers(sample_gguf) -> str:
    return _derive("transformers")


@pytest.fixture(scope="session")
def sample_gptq(sample_transformers) -> str:
    return _derive("gptq")


@pytest.fixture(scope="session")
def sample_autogptq(sample_gptq) -> str:
    return _derive("autogptq")


@pytest.fixture
def workbench_root(tmp_path):
    """An empty workbench root (models/, presets/, user_data/) for tests that write."""
    for sub in ("models", "presets", "user_data"):
        (tmp_path / sub).mkdir()
    return tmp_path
