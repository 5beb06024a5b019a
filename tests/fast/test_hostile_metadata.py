"""Hostile model metadata costs nothing on a listing: detection bounds what it reads, refuses absurd
geometry, and remembers what it found by file identity (the model list is asked three times per page load)."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.fast.fakes import fake_registry
from workbench.detect import detect
from workbench.errors import DetectionError

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
          "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100}


def _string(text: str) -> bytes:
    return struct.pack("<Q", len(text)) + text.encode()


def _gguf(n_tensors: int, kvs: list[bytes], rest: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + rest


def _kv_str(key: str, value: str) -> bytes:
    return _string(key) + struct.pack("<I", 8) + _string(value)


def _kv_u64(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<I", 10) + struct.pack("<Q", value)


def _folder(tmp_path, header_padding: int, weights: int) -> str:
    folder = tmp_path / "padded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    header = json.dumps({"__metadata__": {"pad": "x" * header_padding},
                         "w": {"dtype": "F32", "shape": [weights // 4], "data_offsets": [0, weights]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * weights)
    return str(folder)


def test_a_safetensors_header_far_larger_than_the_weights_is_refused(tmp_path):
    with pytest.raises(DetectionError, match="header: .* far more than a model's"):
        detect(_folder(tmp_path, 2 << 20, 1 << 20))  # 2 MiB of header for 1 MiB of weights


def test_an_ordinary_header_still_detects(tmp_path):
    assert detect(_folder(tmp_path, 100_000, 4 << 20)).n_layers == 2


def test_a_gguf_claiming_a_million_tensors_is_refused_before_reading_them(tmp_path):
    path = tmp_path / "many.gguf"
    path.write_bytes(_gguf(1_000_000, [_kv_str("general.architecture", "llama")], b"\0" * 64))
    with pytest.raises(DetectionError, match="claims 1000000 tensors"):
        detect(str(path))


@pytest.mark.parametrize("layers", [10**12, 2**63])
def test_absurd_layer_counts_are_refused(tmp_path, layers):
    path = tmp_path / "layers.gguf"
    path.write_bytes(_gguf(0, [_kv_str("general.architecture", "llama"), _kv_u64("llama.block_count", layers)], b"\0" * 256))
    with pytest.raises(DetectionError, match="claims .* layers"):
        detect(str(path))
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**CONFIG, "num_hidden_layers": layers}))
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(DetectionError, match="claims .* layers"):
        detect(str(folder))


def test_detection_is_remembered_by_file_identity(tmp_path, monkeypatch):
    import workbench.backends.registry as registry_module

    reads = []
    real = registry_module.detect_files
    monkeypatch.setattr(registry_module, "detect_files", lambda path, **kw: reads.append(path) or real(path, **kw))
    folder = _folder(tmp_path, 10, 1 << 10)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF\3\0")
    registry = fake_registry()
    for _ in range(3):  # three listings: each file is read once
        assert registry.detect(folder).n_layers == 2
        with pytest.raises(DetectionError):
            registry.detect(str(broken))
    assert sorted(reads) == sorted([folder, str(broken)])
    config = os.path.join(folder, "config.json")
    with open(config, "w") as f:
        json.dump({**CONFIG, "num_hidden_layers": 3}, f)
    os.utime(config, ns=(1, 1))  # a changed file is read again, whatever its time says
    assert registry.detect(folder).n_layers == 3 and len(reads) == 3
