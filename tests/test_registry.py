"""Backend choice: detection picks, the user's loader wins, impossible choices are named."""

from __future__ import annotations

import pytest

from workbench.backends import registry
from workbench.backends.fake_backend import SPEC as FAKE_SPEC
from workbench.detect import Detection
from workbench.errors import BackendUnavailable, WorkbenchError

REGISTRY = registry.default_registry()


def fake(fmt: str) -> Detection:
    return Detection(path="/x", format=fmt, evidence="test")


@pytest.mark.parametrize("fmt, backend", [("gguf", "llama.cpp"), ("transformers", "transformers"), ("gptq", "gptq")])
def test_default_backend_per_format(fmt, backend):
    assert REGISTRY.choose(fake(fmt)).name == backend
    assert REGISTRY.choose(fake(fmt), "auto").name == backend


def test_user_choice_wins_when_possible():
    assert REGISTRY.choose(fake("gguf"), "transformers").name == "transformers"


def test_impossible_choice_lists_valid_ones():
    with pytest.raises(WorkbenchError, match="cannot load a transformers model; use transformers"):
        REGISTRY.choose(fake("transformers"), "llama.cpp")
    with pytest.raises(WorkbenchError, match="Unknown loader 'vllm'"):
        REGISTRY.choose(fake("gguf"), "vllm")


def test_missing_library_gives_install_hint():
    spec = registry.BackendSpec("x", "X", "nowhere:X", ("gguf",), ("no_such_module_xyz",), "X needs xyz: run ./start.sh")
    with pytest.raises(BackendUnavailable, match="run ./start.sh .*no_such_module_xyz"):
        registry.check_installed(spec)


def test_importing_workbench_pulls_in_no_engine():
    import subprocess
    import sys

    code = ("import sys, workbench.detect, workbench.backends.registry, workbench.services.model_service, "
            "workbench.cli; bad = [m for m in ('torch', 'llama_cpp', 'gradio', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_backend_registers_once_and_is_chosen_by_its_own_format(tmp_path):
    reg = registry.Registry(registry.BUILTIN)
    reg.register(FAKE_SPEC)
    with pytest.raises(WorkbenchError, match="already registered"):
        reg.register(FAKE_SPEC)
    script = tmp_path / "tiny.json"
    script.write_text('{"workbench_fake_model": 1}')
    detection = reg.detect(str(script))
    assert detection.format == "fake" and reg.choose(detection).name == "fake"
    assert "fake" not in REGISTRY.names()  # another registry is untouched: nothing is global


def test_each_spec_says_which_load_options_apply():
    llama, transformers, gptq = (REGISTRY.get(n) for n in ("llama.cpp", "transformers", "gptq"))
    assert llama.uses("n_gpu_layers") and llama.uses("cache_type") and not llama.uses("dtype")
    assert transformers.uses("dtype") and transformers.uses("max_vram_gib") and not transformers.uses("n_gpu_layers")
    assert gptq.capabilities.can_train and transformers.capabilities.can_train and not llama.capabilities.can_train


def test_plugins_come_from_the_environment(monkeypatch):
    monkeypatch.setenv(registry.PLUGINS_ENV, "workbench.backends.fake_backend:SPEC")
    assert "fake" in registry.default_registry().names()
    monkeypatch.setenv(registry.PLUGINS_ENV, "no.such.module:SPEC")
    with pytest.raises(WorkbenchError, match="cannot be imported"):
        registry.default_registry()


def test_no_module_outside_backends_names_a_backend():
    """Backend names are compared and listed only in backends/: elsewhere the spec is asked.

    (Format names like "gptq" and export targets are file formats, not backends, and may appear.)"""
    import pathlib
    import re

    root = pathlib.Path(registry.__file__).parents[1]
    compares = re.compile(r"(backend|loader)[\w.\[\]\"']*\s*(==|!=|not in|in)\s*[(\[]?[\"']")
    lists = re.compile(r"[\"']auto[\"'],\s*[\"']llama\.cpp[\"']")
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if "backends" not in p.parts and (compares.search(p.read_text()) or lists.search(p.read_text()))]
    assert offenders == []
