"""Generation presets: shipped ones, save/load/delete, strict YAML."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import ROOT
from workbench.generation_presets import GenerationPresetStore
from workbench.options import GenParams
from workbench.preset_store import PresetError


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "generation"
    shutil.copytree(os.path.join(ROOT, "presets", "generation"), folder)
    return GenerationPresetStore(str(folder))


def test_shipped_presets(store):
    assert {"Deterministic", "Balanced", "Creative"} <= set(store.names())
    assert store.get("Deterministic").gen_params().temperature == 0
    assert store.get("Creative").gen_params().temperature > store.get("Balanced").gen_params().temperature


def test_round_trip_and_protection(store):
    store.save("mine", GenParams(temperature=0.3, top_k=10, stop=["###"], seed=5, max_tokens=99))
    p = store.get("mine").gen_params()
    assert (p.temperature, p.top_k, p.stop, p.seed, p.max_tokens) == (0.3, 10, ["###"], 5, 99)
    store.delete("mine")
    assert "mine" not in store.names()
    with pytest.raises(PresetError, match="shipped"):
        store.delete("Balanced")
    with pytest.raises(PresetError, match="shipped"):
        store.save("Creative", GenParams())


@pytest.mark.parametrize("text, message", [
    ("params:\n  temprature: 0.5\n", "line 2: 'params.temprature' is not a valid key"),
    ("params:\n  temperature: hot\n", "line 2: 'params.temperature' has the wrong type"),
    ("params:\n  top_p: 7\n", "top_p must be in (0, 1]"),
    ("params:\n  stop: [1, 2]\n", "'params.stop' must be a list of strings"),
])
def test_bad_presets_name_the_key(store, text, message):
    with open(os.path.join(store.folder, "bad.yaml"), "w") as f:
        f.write(text)
    with pytest.raises(PresetError) as e:
        store.get("bad")
    assert message in str(e.value)
    good, bad = store.readable()
    assert "bad" in bad and {p.name for p in good} >= {"Balanced"}
