"""AutoGPTQ-era folders under any weight name: detection decides the weights from the folder's contents
and the loader is shown them under the name GPTQModel looks for (gptq_layout.py). The real load of such
a folder is tests/backends/test_gptq_names.py."""

from __future__ import annotations

import json
import os
import struct

import pytest

from workbench.detect import GPTQ, detect
from workbench.errors import DetectionError
from workbench.gptq_layout import loadable_folder

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
          "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100}


def _weights(path) -> None:
    header = json.dumps({"w.qweight": {"dtype": "I32", "shape": [8, 64], "data_offsets": [0, 2048]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 2048)


def _folder(tmp_path, weights: list[str], **quantize) -> str:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 128, **quantize}))
    (folder / "tokenizer.json").write_text("{}")
    for name in weights:
        _weights(folder / name)
    return str(folder)


@pytest.mark.parametrize("name, quantize", [
    ("gptq_model-4bit-64g.safetensors", {}),                               # another group size than the config's
    ("SmolLM2-GPTQ-4bit-128g.no-act-order.safetensors", {}),               # a model's own name
    ("weights.safetensors", {"model_basename": "weights"}),               # named in quantize_config.json
])
def test_autogptq_weights_under_any_name_are_shown_as_model_safetensors(tmp_path, name, quantize):
    d = detect(_folder(tmp_path, [name], **quantize))
    assert d.format == GPTQ and d.weight_files == (name,)
    with loadable_folder(d) as view:
        assert os.path.realpath(os.path.join(view, "model.safetensors")) == os.path.join(d.path, name)
        assert sorted(os.listdir(view)) == ["config.json", "model.safetensors", "quantize_config.json", "tokenizer.json"]
    assert not os.path.exists(view) and os.path.isfile(os.path.join(d.path, name))  # the user's file stays


def test_model_basename_picks_among_several(tmp_path):
    d = detect(_folder(tmp_path, ["old.safetensors", "new.safetensors"], model_basename="new"))
    assert d.weight_files == ("new.safetensors",)
    with loadable_folder(d) as view:
        assert os.path.realpath(os.path.join(view, "model.safetensors")).endswith("new.safetensors")
        assert "old.safetensors" not in os.listdir(view)


def test_several_weight_files_and_nothing_to_choose_is_a_clear_error(tmp_path):
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    with pytest.raises(DetectionError, match="several safetensors files .* says which"):
        detect(_folder(tmp_path / "one", ["a.safetensors", "b.safetensors"]))
    with pytest.raises(DetectionError, match="names the weights 'gone'"):
        detect(_folder(tmp_path / "two", ["a.safetensors"], model_basename="gone"))


def test_sharded_weights_with_their_own_index_name(tmp_path):
    shards = ["gptq_model-4bit-64g-00001-of-00002.safetensors", "gptq_model-4bit-64g-00002-of-00002.safetensors"]
    folder = _folder(tmp_path, shards)
    index = "gptq_model-4bit-64g.safetensors.index.json"
    with open(os.path.join(folder, index), "w") as f:
        json.dump({"weight_map": {"a": shards[0], "b": shards[1]}}, f)
    d = detect(folder)
    assert d.weight_files == tuple(shards)
    with loadable_folder(d) as view:
        assert os.path.realpath(os.path.join(view, "model.safetensors.index.json")) == os.path.join(folder, index)
        assert all(os.path.exists(os.path.join(view, s)) for s in shards)
