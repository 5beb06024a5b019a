"""Structured output requests: `response_format` and JSON Schema checks for the API.

Owns turning OpenAI's `response_format` into the JSON schema GenParams carries
(`json_object`: any JSON object; `json_schema`: the given schema), and checking that a
schema a client sends is valid JSON Schema before any engine sees it (llguidance's
compiler, which the Transformers backend constrains with, is the judge; no
network, no file access). It does not constrain decoding: the engines do.
"""

from __future__ import annotations

from .schema import ApiError

MAX_SCHEMA_CHARS = 100_000


def check_json_schema(schema, param: str) -> dict:
    """`schema` if it is a JSON Schema object the engines can follow; else a 400 naming `param`."""
    import json

    if not isinstance(schema, dict):
        raise ApiError(f"'{param}' must be a JSON Schema object.", param)
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError):
        raise ApiError(f"'{param}' must be plain JSON.", param) from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise ApiError(f"'{param}' is {len(text):,} characters; the limit is {MAX_SCHEMA_CHARS:,}.", param)
    try:
        import llguidance
    except ImportError:
        return schema  # nothing to check with; llama.cpp's converter still refuses what it cannot follow
    try:
        problem = llguidance.LLMatcher.validate_grammar(llguidance.LLMatcher.grammar_from_json_schema(text))
    except (ValueError, RuntimeError) as e:
        problem = str(e)
    if problem:
        raise ApiError(f"'{param}' is not a valid JSON Schema ({problem.splitlines()[0][:200]}).", param)
    return schema


def response_schema(body: dict) -> dict | None:
    """The JSON schema `response_format` asks the reply to follow ({} = any JSON object; None = free text)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError("'response_format.type' must be one of text, json_object, json_schema.", "response_format")
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {}
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name", ""), str):
        raise ApiError("'response_format.json_schema' must be an object with a name and a schema.",
                       "response_format")
    schema = spec.get("schema", {"type": "object"})
    return check_json_schema(schema, "response_format") or {}
