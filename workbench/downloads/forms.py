"""Groups a repo's files into the forms a user can pick, and matches what the user asked for.

Each GGUF quant is a form (a single file, or the shards of a split GGUF); the root folder's
safetensors weights with config.json and the tokenizer files are one more form, whose kind
(plain Transformers, GPTQ, AWQ) comes from config.json's contents. The quant label of a GGUF
form comes from its file name here, for grouping only; the planner reads the real quantization
from the header. Pickle weights and other formats are listed as files no form takes.
"""

from __future__ import annotations

import json
import os
import re

from .errors import NoMatchingFile
from .types import (AWQ_FORM, GGUF_FORM, GPTQ_FORM, SAFETENSORS_FORM, TRANSFORMERS_FORM, Form, RepoFile,
                    RepoSnapshot)

_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?|TQ\d_0)(?![A-Za-z0-9])",
                    re.IGNORECASE)
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
# Files a Transformers folder needs beside its weights (all small, kept in git or LFS).
_FOLDER_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken", ".py")
_SKIP_PREFIXES = ("mmproj", "imatrix")  # vision projectors and importance matrices are not models


def gguf_label(filename: str) -> str:
    """The quant in a GGUF file name ("Q4_K_M"), or the name without extension when there is none."""
    base = _SHARD.sub(".gguf", os.path.basename(filename))
    found = _QUANT.findall(base)
    return found[-1].upper() if found else base[:-5]


def _safetensors_kind(config: dict | None) -> str:
    if config is None:
        return SAFETENSORS_FORM
    quant = config.get("quantization_config")
    method = str(quant.get("quant_method", "")).lower() if isinstance(quant, dict) else ""
    return {"gptq": GPTQ_FORM, "awq": AWQ_FORM}.get(method, TRANSFORMERS_FORM if not method else method)


def group_forms(snapshot: RepoSnapshot, config: dict | None = None,
                has_quantize_config: bool = False) -> tuple[list[Form], list[str]]:
    """(forms, files no form takes). `config` is the repo's config.json, when it has one."""
    repo_name = snapshot.repo_id.split("/")[-1]
    ggufs: dict[str, list[RepoFile]] = {}
    folder_weights, folder_extras, others = [], [], []
    for f in snapshot.files:
        base = os.path.basename(f.name)
        lower = base.lower()
        if base.startswith(".") or any(part.startswith(".") for part in f.name.split("/")):
            continue  # .gitattributes and other hidden files are no part of a model
        if lower.endswith(".gguf"):
            if lower.startswith(_SKIP_PREFIXES):
                others.append(f.name)
            else:
                key = _SHARD.sub(".gguf", f.name)
                ggufs.setdefault(key, []).append(f)
        elif "/" not in f.name and lower.endswith(".safetensors"):
            folder_weights.append(f)
        elif "/" not in f.name and lower.endswith(_FOLDER_SUFFIXES):
            folder_extras.append(f)
        elif not lower.startswith("readme"):
            others.append(f.name)
    forms: list[Form] = []
    labels: dict[str, int] = {}
    for key in ggufs:
        labels[gguf_label(key)] = labels.get(gguf_label(key), 0) + 1
    for key, files in sorted(ggufs.items()):
        files.sort(key=lambda f: f.name)
        label = gguf_label(key)
        if labels[label] > 1:  # two files with one quant (two models in one repo): the file name tells them apart
            label = os.path.basename(key)[:-5]
        name = os.path.basename(key) if len(files) == 1 else os.path.basename(key)[:-5]
        forms.append(Form(label, GGUF_FORM, tuple(files), tuple(files), name))
    if folder_weights and any(f.name == "config.json" for f in folder_extras):
        kind = GPTQ_FORM if has_quantize_config and _safetensors_kind(config) == TRANSFORMERS_FORM \
            else _safetensors_kind(config)
        files = tuple(sorted(folder_weights + folder_extras, key=lambda f: f.name))
        forms.append(Form(kind, kind, files, tuple(sorted(folder_weights, key=lambda f: f.name)),
                          repo_name if kind == TRANSFORMERS_FORM else f"{repo_name}-{kind}"))
    elif folder_weights:
        others += [f.name for f in folder_weights]
    forms.sort(key=lambda form: (form.kind != GGUF_FORM, form.size))
    return forms, others


def parse_config(raw: bytes | None) -> dict | None:
    """config.json's object, or None when it is missing or not JSON (the planner reports that)."""
    if not raw:
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def split_spec(spec: str) -> tuple[str, str | None]:
    """"org/name:Q4_K_M" -> ("org/name", "Q4_K_M"); a hub URL is accepted too."""
    spec = (spec or "").strip()
    url = re.match(r"^https?://[^/]+/(.*)$", spec)
    if url:  # https://host/org/name, .../tree/main, .../blob/main/file.gguf
        parts = [p for p in url.group(1).split("/") if p]
        rest = parts[2:]
        choice = "/".join(rest[2:]) if len(rest) >= 3 and rest[0] in ("blob", "resolve") else None
        return "/".join(parts[:2]), choice
    repo, _, choice = spec.partition(":")
    return repo, (choice.strip() or None)


def pick(forms: list[Form], choice: str, repo_id: str) -> Form:
    """The form named by `choice`: a quant or kind label (any case) or a file name in the repo."""
    wanted = choice.lower()
    for form in forms:
        if form.label.lower() == wanted:
            return form
    for form in forms:
        if any(f.name.lower() == wanted or os.path.basename(f.name).lower() == wanted for f in form.weights):
            return form
    offered = ", ".join(form.label for form in forms) or "none"
    raise NoMatchingFile(f"{repo_id} has no {choice!r}; it offers: {offered}.")
