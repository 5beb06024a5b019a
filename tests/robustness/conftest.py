"""Shared pieces of the robustness suite: the one-clear-sentence check, a launched app on
a scratch root, and builders for hostile files (broken models, hostile chat templates,
bad presets).

Every builder writes into a folder it is given, so the real models/, presets/ and
user_data/ are never touched; each corpus is a table that a new case extends by one line.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import urllib.error
import urllib.request

from tests.conftest import SAMPLE_NAME  # noqa: F401 - re-exported for the test modules
from tests.ui.test_webui import App, free_port, scratch_root  # noqa: F401 - scratch_root likewise


def assert_one_sentence(text: str) -> str:
    """`text` is one line a user can read: not empty, no traceback, no multi-line dump."""
    text = str(text).strip()
    assert text, "empty error message"
    assert "Traceback" not in text and 'File "' not in text, text
    assert "\n" not in text, f"more than one line: {text!r}"
    assert len(text) <= 600, f"too long for one sentence ({len(text)} chars): {text[:200]}..."
    return text


def http(method: str, url: str, body=None, headers: dict | None = None, raw: bytes | None = None,
         timeout: float = 120) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one request; HTTP errors are answers, not exceptions."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def launch(root, *args: str) -> App:
    """webui.py on `root` (a scratch workbench root), with the API beside it on a free port."""
    api_port = free_port()
    app = App(*args, "--api", "--api-port", str(api_port), root=str(root))
    app.api_url = f"http://127.0.0.1:{api_port}"
    return app


# --- broken model files ----------------------------------------------------------------

def _gguf(n_tensors: int, n_kv: int, rest: bytes = b"", version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, n_kv) + rest


def _kv_string(key: bytes, claimed_len: int, value: bytes = b"") -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", claimed_len) + value


def _safetensors(header: dict, claimed_len: int | None = None, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", claimed_len if claimed_len is not None else len(raw)) + raw + data


CONFIG = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2,
                     "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100})


def _sample_head(sample: str, n: int) -> bytes:
    with open(sample, "rb") as f:
        return f.read(n)


# name -> (how to build it from the sample GGUF's path, a fragment the error must contain).
# A str value is a file; a dict value is a folder of {file name: bytes}.
HOSTILE_MODELS = {
    "truncated.gguf": (lambda s: _sample_head(s, 5_000_000), "truncated"),
    "cut-in-header.gguf": (lambda s: _sample_head(s, 3000), "truncated or corrupt"),
    "absurd-tensor-count.gguf": (lambda s: _gguf(2**62, 1, b"\0" * 64), "corrupt"),
    "absurd-key-count.gguf": (lambda s: _gguf(0, 2**40, b"\0" * 64), "corrupt"),
    "absurd-string-length.gguf": (lambda s: _gguf(0, 1, _kv_string(b"general.name", 2**60)), "truncated or corrupt"),
    "absurd-key-length.gguf": (lambda s: _gguf(0, 1, struct.pack("<Q", 2**63) + b"x" * 64), "truncated or corrupt"),
    "absurd-array.gguf": (lambda s: _gguf(0, 1, struct.pack("<Q", 3) + b"arr" + struct.pack("<IIQ", 9, 4, 2**40)),
                          "corrupt"),
    "absurd-dimensions.gguf": (lambda s: _gguf(1, 0, struct.pack("<Q", 1) + b"t" + struct.pack("<I", 2**31)),
                               "corrupt"),
    "wrong-magic.gguf": (lambda s: b"GGML" + b"\0" * 100, "not a GGUF file"),
    "version-99.gguf": (lambda s: _gguf(0, 0, b"\0" * 40, version=99), "version 99"),
    "random-bytes.gguf": (lambda s: bytes(range(256)) * 16, "not a GGUF file"),
    "empty.gguf": (lambda s: b"", "empty"),
    "tiny.gguf": (lambda s: b"GGUF\3\0", "too small"),
    "weights.bin": (lambda s: pickle.dumps({"w": [1, 2, 3]}, protocol=4), "pickle"),
    "zip-checkpoint.pt": (lambda s: b"PK\x03\x04" + b"\0" * 60, "pickle"),
    "lone.safetensors": (lambda s: _safetensors({}), "lone safetensors"),
    "notes.txt": (lambda s: b"just some text\n", "not a model the workbench knows"),
    "pickle-only": (lambda s: {"config.json": CONFIG.encode(), "pytorch_model.bin": pickle.dumps([1])}, "pickle"),
    "lying-safetensors-header": (lambda s: {"config.json": CONFIG.encode(),
                                            "model.safetensors": _safetensors({}, claimed_len=2**40)},
                                 "malformed safetensors header"),
    "tensor-outside-file": (lambda s: {"config.json": CONFIG.encode(), "model.safetensors": _safetensors(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}})}, "truncated or corrupt"),
    "header-not-json": (lambda s: {"config.json": CONFIG.encode(),
                                   "model.safetensors": struct.pack("<Q", 4) + b"\xff\xfe{]"},
                        "malformed safetensors header"),
    "broken-config": (lambda s: {"config.json": b'{"model_type": "llama",', "model.safetensors": _safetensors({})},
                      "not valid JSON"),
    "config-is-a-list": (lambda s: {"config.json": b"[1, 2, 3]", "model.safetensors": _safetensors({})},
                         "JSON object"),
    "config-not-utf8": (lambda s: {"config.json": b"\xff\xfe\x00{", "model.safetensors": _safetensors({})},
                        "not valid JSON"),
    "unknown-quantization": (lambda s: {"config.json": json.dumps(
        {"model_type": "llama", "quantization_config": {"quant_method": "awq"}}).encode(),
        "model.safetensors": _safetensors({})}, "awq"),
    "missing-shard": (lambda s: {"config.json": CONFIG.encode(), "model.safetensors.index.json": json.dumps(
        {"weight_map": {"w": "model-00002-of-00002.safetensors"}}).encode()}, "missing shard"),
    "config-without-weights": (lambda s: {"config.json": CONFIG.encode()}, "no weight files"),
    "empty-folder": (lambda s: {}, "no config.json"),
}


def write_hostile_models(folder, sample_gguf: str) -> None:
    """Put every HOSTILE_MODELS entry into `folder`."""
    for name, (build, _) in HOSTILE_MODELS.items():
        content = build(sample_gguf)
        path = os.path.join(folder, name)
        if isinstance(content, dict):
            os.makedirs(path)
            for fname, data in content.items():
                with open(os.path.join(path, fname), "wb") as f:
                    f.write(data)
        else:
            with open(path, "wb") as f:
                f.write(content)


# --- hostile chat templates ------------------------------------------------------------

# name -> (template, a fragment the error must contain). Each replaces the sample's template.
HOSTILE_TEMPLATES = {
    "python-internals": ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    "function-globals": ("{{ raise_exception.__globals__['os'].system('id') }}", "unsafe|failed to render"),
    "huge-range": ("{% for i in range(10**9) %}x{% endfor %}", "loops more than|Range too big"),
    "nested-loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "loops more than|ran more than"),
    "nested-string-loops": ("{% set s = messages[0]['content'] * 5000 %}"
                            "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}", "ran more than"),
    "huge-string": ("{{ messages[0]['content'] * 10**10 }}", "exhaust memory"),
    "folded-huge-string": ("{{ 'x' * 10**9 }}", "exhaust memory"),
    "giant-exponent": ("{{ (messages|length + 6) ** 123456789 }}", "too large"),
    "endless-recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "calls itself"),
    "refuses-everything": ("{{ raise_exception('no chatting today') }}", "no chatting today"),
    # The red team's (issue 15): each used to burn seconds to minutes of CPU or gigabytes before a check.
    "chained-power": ("{{ 7 ** 1024 ** 1024 ** 1024 }}", "bits"),
    "squaring-loop": ("{% set ns = namespace(x=7) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                      "{% endfor %}{{ ns.x }}", "bits"),
    "center": ("{{ 'x'|center(500000000) }}", "width"),
    "printf-width": ("{{ '%0500000000d'|format(1) }}", "width"),
    "printf-operator": ("{{ '%0500000000d' % 1 }}", "width"),
    "str-format-width": ("{{ '{:>500000000}'.format(1) }}", "width"),
    "str-method-width": ("{{ 'x'.ljust(500000000) }}", "width"),
    "tojson-indent": ("{{ messages|tojson(indent=300000000) }}", "indent"),
    "indent": ("{{ 'a\nb'|indent(500000000) }}", "width"),
    "string-doubling": ("{% set ns = namespace(s='xy') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}{{ ns.s|length }}", "exceed|made more than"),
    "plus-doubling": ("{% set ns = namespace(s='xy') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", "exceed|made more than"),
    "list-sort": ("{{ ([3, 1, 2] * 6000000)|sort|length }}", "items"),
    "list-nesting": ("{% set ns = namespace(a=['x' * 1000]) %}{% for i in range(40) %}"
                     "{% set ns.a = [ns.a, ns.a] %}{% endfor %}{{ ns.a }}", "exceed"),
    "lipsum": ("{{ lipsum(n=100000) }}", "lipsum"),
    "replace-blowup": ("{{ ('x' * 100000)|replace('x', 'y' * 100000) }}", "exceed"),
    "join-blowup": ("{{ (['x' * 1000000] * 1000)|join }}", "exceed"),
    "batch-fill": ("{{ [1]|batch(1000000000, 'x')|list }}", "batch"),
    "output-loop": ("{% set s = 'x' * 10000000 %}{% for i in range(100) %}{{ s }}{% endfor %}", "exceed"),
}


def write_template_model(sample_gguf: str, dest: str, template: str) -> None:
    """A copy of the sample GGUF whose chat template is `template` (padded to the same length)."""
    from workbench.detect import detect

    old = detect(sample_gguf).chat_template.encode()
    new = template.encode()
    assert len(new) + 5 <= len(old), "a hostile template must be shorter than the sample's"
    new += b"{#" + b" " * (len(old) - len(new) - 4) + b"#}"  # a Jinja comment renders as nothing
    shutil.copyfile(sample_gguf, dest)
    with open(dest, "r+b") as f:
        head = f.read(10_000_000)
        at = head.index(struct.pack("<Q", len(old)) + old) + 8
        f.seek(at)
        f.write(new)


# --- bad presets -------------------------------------------------------------------------

# file name (without .yaml) -> (YAML text, a fragment the error must contain).
HOSTILE_GENERATION_PRESETS = {
    "broken-yaml": ("params:\n  temperature: [0.7\n", "not valid YAML"),
    "unknown-key": ("params:\n  temperature: 0.5\n  trust_remote_code: true\n", "not a valid key"),
    "unknown-top-key": ("share: true\nparams: {}\n", "not a valid key"),
    "wrong-type": ("params:\n  temperature: hot\n", "wrong type"),
    "stop-not-strings": ("params:\n  stop: [1, 2]\n", "list of strings"),
    "params-a-list": ("params: [1, 2]\n", "must be a mapping"),
    "root-a-list": ("- a\n- b\n", "must be a mapping"),
    "negative-top-p": ("params:\n  top_p: -1\n", "top_p"),
    "not-text": ("\x00\x01\x02\xff", "not valid YAML"),
    "alias-bomb": ("a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\ndescription: *c\n", "aliases"),
    "deep-nesting": ("params: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply|not valid YAML"),
    "python-tag": ("params: !!python/object/apply:os.system ['id']\n", "not valid YAML"),
}

HOSTILE_PROFILES = {
    "broken-yaml": ("load: {n_ctx: 2048\n", "not valid YAML"),
    "unknown-key": ("load:\n  trust_pickle: true\n", "not a valid key"),
    "unknown-top-key": ("listen: true\n", "not a valid key"),
    "wrong-type": ("load:\n  n_ctx: lots\n", "wrong type"),
    "bad-cache-type": ("load:\n  cache_type: q1\n", "cache type"),
    "negative-ram": ("assumes:\n  ram_gib: -4\n", "positive number"),
    "zero-cap": ("load:\n  max_ram_gib: 0\n", "positive number"),
    "tiny-context": ("load:\n  n_ctx: 3\n", "too small"),
    "alias-bomb": ("a: &a [x, x]\nb: &b [*a, *a]\ndescription: *b\n", "aliases"),
    "deep-nesting": ("load: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested too deeply|not valid YAML"),
}


def write_presets(folder, table: dict) -> None:
    os.makedirs(folder, exist_ok=True)
    for name, (text, _) in table.items():
        with open(os.path.join(folder, f"{name}.yaml"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None
