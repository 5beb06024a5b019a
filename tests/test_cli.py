"""The headless CLI on the real sample model: models, inspect, generate, convert."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SAMPLE_NAME, run_cli


def test_models_lists_the_sample(sample_gguf):
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    row = rows[SAMPLE_NAME]
    assert (row["format"], row["backend"], row["quantization"]) == ("gguf", "llama.cpp", "Q4_1")
    assert row["size_bytes"] > 90 * 2**20


def test_inspect_json(sample_gptq):
    result = run_cli("inspect", sample_gptq, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "gptq" and info["backend"] == "gptq" and info["n_layers"] == 30


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("form", ["sample_gguf", "sample_transformers", "sample_gptq"])
def test_generate_json_on_every_form(form, request):
    path = request.getfixturevalue(form)
    result = run_cli("generate", path, "-p", "What is the capital of France?", "--chat",
                     "--system", "You are a helpful assistant.", "--temperature", "0", "--max-tokens", "16",
                     "--n-ctx", "1024", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "Paris" in out["text"]
    assert out["tokens"] >= 5
    for key in ("ttft_s", "tokens_per_s", "load_s", "peak_rss_mb"):
        assert out[key] > 0, key


def test_generate_streams_plain_text(sample_gguf):
    result = run_cli("generate", sample_gguf, "-p", "The capital of France is", "--temperature", "0",
                     "--max-tokens", "8", "--stop", ".")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    assert "tok/s" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["generate", "models/nope.gguf", "-p", "x"], "does not exist"),
    (["generate", SAMPLE_NAME, "-p", "x", "--loader", "gptq"], "cannot load a gguf model"),
    (["generate", "models/" + SAMPLE_NAME, "-p", "x", "--n-ctx", "4"], "too small"),
    (["generate", "models/" + SAMPLE_NAME, "-p", "x", "--loader", "gptq"], "use llama.cpp or transformers"),
    (["convert", "models/" + SAMPLE_NAME, "--to", "gptq", "/tmp/never-written"], "convert a GGUF with --to transformers first"),
])
def test_bad_input_gives_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert message in lines[0]


def test_generate_with_a_json_schema_prints_json_that_matches(sample_gguf, tmp_path):
    schema = tmp_path / "city.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "city": {"type": "string"}, "continent": {"enum": ["Europe", "Asia"]},
        "sights": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
        "required": ["city", "continent", "sights"], "additionalProperties": False}))
    result = run_cli("generate", sample_gguf, "-p", "Describe Paris as JSON.", "--chat", "--temperature", "0.8",
                     "--seed", "3", "--max-tokens", "120", "--json-schema", str(schema), "--json")
    assert result.returncode == 0, result.stderr
    reply = json.loads(json.loads(result.stdout)["text"])
    assert set(reply) == {"city", "continent", "sights"} and reply["continent"] in ("Europe", "Asia")


@pytest.mark.parametrize("content, message", [("{not json", "is not valid JSON"),
                                              ('{"type": "strin"}', "not a valid JSON Schema")])
def test_a_bad_json_schema_file_is_one_line(tmp_path, content, message):
    schema = tmp_path / "bad.json"
    schema.write_text(content)
    result = run_cli("generate", "models/" + SAMPLE_NAME, "-p", "x", "--json-schema", str(schema))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
