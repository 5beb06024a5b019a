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
# A real safetensors header is some kilobytes per hundred tensors, far below 1% of the weights; a
# larger one would cost seconds and hundreds of MB on every listing, so it is refused. Small files
# (tiny test models) may have up to 1 MiB of header.
_MAX_SAFETENSORS_HEADER = 16 * 1024 * 1024
_SMALL_HEADER = 1024 * 1024
# Geometry beyond these is a corrupt or hostile file, not a model (and would make the planner loop).
_MAX_LAYERS = 10_000
_MAX_DIM = 1 << 24


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
    tied_embeddings: bool | None = None  # the output head shares the embedding's weights (None: not said)
    tokenizer_strings: int | None = None  # GGUF: tokens plus merges in its metadata (parsing them costs memory)

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


def _geometry(value, what: str, name: str, limit: int = _MAX_DIM) -> int | None:
    """A model's count or size from its metadata: a positive int, None when absent or not a number,
    and a clear error when it is beyond any real model."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    if value > limit:
        raise DetectionError(f"{_shown(name)} is corrupt: it claims {value:,} {what} (more than {limit:,}); "
                             "replace the file.")
    return value


def _detect_gguf(path: str) -> Detection:
    header = read_gguf_header(path)
    md = header.metadata
    arch = md.get("general.architecture")

    def arch_key(suffix: str):
        return md.get(f"{arch}.{suffix}") if arch else None

    n_heads = arch_key("attention.head_count")
    n_kv = arch_key("attention.head_count_kv") or n_heads
    emb = arch_key("embedding_length")
    head_dim = arch_key("attention.key_length") or (emb // n_heads if isinstance(emb, int) and isinstance(n_heads, int)
                                                    and n_heads > 0 else None)
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
        n_layers=_geometry(arch_key("block_count"), "layers", os.path.basename(path), _MAX_LAYERS),
        context_length=_geometry(arch_key("context_length"), "tokens of context", os.path.basename(path), 1 << 30),
        embedding_size=_geometry(emb, "embedding width", os.path.basename(path)),
        n_heads=_geometry(n_heads, "attention heads", os.path.basename(path)),
        n_kv_heads=_geometry(n_kv, "key/value heads", os.path.basename(path)),
        head_dim=_geometry(head_dim, "head width", os.path.basename(path)),
        vocab_size=_geometry(vocab, "vocabulary entries", os.path.basename(path)),
        quantization=quant,
        parameter_count=sum(t.n_elements for t in header.tensors),
        size_bytes=header.file_size,
        chat_template=md.get("tokenizer.chat_template"),
        weight_files=(os.path.basename(path),),
        tokenizer_strings=(header.array_lengths.get("tokenizer.ggml.tokens", 0)
                           + header.array_lengths.get("tokenizer.ggml.merges", 0)),
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
        if 8 + n > size:
            raise DetectionError(f"{name} has a malformed safetensors header (claims {n} bytes); replace the file.")
        if n > min(_MAX_SAFETENSORS_HEADER, max(_SMALL_HEADER, size // 100)):
            raise DetectionError(f"{name} has a malformed safetensors header: {n:,} bytes of header for "
                                 f"{size:,} bytes of file is far more than a model's; replace the file.")
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
    qc = _read_json(qc_path) if os.path.isfile(qc_path) else {}
    if fmt == TRANSFORMERS and os.path.isfile(qc_path):
        fmt, bits, group = GPTQ, qc.get("bits"), qc.get("group_size")
        evidence.append("quantize_config.json present (AutoGPTQ-style checkpoint)")
    if fmt == GPTQ:  # AutoGPTQ-era weights go by many names: decide from the folder's contents
        from .gptq_layout import gptq_weights

        files = gptq_weights(folder, qc)
    else:
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
    head_dim = text_cfg.get("head_dim") or (emb // n_heads if isinstance(emb, int) and isinstance(n_heads, int)
                                            and n_heads > 0 else None)
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
        n_layers=_geometry(text_cfg.get("num_hidden_layers"), "layers", folder, _MAX_LAYERS),
        context_length=_geometry(text_cfg.get("max_position_embeddings"), "tokens of context", folder, 1 << 30),
        embedding_size=_geometry(emb, "embedding width", folder),
        n_heads=_geometry(n_heads, "attention heads", folder),
        n_kv_heads=_geometry(text_cfg.get("num_key_value_heads") or n_heads, "key/value heads", folder),
        head_dim=_geometry(head_dim, "head width", folder),
        vocab_size=_geometry(text_cfg.get("vocab_size"), "vocabulary entries", folder),
        quantization=quant,
        parameter_count=_count_parameters(headers, bits if fmt == GPTQ else None) if headers else None,
        size_bytes=sum(os.path.getsize(os.path.join(folder, f)) for f in used),
        chat_template=_chat_template(folder),
        weight_files=tuple(used),
        pickle_weights=not files,
        tied_embeddings=text_cfg.get("tie_word_embeddings", config.get("tie_word_embeddings"))
        if isinstance(text_cfg.get("tie_word_embeddings", config.get("tie_word_embeddings")), bool) else None,
    )


class DetectionCache:
    """Detections remembered by file identity, so listing the models again reads no file twice.

    A file's identity is its path, size, mtime_ns, inode and device; a folder's is that of
    every entry in it (model folders are flat), so replacing, growing or touching any file
    detects again. Errors are remembered the same way. At most `size` paths are kept.
    """

    def __init__(self, size: int = 1024):
        import threading
        from collections import OrderedDict

        self.size = size
        self._entries: OrderedDict = OrderedDict()  # (path, trust_pickle) -> (identity, Detection or error)
        self._lock = threading.Lock()

    @staticmethod
    def identity(path: str) -> tuple | None:
        """What changes when the model at `path` changes; None when it cannot be read."""
        try:
            st = os.stat(path)
            own = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            if not os.path.isdir(path):
                return own
            entries = []
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        est = entry.stat()
                    except OSError:
                        continue
                    entries.append((entry.name, est.st_size, est.st_mtime_ns, est.st_ino))
            return own, tuple(sorted(entries))
        except OSError:
            return None

    def get(self, path: str, trust_pickle: bool, detect_fn) -> Detection:
        """`detect_fn(path, trust_pickle)`, or what it answered before for this identity."""
        key = (os.path.abspath(path), trust_pickle)
        ident = self.identity(key[0])
        if ident is None:
            return detect_fn(path, trust_pickle)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and hit[0] == ident:
                self._entries.move_to_end(key)
                found = hit[1]
            else:
                found = None
        if found is None:
            try:
                found = detect_fn(path, trust_pickle)
            except DetectionError as e:
                found = e
            with self._lock:
                self._entries[key] = (ident, found)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        if isinstance(found, DetectionError):
            raise found
        return found
