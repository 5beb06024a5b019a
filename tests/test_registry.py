"""Backend choice: detection picks, the user's loader wins, impossible choices are named."""

from __future__ import annotations

import pytest

from workbench.backends import registry
from workbench.detect import Detection
from workbench.errors import BackendUnavailable, WorkbenchError


def fake(fmt: str) -> Detection:
    return Detection(path="/x", format=fmt, evidence="test")


@pytest.mark.parametrize("fmt, backend", [("gguf", "llama.cpp"), ("transformers", "transformers"), ("gptq", "gptq")])
def test_default_backend_per_format(fmt, backend):
    assert registry.choose(fake(fmt)).name == backend
    assert registry.choose(fake(fmt), "auto").name == backend


def test_user_choice_wins_when_possible():
    assert registry.choose(fake("gguf"), "transformers").name == "transformers"


def test_impossible_choice_lists_valid_ones():
    with pytest.raises(WorkbenchError, match="cannot load a transformers model; use transformers"):
        registry.choose(fake("transformers"), "llama.cpp")
    with pytest.raises(WorkbenchError, match="Unknown loader 'vllm'"):
        registry.choose(fake("gguf"), "vllm")


def test_missing_library_gives_install_hint():
    spec = registry.BackendSpec("x", "nowhere:X", ("gguf",), ("no_such_module_xyz",), "X needs xyz: run ./start.sh")
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
