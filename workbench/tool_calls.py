"""Tool calling in the model's own words: tools into the prompt, tool calls back out of the reply.

Owns three things, all plain text and JSON (no engine, no HTTP):
- `tool_preamble`: a system-prompt section describing the tools, for chat templates that
  do not render `tools` themselves (Hermes style: calls inside <tool_call></tool_call>);
- `calls_schema`: the JSON schema a constrained reply follows when a call is required
  (one call of one of the given tools: {"name": ..., "arguments": {...}});
- `parse_tool_calls` and `ToolCallStream`: the calls in a finished reply, and how much of a
  reply being streamed is plain content (text that may start a call is held back).

Families parsed: Hermes/Qwen (`<tool_call>{json}</tool_call>`), Llama 3.x (`<|python_tag|>`
and bare `{"name": ..., "parameters"|"arguments": ...}` objects, several separated by `;`),
Mistral (`[TOOL_CALLS] [{...}, ...]` and `[TOOL_CALLS]name[ARGS]{...}`), and a bare JSON
object or array of calls (what a constrained reply is). Only calls of the given tools count.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MARKERS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")
_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_MISTRAL_ARGS = re.compile(r"\s*([A-Za-z0-9_.-]{1,64})\[ARGS\]")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it


def tool_names(tools: list[dict]) -> list[str]:
    return [t["function"]["name"] for t in tools]


def tool_preamble(tools: list[dict]) -> str:
    """A system-prompt section that lists `tools` and says how to call them (for templates without tools)."""
    lines = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("You can call functions (tools) to answer. Their signatures, one JSON object per line:\n"
            f"<tools>\n{lines}\n</tools>\n"
            "To call one, reply with a JSON object holding its name and arguments inside tool_call tags, "
            "one call per tag:\n<tool_call>\n{\"name\": \"function name\", \"arguments\": {\"arg\": \"value\"}}\n"
            "</tool_call>")


def calls_schema(tools: list[dict]) -> dict:
    """JSON schema of one call to one of `tools`."""
    options = [{"type": "object", "properties": {
        "name": {"const": t["function"]["name"]},
        "arguments": t["function"].get("parameters") or {"type": "object"}},
        "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return options[0] if len(options) == 1 else {"anyOf": options}


def _json_values(text: str) -> list:
    """Successive JSON values in `text` (separated by whitespace, commas or semicolons); stops at other text."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while True:
        while i < len(text) and text[i] in " \t\r\n;,":
            i += 1
        if i >= len(text):
            return values
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return values
        values.append(value)


def _call(value, names: set[str]) -> ToolCall | None:
    """A ToolCall from one parsed object ({"name", "arguments"|"parameters"} or OpenAI's function shape)."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("function"), dict):
        value = value["function"]
    name = value.get("name")
    args = value.get("arguments", value.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if name not in names or not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _calls(values: list, names: set[str]) -> list[ToolCall]:
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    calls = [_call(v, names) for v in flat]
    return [c for c in calls if c is not None] if calls and all(calls) else []


def parse_tool_calls(text: str, tools: list[dict]) -> tuple[str, list[ToolCall]]:
    """(the reply's plain content, its tool calls); no calls when it holds none of the given tools."""
    names = set(tool_names(tools))
    if "<tool_call>" in text:
        head = text[:text.index("<tool_call>")]
        calls = _calls([v for body in _HERMES.findall(text) for v in _json_values(body)], names)
        if calls:
            return head.strip(), calls
    if "[TOOL_CALLS]" in text:
        head, tail = text.split("[TOOL_CALLS]", 1)
        named = _MISTRAL_ARGS.match(tail)
        if named:
            calls = _calls([{"name": named.group(1), "arguments": v} for v in _json_values(tail[named.end():])[:1]],
                           names)
        else:
            calls = _calls(_json_values(tail), names)
        if calls:
            return head.strip(), calls
    if "<|python_tag|>" in text:
        head, tail = text.split("<|python_tag|>", 1)
        calls = _calls(_json_values(tail), names)
        if calls:
            return head.strip(), calls
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        values = _json_values(stripped)
        calls = _calls(values, names)
        if calls:
            return "", calls
    return text, []


_CUT_CALL = re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"arguments"\s*:\s*', re.S)


def cut_call(text: str, tools: list[dict]) -> ToolCall | None:
    """The call a reply constrained to one call (tool_choice required or named) began before max_tokens cut it:
    its name and the arguments so far (not valid JSON), as OpenAI returns a call cut by the token budget."""
    match = _CUT_CALL.match(text)
    if match is None or match.group(1) not in tool_names(tools):
        return None
    return ToolCall(match.group(1), text[match.end():].rstrip())


class ToolCallStream:
    """Splits a streamed reply into content to send now and text held back because it may be a tool call."""

    def __init__(self):
        self.text = ""     # everything so far
        self.sent = 0      # characters of it already given out as content
        self.held = False  # a call started: nothing more goes out as content

    def feed(self, piece: str) -> str:
        """The content that can go out now, given the new `piece`."""
        self.text += piece
        if self.held:
            return ""
        stripped = self.text.lstrip()
        if not stripped:
            return ""
        if self.sent == 0 and stripped[0] in "{[" and not stripped.startswith("[TOOL_CALLS]"[:len(stripped)]):
            self.held = True  # a bare JSON call (Llama 3.x, or a constrained reply)
            return ""
        found = [self.text.find(m, self.sent) for m in MARKERS]
        found = [i for i in found if i >= 0]
        if found:
            self.held = True
            return self._take(min(found))
        # Keep back a tail that could still grow into a marker.
        keep = max((k for m in MARKERS for k in range(1, len(m)) if self.text.endswith(m[:k])), default=0)
        return self._take(len(self.text) - keep)

    def _take(self, end: int) -> str:
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def finish(self, tools: list[dict]) -> tuple[str, list[ToolCall]]:
        """(content not yet sent, the tool calls), once the reply has ended."""
        _, calls = parse_tool_calls(self.text, tools)
        if not calls:
            return self.text[self.sent:], []
        found = [i for i in (self.text.find(m) for m in MARKERS) if i >= 0]
        cut = min(found) if found else 0
        return (self.text[self.sent:cut].rstrip() if cut > self.sent else ""), calls
