"""Tool calls parsed from each model family's output format, whole and streamed."""

from __future__ import annotations

import json

import pytest

from workbench.tool_calls import ToolCallStream, calls_schema, parse_tool_calls

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
PARIS = json.dumps({"city": "Paris"})


@pytest.mark.parametrize("family, text, content", [
    ("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
     "Let me check."),
    ("hermes unclosed", '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}', ""),
    ("llama3 python_tag", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
    ("llama3 bare json", ' {"name": "get_weather", "parameters": {"city": "Paris"}}', ""),
    ("mistral list", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]', ""),
    ("mistral v11", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', ""),
    ("constrained", '{"name": "get_weather", "arguments": {"city": "Paris"}}', ""),
])
def test_each_family_parses_whole_and_streamed(family, text, content):
    assert parse_tool_calls(text, TOOLS) == (content, [(c := parse_tool_calls(text, TOOLS)[1][0])])
    assert (c.name, c.arguments) == ("get_weather", PARIS)
    stream, sent = ToolCallStream(), ""
    for i in range(0, len(text), 3):
        sent += stream.feed(text[i:i + 3])
    rest, calls = stream.finish(TOOLS)
    assert (sent + rest).strip() == content and calls == [c]


def test_parallel_calls_and_plain_text():
    text = ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n'
            '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>')
    assert [c.name for c in parse_tool_calls(text, TOOLS)[1]] == ["get_weather", "get_time"]
    assert parse_tool_calls("Paris is sunny.", TOOLS) == ("Paris is sunny.", [])
    assert parse_tool_calls('{"name": "rm_rf", "arguments": {}}', TOOLS)[1] == []  # not a given tool
    stream = ToolCallStream()
    assert stream.feed("It is <tool") == "It is " and stream.feed("bar> fine") == "<toolbar> fine"


def test_the_required_call_schema_names_each_tool():
    schema = calls_schema(TOOLS)
    assert [o["properties"]["name"]["const"] for o in schema["anyOf"]] == ["get_weather", "get_time"]
    assert calls_schema(TOOLS[:1])["properties"]["arguments"]["required"] == ["city"]


QWEN_LIKE = ("{% if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n"
             "{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
             "{% for c in m.tool_calls or [] %}<tool_call>{{ {'name': c.function.name, 'arguments': c.function.arguments}"
             " | tojson }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n")
HISTORY = [{"role": "user", "content": "Weather?"},
           {"role": "assistant", "content": None, "tool_calls": [
               {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
           {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]


def test_tools_and_calls_render_through_the_models_own_template_or_a_system_section():
    from workbench.chat_template import render_chat

    own = render_chat(HISTORY, QWEN_LIKE, tools=TOOLS)
    assert own.startswith("<|im_start|>system\n<tools>{\"type\": \"function\"")
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>' in own
    assert "<|im_start|>tool\nsunny" in own
    fallback = render_chat(HISTORY, None, tools=TOOLS)  # ChatML knows no tools: they go in a system message
    assert fallback.startswith("<|im_start|>system\nYou can call functions") and '"get_weather"' in fallback
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in fallback
