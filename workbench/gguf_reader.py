"""Reads the header of a GGUF file: metadata key/values and tensor descriptions.

Pure Python over an mmap, bounds-checked at every read, so a truncated or hostile
file raises `DetectionError` instead of crashing or allocating without limit.
It owns parsing only; deciding what a model *is* lives in `detect.py`.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from .errors import DetectionError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

# Metadata value types of the GGUF spec: id -> struct format (None: string/array).
_SCALAR_FORMATS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
    10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9

# ggml tensor types: id -> (name, elements per block, bytes per block).
GGML_TYPES = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}

# llama.cpp's `general.file_type` (llama_ftype) -> the name users know.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE",
}

# String arrays longer than this (token lists) are counted, not kept.
_MAX_KEPT_ARRAY = 64
# A header claiming more entries than this is corrupt, whatever the file size.
_MAX_ENTRIES = 10_000_000
# Real models have some thousands of tensors and keys (a model with unmerged experts some tens of
# thousands); a header claiming more costs seconds to read on every listing, so it is refused.
_MAX_TENSORS = 200_000
_MAX_KEYS = 100_000


@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]
    type_id: int
    offset: int  # from the start of the data section

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def n_bytes(self) -> int | None:
        info = GGML_TYPES.get(self.type_id)
        if info is None:
            return None
        _, block, size = info
        return self.n_elements // block * size


@dataclass
class GGUFHeader:
    version: int
    metadata: dict = field(default_factory=dict)
    array_lengths: dict = field(default_factory=dict)  # key -> length, for every array
    tensors: list[GGUFTensor] = field(default_factory=list)
    data_offset: int = 0
    file_size: int = 0

    def expected_size(self) -> int | None:
        """Bytes the file must have for every tensor to be present; None if unknown."""
        end = self.data_offset
        for t in self.tensors:
            n = t.n_bytes()
            if n is None:
                return None
            end = max(end, self.data_offset + t.offset + n)
        return end


class _Cursor:
    """Bounds-checked little-endian reader over a buffer."""

    def __init__(self, buf, size: int, name: str):
        self.buf, self.size, self.pos, self.name = buf, size, 0, name

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise DetectionError(
                f"{self.name} is truncated or corrupt: its GGUF header runs past the end of the "
                f"file ({self.size} bytes); download it again."
            )

    def unpack(self, fmt: str):
        n = struct.calcsize(fmt)
        self._need(n)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        self._need(n)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        n = self.unpack("<Q")
        self._need(n)
        self.pos += n

    def skip(self, n: int) -> None:
        self._need(n)
        self.pos += n


def _read_value(cur: _Cursor, vtype: int, key: str, lengths: dict):
    if vtype in _SCALAR_FORMATS:
        return cur.unpack(_SCALAR_FORMATS[vtype])
    if vtype == _STRING:
        return cur.string()
    if vtype == _ARRAY:
        item_type = cur.unpack("<I")
        count = cur.unpack("<Q")
        if count > _MAX_ENTRIES:
            raise DetectionError(f"{cur.name} is corrupt: metadata array {key!r} claims {count} items.")
        lengths[key] = count
        if item_type in _SCALAR_FORMATS:
            width = struct.calcsize(_SCALAR_FORMATS[item_type])
            if count <= _MAX_KEPT_ARRAY:
                return [cur.unpack(_SCALAR_FORMATS[item_type]) for _ in range(count)]
            cur.skip(width * count)
            return None
        if item_type == _STRING:
            if count <= _MAX_KEPT_ARRAY:
                return [cur.string() for _ in range(count)]
            for _ in range(count):
                cur.skip_string()
            return None
        raise DetectionError(f"{cur.name} is corrupt: metadata array {key!r} has unknown item type {item_type}.")
    raise DetectionError(f"{cur.name} is corrupt: metadata {key!r} has unknown value type {vtype}.")


def read_gguf_header(path: str) -> GGUFHeader:
    """Parse the header of the GGUF file at `path`; raise DetectionError if it is not valid GGUF."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if size == 0:
        raise DetectionError(f"{name} is empty (0 bytes); copy the model file again.")
    with open(path, "rb") as f:
        if size < 24:
            raise DetectionError(f"{name} is too small to be a GGUF model ({size} bytes); copy it again.")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            if buf[:4] != GGUF_MAGIC:
                raise DetectionError(
                    f"{name} is not a GGUF file (it starts with {bytes(buf[:4])!r}, not b'GGUF')."
                )
            cur = _Cursor(buf, size, name)
            cur.pos = 4
            version = cur.unpack("<I")
            if version not in SUPPORTED_VERSIONS:
                raise DetectionError(
                    f"{name} is GGUF version {version}; only versions 2 and 3 are supported, "
                    "so convert it again with a current llama.cpp."
                )
            n_tensors = cur.unpack("<Q")
            n_kv = cur.unpack("<Q")
            if n_tensors > _MAX_TENSORS or n_kv > _MAX_KEYS:
                raise DetectionError(f"{name} is corrupt: its header claims {n_tensors} tensors and {n_kv} keys "
                                     f"(a real model has at most {_MAX_TENSORS:,} and {_MAX_KEYS:,}).")
            header = GGUFHeader(version=version, file_size=size)
            for _ in range(n_kv):
                key = cur.string()
                vtype = cur.unpack("<I")
                header.metadata[key] = _read_value(cur, vtype, key, header.array_lengths)
            for _ in range(n_tensors):
                tname = cur.string()
                n_dims = cur.unpack("<I")
                if n_dims > 8:
                    raise DetectionError(f"{name} is corrupt: tensor {tname!r} has {n_dims} dimensions.")
                shape = tuple(cur.unpack("<Q") for _ in range(n_dims))
                type_id = cur.unpack("<I")
                offset = cur.unpack("<Q")
                header.tensors.append(GGUFTensor(tname, shape, type_id, offset))
            alignment = header.metadata.get("general.alignment", 32)
            if not isinstance(alignment, int) or alignment <= 0:
                alignment = 32
            header.data_offset = (cur.pos + alignment - 1) // alignment * alignment
    expected = header.expected_size()
    if expected is not None and expected > size:
        raise DetectionError(
            f"{name} is truncated: its tensors need {expected} bytes but the file has {size}; "
            "the download or copy did not finish, so fetch it again."
        )
    return header
