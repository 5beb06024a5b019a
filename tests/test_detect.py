"""Detection by content: the real sample model, and crafted broken or hostile files."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct

import pytest

from tests.conftest import run_cli
from workbench.detect import GGUF, GPTQ, TRANSFORMERS, detect, read_safetensors_header
from workbench.errors import DetectionError, PickleRefused


class CreatesFile:
    """Unpickling this creates a file: proof that a loader ran code from the model file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_sample_gguf_metadata(sample_gguf):
    d = detect(sample_gguf)
    assert d.format == GGUF
    assert d.architecture == "llama"
    assert (d.n_layers, d.context_length, d.embedding_size) == (30, 8192, 576)
    assert (d.n_heads, d.n_kv_heads, d.head_dim) == (9, 3, 64)
    assert d.quantization == "Q4_1"
    assert 130e6 < d.parameter_count < 140e6
    assert d.vocab_size == 49152
    assert "<|im_start|>" in d.chat_template
    assert "magic" in d.evidence


def test_gguf_found_inside_a_folder(sample_gguf, tmp_path):
    os.symlink(sample_gguf, tmp_path / "model.gguf")
    assert detect(str(tmp_path)).format == GGUF


def test_derived_forms_are_detected_by_config(sample_transformers, sample_gptq, sample_autogptq):
    tf = detect(sample_transformers)
    assert tf.format == TRANSFORMERS and tf.n_layers == 30 and tf.chat_template
    assert 130e6 < tf.parameter_count < 140e6
    q = detect(sample_gptq)
    assert q.format == GPTQ and q.quantization == "gptq 4-bit g128"
    assert 130e6 < q.parameter_count < 140e6  # packed 4-bit weights counted as parameters
    old = detect(sample_autogptq)
    assert old.format == GPTQ and "quantize_config.json" in old.evidence


def test_truncated_gguf(sample_gguf, tmp_path):
    bad = tmp_path / "cut.gguf"
    with open(sample_gguf, "rb") as f:
        bad.write_bytes(f.read(5_000_000))
    with pytest.raises(DetectionError, match="truncated"):
        detect(str(bad))


def test_gguf_cut_inside_its_header(sample_gguf, tmp_path):
    bad = tmp_path / "header.gguf"
    with open(sample_gguf, "rb") as f:
        bad.write_bytes(f.read(3000))
    with pytest.raises(DetectionError, match="truncated or corrupt"):
        detect(str(bad))


@pytest.mark.parametrize("content, message", [
    (b"GGML" + b"\0" * 100, "not a GGUF file"),
    (b"", "empty"),
    (os.urandom(4096), "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 99) + b"\0" * 40, "version 99"),
    (b"GGUF" + struct.pack("<IQQ", 3, 2**62, 1) + b"\0" * 40, "corrupt"),
])
def test_bad_gguf_files(tmp_path, content, message):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    with pytest.raises(DetectionError, match=message):
        detect(str(bad))


def _folder_with(tmp_path, config: str | None, weights: bytes | None, weights_name="model.safetensors"):
    folder = tmp_path / "m"
    folder.mkdir(parents=True)
    if config is not None:
        (folder / "config.json").write_text(config)
    if weights is not None:
        (folder / weights_name).write_bytes(weights)
    return str(folder)


def test_malformed_safetensors_header(tmp_path):
    folder = _folder_with(tmp_path, '{"model_type": "llama"}', struct.pack("<Q", 10**12) + b"{}")
    with pytest.raises(DetectionError, match="malformed safetensors header"):
        detect(folder)
    folder2 = _folder_with(tmp_path / "x", '{"model_type": "llama"}', struct.pack("<Q", 5) + b"{oops")
    with pytest.raises(DetectionError, match="malformed safetensors header"):
        detect(folder2)


def test_safetensors_tensor_outside_file(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    with pytest.raises(DetectionError, match="truncated or corrupt"):
        read_safetensors_header(str(path))


def test_invalid_config_json(tmp_path):
    folder = _folder_with(tmp_path, "{not json", None)
    with pytest.raises(DetectionError, match="config.json .* is not valid JSON"):
        detect(folder)


def test_missing_shard(sample_transformers, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(os.path.join(sample_transformers, "config.json"), folder)
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(DetectionError, match="missing shard"):
        detect(str(folder))


def test_unsupported_quantization_is_named(tmp_path):
    folder = _folder_with(tmp_path, json.dumps({"quantization_config": {"quant_method": "awq"}}), b"")
    with pytest.raises(DetectionError, match="'awq'"):
        detect(folder)


def test_pickle_bin_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned.txt"
    folder = _folder_with(tmp_path, json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}),
                          pickle.dumps(CreatesFile(str(marker))), "pytorch_model.bin")
    with pytest.raises(PickleRefused, match="--trust-pickle"):
        detect(folder)
    lone = tmp_path / "weights.pt"
    lone.write_bytes(pickle.dumps(CreatesFile(str(marker)), protocol=4))
    with pytest.raises(PickleRefused):
        detect(str(lone))
    assert not marker.exists()


def test_trusted_pickle_still_loads_weights_only(tmp_path):
    """--trust-pickle lets the load start, but torch's weights_only loader refuses the payload."""
    marker = tmp_path / "pwned.txt"
    folder = _folder_with(tmp_path, json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                                                "hidden_size": 64, "num_hidden_layers": 1,
                                                "num_attention_heads": 4, "intermediate_size": 128,
                                                "vocab_size": 100}),
                          pickle.dumps(CreatesFile(str(marker))), "pytorch_model.bin")
    assert detect(folder, trust_pickle=True).pickle_weights
    result = run_cli("generate", folder, "-p", "hi", "--trust-pickle", "--max-tokens", "2")
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()


def test_cli_inspect_reports_bad_file_in_one_line(tmp_path):
    bad = tmp_path / "random.gguf"
    bad.write_bytes(os.urandom(2048))
    result = run_cli("inspect", str(bad))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "not a GGUF file" in result.stderr
