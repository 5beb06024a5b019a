"""Answers "what is this path?" from file contents, never from names alone.

A GGUF file is recognised by its magic bytes; a folder by its `config.json`
(`quantization_config.quant_method`), `quantize_config.json` and the weight files it
holds. Safetensors headers are validated here, so a broken file is reported before an
engine touches it. Pickle weights are refused unless the caller opts in.
This module imports no torch, llama_cpp or gradio, so listing models is instant.
It does not choose a backend (that is `backends/registry.py`).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import asdict, dataclass, field

from .errors import DetectionError, PickleRefused
from .gguf_reader import FILE_TYPES, GGML_TYPES, GGUF_MAGIC, read_gguf_header

GGUF, GPTQ, TRANSFORMERS = "gguf", "gptq", "transformers"
FORMATS = (GGUF, GPTQ, TRANSFORMERS)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# A safetensors header larger than this is not a real model header.
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class Detection:
    """What detection found at a path; plain values only."""

    path: str                      # absolute path of the file (GGUF) or folder
    format: str                    # one of FORMATS
    evidence: str                  # why detection decided so, in words
    architecture: str | None = None
    n_layers: int | None = None
    context_length: int | None = None
    embedding_size: int | None = None
    n_heads: int | None = None
    n_kv_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    quantization: str | None = None  # "Q4_1", "gptq 4-bit g128", "bfloat16", ...
    parameter_count: int | None = None
    size_bytes: int = 0
    chat_template: str | None = None
    weight_files: tuple[str, ...] = field(default_factory=tuple)
    pickle_weights: bool = False   # weights are pickle files (loaded with weights_only)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_files"] = list(self.weight_files)
        d["has_chat_template"] = bool(self.chat_template)
        d.pop("chat_template")
        return d


def _shown(path: str, limit: int = 160) -> str:
    """`path` as it can appear in a one-line message: control characters escaped, a long one shortened."""
    text = path if path.isprintable() else path.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit // 2] + "..." + text[-limit // 2:]


def detect(path: str, trust_pickle: bool = False) -> Detection:
    """Detect the model at `path` (a GGUF file, a folder holding one, or a HF-style folder)."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise DetectionError(f"{_shown(path)} does not exist; check the name or put the model in models/.")
    if os.path.isdir(path):
        return _detect_folder(path, trust_pickle)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == GGUF_MAGIC:
        return _detect_gguf(path)
    name = os.path.basename(path)
    if not head:
        raise DetectionError(f"{name} is empty (0 bytes); copy the model file again.")
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:2] == b"PK":
        raise PickleRefused(
            f"{name} is a pickle/PyTorch checkpoint, which can run code when loaded; "
            "use a GGUF or safetensors model instead."
        )
    if name.endswith(".gguf"):
        raise DetectionError(
            f"{name} is named .gguf but is not a GGUF file (it starts with {head[:4]!r}); "
            "download it again."
        )
    if name.endswith(".safetensors"):
        raise DetectionError(
            f"{name} is a lone safetensors file; point at the folder that holds it with its config.json."
        )
    raise DetectionError(
        f"{name} is not a model the workbench knows: expected a GGUF file or a folder with "
        "config.json and safetensors weights."
    )


def _detect_gguf(path: str) -> Detection:
    header = read_gguf_header(path)
    md = header.metadata
    arch = md.get("general.architecture")

    def arch_key(suffix: str):
        return md.get(f"{arch}.{suffix}") if arch else None

    n_heads = arch_key("attention.head_count")
    n_kv = arch_key("attention.head_count_kv") or n_heads
    emb = arch_key("embedding_length")
    head_dim = arch_key("attention.key_length") or (emb // n_heads if emb and n_heads else None)
    ftype = md.get("general.file_type")
    quant = FILE_TYPES.get(ftype) if isinstance(ftype, int) else None
    if quant is None:
        counts: dict[str, int] = {}
        for t in header.tensors:
            tname = GGML_TYPES.get(t.type_id, (f"type{t.type_id}",))[0]
            counts[tname] = counts.get(tname, 0) + t.n_elements
        quant = max(counts, key=counts.get) if counts else None
    vocab = header.array_lengths.get("tokenizer.ggml.tokens") or arch_key("vocab_size")
    return Detection(
        path=path,
        format=GGUF,
        evidence=f"GGUF magic bytes, version {header.version}, {len(header.tensors)} tensors",
        architecture=arch,
        n_layers=arch_key("block_count"),
        context_length=arch_key("context_length"),
        embedding_size=emb,
        n_heads=n_heads if isinstance(n_heads, int) else None,
        n_kv_heads=n_kv if isinstance(n_kv, int) else None,
        head_dim=head_dim,
        vocab_size=vocab,
        quantization=quant,
        parameter_count=sum(t.n_elements for t in header.tensors),
        size_bytes=header.file_size,
        chat_template=md.get("tokenizer.chat_template"),
        weight_files=(os.path.basename(path),),
    )


def _read_json(path: str) -> dict:
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DetectionError(f"{name} in {os.path.dirname(path)} is not valid JSON ({e}); fix or replace it.") from e
    if not isinstance(data, dict):
        raise DetectionError(f"{name} in {os.path.dirname(path)} must hold a JSON object.")
    return data


def read_safetensors_header(path: str) -> dict:
    """Validate a safetensors file's header and return it; raise DetectionError if malformed."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise DetectionError(f"{name} is too small to be a safetensors file ({size} bytes).")
        (n,) = struct.unpack("<Q", raw_len)
        if n > _MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise DetectionError(f"{name} has a malformed safetensors header (claims {n} bytes); replace the file.")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DetectionError(f"{name} has a malformed safetensors header ({e}); replace the file.") from e
    if not isinstance(header, dict):
        raise DetectionError(f"{name} has a malformed safetensors header; replace the file.")
    data_size = size - 8 - n
    for tname, info in header.items():
        if tname == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise DetectionError(
                f"{name} is truncated or corrupt: tensor {tname!r} lies outside the file; fetch it again."
            )
    return header


def _count_parameters(headers: list[dict], bits: int | None) -> int:
    total = 0
    for header in headers:
        for tname, info in header.items():
            if tname == "__metadata__":
                continue
            if bits and tname.endswith((".qzeros", ".scales", ".g_idx")):
                continue
            n = 1
            for d in info.get("shape", []):
                n *= d
            if bits and tname.endswith(".qweight"):
                n = n * 32 // bits
            total += n
    return total


def _weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise DetectionError(f"model.safetensors.index.json in {folder} has no weight_map; replace it.")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise DetectionError(f"{folder} is missing shard(s) {', '.join(missing)}; download them too.")
        return files
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))


def _chat_template(folder: str) -> str | None:
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8", errors="replace") as f:
            return f.read()
    tok_cfg = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(tok_cfg):
        try:
            template = _read_json(tok_cfg).get("chat_template")
        except DetectionError:
            return None
        if isinstance(template, str):
            return template
        if isinstance(template, list):  # named templates: take "default"
            for item in template:
                if isinstance(item, dict) and item.get("name") == "default":
                    return item.get("template")
    return None


def _detect_folder(folder: str, trust_pickle: bool) -> Detection:
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
        if len(ggufs) == 1:
            return _detect_gguf(os.path.join(folder, ggufs[0]))
        if ggufs:
            listed = ", ".join(ggufs[:5]) + (f" and {len(ggufs) - 5} more" if len(ggufs) > 5 else "")
            raise DetectionError(f"{_shown(folder)} holds several GGUF files ({listed}); pick one file.")
        raise DetectionError(f"{folder} has no config.json and no GGUF file, so it is not a model folder.")
    config = _read_json(config_path)
    quant_cfg = config.get("quantization_config")
    evidence = []
    bits = group = None
    fmt = TRANSFORMERS
    if isinstance(quant_cfg, dict):
        method = str(quant_cfg.get("quant_method", "")).lower()
        if method == "gptq":
            fmt, bits, group = GPTQ, quant_cfg.get("bits"), quant_cfg.get("group_size")
            evidence.append("config.json quantization_config.quant_method == 'gptq'")
        elif method:
            raise DetectionError(
                f"{folder} is quantized with {method!r}, which the workbench does not load; "
                "use a GGUF, GPTQ or unquantized safetensors model."
            )
    qc_path = os.path.join(folder, "quantize_config.json")
    if fmt == TRANSFORMERS and os.path.isfile(qc_path):
        qc = _read_json(qc_path)
        fmt, bits, group = GPTQ, qc.get("bits"), qc.get("group_size")
        evidence.append("quantize_config.json present (AutoGPTQ-style checkpoint)")
    files = _weight_files(folder)
    pickles = sorted(f for f in os.listdir(folder) if f.endswith(PICKLE_SUFFIXES))
    if not files:
        if pickles and not trust_pickle:
            raise PickleRefused(
                f"{os.path.basename(folder)} has only pickle weights ({', '.join(pickles)}), which can run "
                "code when loaded; convert them to safetensors or pass --trust-pickle to load them with weights_only."
            )
        if not pickles:
            raise DetectionError(f"{folder} has config.json but no weight files (*.safetensors); copy the weights too.")
    headers = [read_safetensors_header(os.path.join(folder, f)) for f in files]
    if fmt == TRANSFORMERS:
        evidence.append("config.json with safetensors weights" if files else "config.json with pickle weights")
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    n_heads = text_cfg.get("num_attention_heads")
    emb = text_cfg.get("hidden_size")
    head_dim = text_cfg.get("head_dim") or (emb // n_heads if emb and n_heads else None)
    archs = config.get("architectures")
    if fmt == GPTQ:
        quant = f"gptq {bits}-bit" + (f" g{group}" if group else "")
    else:
        quant = config.get("dtype") or config.get("torch_dtype")
    used = files or pickles
    return Detection(
        path=folder,
        format=fmt,
        evidence="; ".join(evidence),
        architecture=(archs[0] if isinstance(archs, list) and archs else None) or config.get("model_type"),
        n_layers=text_cfg.get("num_hidden_layers"),
        context_length=text_cfg.get("max_position_embeddings"),
        embedding_size=emb,
        n_heads=n_heads,
        n_kv_heads=text_cfg.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        vocab_size=text_cfg.get("vocab_size"),
        quantization=quant,
        parameter_count=_count_parameters(headers, bits if fmt == GPTQ else None) if headers else None,
        size_bytes=sum(os.path.getsize(os.path.join(folder, f)) for f in used),
        chat_template=_chat_template(folder),
        weight_files=tuple(used),
        pickle_weights=not files,
    )
