"""Tool calling through the API with the official client, on the fake backend: the tools reach the prompt,
calls come back parsed (whole and streamed), a two-step conversation with tool results round-trips."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from workbench.options import LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch, write_fake_model, serving_api

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
TWO_CALLS = ("Let me look. " + CALL + '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome", '
             '"note": "a longer argument, so it streams in several pieces"}}\n</tool_call>')


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("api_tools"))
    models = ModelService(Paths(str(root)), registry=fake_registry())
    models.load(write_fake_model(root / "models", reply="No tools here.", rules=[
        {"when": "22 C and sunny", "reply": "It is 22 C and sunny in Paris."},
        {"when": "Paris and Rome", "reply": TWO_CALLS},
        {"when": "Weather, briefly", "reply": '{"name": "get_weather", "arguments": {"city": "Paris, the capital"}}'},
        {"when": "<tools>", "reply": "Let me look. " + CALL}]), options=LoadOptions(n_ctx=1024, parallel=2))
    with serving_api(models) as base:
        yield base
    models.close()


@pytest.fixture
def client(api):
    return openai.OpenAI(base_url=api + "/v1", api_key="any", max_retries=0)


def test_a_tool_call_comes_back_whole_and_streamed_alike(client):
    whole = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    content, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, stream=True):
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or []:
            calls.setdefault(piece.index, "")
            calls[piece.index] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert content.strip() == "Let me look." and finish == "tool_calls"
    assert calls == {0: call.function.arguments}


ASK_TWO = [{"role": "user", "content": "Weather in Paris and Rome?"}]


def test_streamed_tool_calls_come_as_openai_sends_them(api, client):
    """Per call: a first delta with index, id, type and name (arguments ""), then deltas with argument pieces
    and the index only; the client's own stream accumulation gives the calls of the whole reply."""
    whole = client.chat.completions.create(model="m", messages=ASK_TWO, tools=TOOLS).choices[0].message
    assert [json.loads(c.function.arguments)["city"] for c in whole.tool_calls] == ["Paris", "Rome"]
    with client.chat.completions.stream(model="m", messages=ASK_TWO, tools=TOOLS) as stream:
        streamed = stream.get_final_completion().choices[0]
    assert streamed.finish_reason == "tool_calls" and streamed.message.content.strip() == "Let me look."
    assert [(c.type, c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == \
        [(c.type, c.function.name, c.function.arguments) for c in whole.tool_calls]
    assert all(c.id.startswith("call_") for c in streamed.message.tool_calls)
    assert len({c.id for c in streamed.message.tool_calls}) == 2

    entries = []
    with httpx.stream("POST", api + "/v1/chat/completions",
                      json={"messages": ASK_TWO, "tools": TOOLS, "stream": True}) as raw:
        for line in raw.iter_lines():
            if line.startswith("data: {"):
                entries += json.loads(line[6:])["choices"][0]["delta"].get("tool_calls", [])
    for index in (0, 1):
        first, *rest = [e for e in entries if e["index"] == index]
        assert first["type"] == "function" and first["id"].startswith("call_")
        assert first["function"] == {"name": "get_weather", "arguments": ""}
        assert len(rest) >= 2 and all(set(e) == {"index", "function"} and set(e["function"]) == {"arguments"}
                                      for e in rest)
        assert "".join(e["function"]["arguments"] for e in rest) == whole.tool_calls[index].function.arguments


def test_a_two_step_tool_conversation_round_trips(client):
    first = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS).choices[0].message
    history = ASK + [first.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "22 C and sunny"}]
    assert history[1]["content"] == "Let me look." and history[1]["tool_calls"]
    history[1]["content"] = None  # as many clients send it
    second = client.chat.completions.create(model="m", messages=history, tools=TOOLS)
    assert second.choices[0].message.content == "It is 22 C and sunny in Paris."
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls


def test_tool_choice_none_offers_no_tools(client):
    reply = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="none")
    assert reply.choices[0].message.content == "No tools here." and reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("extra, param", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": {"type": "strin"}}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_bad_tool_requests_are_400s_naming_the_param(api, extra, param):
    raw = httpx.post(api + "/v1/chat/completions", json={"messages": ASK, **extra})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == param, raw.json()


def test_bad_tool_call_messages_are_400s(api):
    bad = [*ASK, {"role": "assistant", "content": None,
                  "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]
    raw = httpx.post(api + "/v1/chat/completions", json={"messages": bad})
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "messages"


@pytest.mark.parametrize("stream", [False, True])
def test_a_required_call_cut_by_max_tokens_is_a_cut_call_with_finish_length(client, stream):
    """As OpenAI: the call comes back (name, the arguments so far), not as content; finish_reason length."""
    ask = dict(model="m", messages=[{"role": "user", "content": "Weather, briefly"}], tools=TOOLS,
               tool_choice="required", max_tokens=4)
    if stream:  # (the client's .stream() helper refuses a reply cut by length, so accumulate by hand)
        content, name, arguments, finish = "", "", "", None
        for chunk in client.chat.completions.create(**ask, stream=True):
            delta = chunk.choices[0].delta
            content += delta.content or ""
            for piece in delta.tool_calls or []:
                name += piece.function.name or ""
                arguments += piece.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
    else:
        choice = client.chat.completions.create(**ask).choices[0]
        (call,) = choice.message.tool_calls
        content, name, arguments, finish = (choice.message.content, call.function.name, call.function.arguments,
                                            choice.finish_reason)
    assert finish == "length" and not content
    assert (name, arguments) == ("get_weather", '{"city":')
    whole = client.chat.completions.create(**{**ask, "max_tokens": 50}).choices[0]
    assert whole.finish_reason == "tool_calls"
    assert json.loads(whole.message.tool_calls[0].function.arguments) == {"city": "Paris, the capital"}
