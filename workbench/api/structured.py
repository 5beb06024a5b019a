"""Structured requests for the API: `response_format`, `tools` / `tool_choice`, tool calls in messages.

Owns turning OpenAI's `response_format` into the JSON schema GenParams carries
(`json_object`: any JSON object; `json_schema`: the given schema), validating `tools`,
`tool_choice` and `parallel_tool_calls` into a `ToolRequest`, reading an assistant
message's `tool_calls`, and checking that a schema a client sends (response format or a
tool's parameters) is valid JSON Schema before any engine sees it (llguidance's compiler,
which the Transformers backend constrains with, is the judge; no network, no file access).
It does not constrain decoding (the engines do) nor parse replies (tool_calls.py does).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from .schema import ApiError

MAX_SCHEMA_CHARS = 100_000
MAX_TOOLS = 128  # OpenAI's own limit
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolRequest:
    tools: list[dict]              # [{"type": "function", "function": {"name", "description", "parameters"}}]
    choice: str = "auto"           # auto, none, required, or function (then `name`)
    name: str | None = None        # the function tool_choice names
    parallel: bool = True          # parallel_tool_calls

    def offered(self) -> list[dict]:
        """The tools the model may call: none with tool_choice none, only the named one when one is named."""
        if self.choice == "none":
            return []
        return [t for t in self.tools if self.name is None or t["function"]["name"] == self.name]

    def forced(self) -> bool:
        """Whether the reply must be a call (decoding is then constrained to one)."""
        return self.choice in ("required", "function")


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


def parse_tools(body: dict) -> ToolRequest | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` of a chat request (None when it offers no tools)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise ApiError("'tool_choice' needs 'tools'.", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise ApiError(f"'tools' must be a list of up to {MAX_TOOLS} function tools.", "tools")
    clean = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not _NAME.match(fn["name"]):
            raise ApiError(f"tools[{i}] must be a function tool with a name of up to 64 letters, digits, _ or -.",
                           "tools")
        description = fn.get("description") or ""
        if not isinstance(description, str):
            raise ApiError(f"tools[{i}].function.description must be text.", "tools")
        entry = {"name": fn["name"], "description": description}
        if fn.get("parameters") is not None:
            entry["parameters"] = check_json_schema(fn["parameters"], "tools")
        clean.append({"type": "function", "function": entry})
    names = [t["function"]["name"] for t in clean]
    if len(set(names)) != len(names):
        raise ApiError("'tools' names a function twice.", "tools")
    parallel = body.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise ApiError("'parallel_tool_calls' must be true or false.", "parallel_tool_calls")
    if choice is None or choice in ("auto", "none", "required"):
        return ToolRequest(clean, choice or "auto", None, parallel)
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) and choice.get("type") == "function" \
        and isinstance(choice.get("function"), dict) else None
    if named is None:
        raise ApiError("'tool_choice' must be none, auto, required or {\"type\": \"function\", \"function\": "
                       "{\"name\": ...}}.", "tool_choice")
    if named not in names:
        raise ApiError(f"'tool_choice' names {str(named)[:64]!r}, which is not in 'tools'.", "tool_choice")
    return ToolRequest(clean, "function", named, parallel)


def message_tool_calls(message: dict, i: int) -> list[dict] | None:
    """An assistant message's `tool_calls` with each call's arguments as an object (as chat templates read them)."""
    calls = message.get("tool_calls")
    if calls is None or calls == []:
        return None
    if not isinstance(calls, list) or len(calls) > MAX_TOOLS:
        raise ApiError(f"messages[{i}].tool_calls must be a list of function calls.", "messages")
    clean = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or len(fn["name"]) > 64:
            raise ApiError(f"messages[{i}].tool_calls must be a list of function calls with names.", "messages")
        arguments = fn.get("arguments", "{}")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments or "{}")
            except json.JSONDecodeError:
                raise ApiError(f"messages[{i}].tool_calls[].function.arguments must be a JSON object.",
                               "messages") from None
        if not isinstance(arguments, dict):
            raise ApiError(f"messages[{i}].tool_calls[].function.arguments must be a JSON object.", "messages")
        call_id = call.get("id") if isinstance(call.get("id"), str) else ""
        clean.append({"id": call_id[:200], "type": "function", "function": {"name": fn["name"], "arguments": arguments}})
    return clean
