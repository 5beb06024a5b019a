"""The Chat tab's line that says which model replies (with a training run's adapter when loaded with one)."""

from __future__ import annotations

from types import SimpleNamespace

from workbench.options import LoadOptions
from workbench.ui.chat_tab import model_line


def _chat(loaded):
    return SimpleNamespace(models=SimpleNamespace(loaded=lambda: loaded))


def test_the_header_names_the_model_and_the_adapters_run():
    base = dict(name="SmolLM2-135M-Instruct", backend="transformers", n_ctx=2048)
    plain = SimpleNamespace(**base, options=LoadOptions())
    assert model_line(_chat(plain)) == "Talking to **SmolLM2-135M-Instruct** · transformers · context 2,048"
    tuned = SimpleNamespace(**base, options=LoadOptions(adapter="/srv/wb/user_data/runs/pirate-talk/adapter"))
    line = model_line(_chat(tuned))
    assert "with adapter **pirate-talk**" in line and "/srv" not in line
    assert model_line(_chat(None)).startswith("**No model is loaded**")
