"""Fixtures for the download tests: a fake hub (tests/downloads/hub_server.py) serving the sample GGUF
and small safetensors folders made here, HF_ENDPOINT pointed at it, and a DownloadService over a
temporary models/ folder with short stall timeouts."""

from __future__ import annotations

import json
import os
import struct

import pytest

from tests.downloads.hub_server import FakeHub
from workbench.downloads.service import DownloadService
from workbench.downloads.types import RetryPolicy
from workbench.paths import Paths
from workbench.profiles import ProfileStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOKEN = "hf_test_token"


def safetensors_bytes(tensors: dict[str, tuple[list[int], int]], seed: int = 1) -> bytes:
    """A valid safetensors file: {name: (shape, bytes per element)} with deterministic bf16/F32 data."""
    header, offset, blobs = {}, 0, []
    for i, (name, (shape, width)) in enumerate(tensors.items()):
        n = width
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16" if width == 2 else "F32", "shape": shape, "data_offsets": [offset, offset + n]}
        blobs.append(bytes((seed * 31 + i * 7 + j * 13) % 251 for j in range(min(n, 4096))) * (n // 4096 + 1))
        blobs[-1] = blobs[-1][:n]
        offset += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def tiny_folder(quant: dict | None = None) -> dict[str, bytes]:
    """A small Llama-layout Transformers folder (about 1.2 MiB of weights) as {filename: bytes}."""
    hidden, layers, vocab = 64, 2, 8192
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": 128, "num_hidden_layers": layers, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 2048,
              "torch_dtype": "bfloat16", "tie_word_embeddings": True}
    if quant:
        config["quantization_config"] = quant
    tensors = {"model.embed_tokens.weight": ([vocab, hidden], 2), "model.norm.weight": ([hidden], 2)}
    for i in range(layers):
        for part, shape in (("self_attn.q_proj", [hidden, hidden]), ("self_attn.k_proj", [32, hidden]),
                            ("self_attn.v_proj", [32, hidden]), ("self_attn.o_proj", [hidden, hidden]),
                            ("mlp.gate_proj", [128, hidden]), ("mlp.up_proj", [128, hidden]),
                            ("mlp.down_proj", [hidden, 128])):
            tensors[f"model.layers.{i}.{part}.weight"] = (shape, 2)
    return {"config.json": json.dumps(config, indent=2).encode(),
            "generation_config.json": b'{"do_sample": false}',
            "tokenizer_config.json": b'{"model_max_length": 2048}',
            "model.safetensors": safetensors_bytes(tensors),
            "README.md": b"# tiny\n", "pytorch_model.bin": b"\x80\x02 not loaded"}


@pytest.fixture(scope="session")
def hub():
    repos = {
        "org/smol-gguf": {GGUF_NAME: SAMPLE_GGUF, "README.md": b"# smol\n"},
        "org/tiny": tiny_folder(),
        "org/tiny-gptq": tiny_folder({"quant_method": "gptq", "bits": 4, "group_size": 128}),
        "org/tiny-awq": tiny_folder({"quant_method": "awq", "bits": 4}),
        "org/gated": tiny_folder(),
    }
    with FakeHub(repos, gated=("org/gated",), token=TOKEN) as server:
        yield server


@pytest.fixture
def fake_hub(hub, monkeypatch):
    """The session's hub with fresh counters and no faults; HF_ENDPOINT points at it, no token is set."""
    from tests.downloads.hub_server import Faults

    hub.faults = Faults()
    hub.reset_counts()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield hub
    hub.faults = Faults()


@pytest.fixture
def paths(tmp_path) -> Paths:
    os.makedirs(tmp_path / "models")
    hw = tmp_path / "presets" / "hardware"
    os.makedirs(hw)
    (hw / "tiny-box.yaml").write_text("description: a box with 256 MiB\nassumes: {ram_gib: 0.25}\n"
                                      "load: {n_ctx: 4096, max_ram_gib: 0.25}\n")
    return Paths(str(tmp_path))


@pytest.fixture
def service(paths, fake_hub) -> DownloadService:
    profiles = ProfileStore(os.path.join(paths.presets, "hardware"), os.path.join(paths.user_data, "settings.json"))
    return DownloadService(paths, profiles, RetryPolicy(stall_timeout_s=0.5, max_tries=3, backoff_s=0.05,
                                                        max_backoff_s=0.2))


def visible(models: str) -> list[str]:
    """What a user (and ModelService.list_models) sees in models/."""
    return sorted(n for n in os.listdir(models) if not n.startswith("."))
