"""The API's OpenAI parameters on the real engines (llama.cpp, Transformers, GPTQ), with the official client.

Each parameter is proved on each (GPTQ too: it samples through the Transformers batch engine): n, logprobs/top_logprobs, logit_bias, presence/frequency
penalties, response_format json_object and json_schema (every reply parses and matches),
streamed and whole replies agreeing, context_length_exceeded.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.fast.fakes import serving_api

pytestmark = [pytest.mark.model, pytest.mark.slow]  # real models, through getfixturevalue

from tests.conftest import CAPITAL_QUESTION
from workbench.options import LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                     "continent": {"enum": ["Europe", "Asia", "Africa"]}},
                    "required": ["name", "continent"], "additionalProperties": False},
        "sights": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        # An unbounded integer lets a weak model (the 4-bit 135M) write digits until max_tokens; and
        # llama-cpp-python's converter ignores minimum/maximum. So: a bounded choice of integers.
        "stars": {"enum": [1, 2, 3, 4, 5]},
    },
    "required": ["city", "country", "sights", "stars"],
    "additionalProperties": False,
}


def matches(value, schema) -> bool:
    """A small JSON Schema check for SCHEMA's keywords (type, enum, properties, required, items, maxItems,
    maxLength, minimum, maximum)."""
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return isinstance(value, dict) and set(schema.get("required", ())) <= set(value) \
            and (schema.get("additionalProperties", True) or set(value) <= set(props)) \
            and all(matches(value[k], props[k]) for k in value if k in props)
    if kind == "array":
        return isinstance(value, list) and len(value) <= schema.get("maxItems", 1 << 30) \
            and all(matches(v, schema["items"]) for v in value)
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", 1 << 30)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) \
            and schema.get("minimum", -(1 << 60)) <= value <= schema.get("maximum", 1 << 60)
    return True


@pytest.fixture(scope="module", params=["gguf", "transformers", "gptq"])
def api(request, tmp_path_factory):
    path = request.getfixturevalue(f"sample_{request.param}" if request.param != "transformers"
                                   else "sample_transformers")
    models = ModelService(Paths(str(tmp_path_factory.mktemp("api_models"))))
    dtype = "auto" if request.param == "gptq" else "float32"
    models.load(path, options=LoadOptions(n_ctx=512, parallel=2, dtype=dtype))
    with serving_api(models) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="any", max_retries=0, timeout=300), models
    models.close()


def test_json_schema_replies_always_parse_and_match(api):
    client, _ = api
    fmt = {"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}
    ask = [{"role": "user", "content": "Describe Paris as JSON."}]
    reply = client.chat.completions.create(model="m", messages=ask, response_format=fmt, n=2, seed=1,
                                           temperature=1.0, max_tokens=200)
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        assert matches(json.loads(choice.message.content), SCHEMA), choice.message.content
    # One at a time (batched bf16/GPTQ rows may round apart from a row alone; see README), streamed and not.
    alone = client.chat.completions.create(model="m", messages=ask, response_format=fmt, seed=4, temperature=1.0,
                                           max_tokens=300).choices[0]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="m", messages=ask, response_format=fmt, seed=4, temperature=1.0, max_tokens=300, stream=True)
        if c.choices)
    assert alone.finish_reason == "stop", alone.message.content
    assert streamed == alone.message.content and matches(json.loads(streamed), SCHEMA)
    loose = client.chat.completions.create(model="m", messages=ask, response_format={"type": "json_object"},
                                           temperature=0, max_tokens=200)
    text = loose.choices[0].message.content
    # Any JSON object has no length bound: the 4-bit model may still be inside a string at max_tokens.
    assert text.lstrip().startswith("{")
    if loose.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_logprobs_streamed_and_whole_agree(api):
    client, _ = api
    whole = client.chat.completions.create(model="m", messages=CAPITAL_QUESTION, temperature=0, max_tokens=12,
                                           logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens
    assert "".join(e.token for e in content) == whole.choices[0].message.content
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].token == entry.token  # greedy: the most likely token
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-4
    streamed = [e for c in client.chat.completions.create(
        model="m", messages=CAPITAL_QUESTION, temperature=0, max_tokens=12, logprobs=True, top_logprobs=3,
        stream=True) if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [round(e.logprob, 3) for e in streamed] == [round(e.logprob, 3) for e in content]
    legacy = client.completions.create(model="m", prompt="The capital of France is", temperature=0, max_tokens=4,
                                       logprobs=2)
    assert len(legacy.choices[0].logprobs.tokens) == legacy.usage.completion_tokens
    assert legacy.choices[0].logprobs.text_offset[0] == 0


def test_logit_bias_bans_a_word(api):
    client, models = api
    plain = client.chat.completions.create(model="m", messages=CAPITAL_QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in plain.choices[0].message.content
    banned = {str(t): -100 for word in ("Paris", " Paris") for t in models.tokenize(word)[:1]}
    biased = client.chat.completions.create(model="m", messages=CAPITAL_QUESTION, temperature=0, max_tokens=20,
                                            logit_bias=banned)
    assert "Paris" not in biased.choices[0].message.content


def test_penalties_and_n_with_seeds(api):
    client, models = api
    ask = [{"role": "user", "content": "Repeat the word cat ten times."}]
    plain = client.chat.completions.create(model="m", messages=ask, temperature=0, max_tokens=30)
    penalised = client.chat.completions.create(model="m", messages=ask, temperature=0, max_tokens=30,
                                               frequency_penalty=2.0)
    assert penalised.choices[0].message.content != plain.choices[0].message.content
    # " apple" leads " banana" by about 2.8 nats here; a +1.5 bias on banana leaves apple ahead
    # until a presence penalty of 2 (apple is in the context, banana is not) tips it.
    prompt = "The list: apple, apple, apple, apple,"
    bias = {str(models.tokenize(" banana")[0]): 1.5}
    plain = client.completions.create(model="m", prompt=prompt, temperature=0, max_tokens=8,
                                      logit_bias=bias).choices[0].text
    present = client.completions.create(model="m", prompt=prompt, temperature=0, max_tokens=8, logit_bias=bias,
                                        presence_penalty=2.0).choices[0].text
    assert plain.count("apple") > present.count("apple"), (plain, present)
    both = client.chat.completions.create(model="m", messages=CAPITAL_QUESTION, temperature=1.0, seed=5, n=2,
                                          max_tokens=16)
    alone = [client.chat.completions.create(model="m", messages=CAPITAL_QUESTION, temperature=1.0, seed=seed,
                                            max_tokens=16).choices[0].message.content for seed in (5, 6)]
    assert [c.message.content for c in both.choices] == alone


def test_an_over_long_prompt_is_context_length_exceeded(api):
    client, _ = api
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "cat " * 600}])
    assert e.value.code == "context_length_exceeded"


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city.",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a city.",
                                      "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                     "required": ["city"], "additionalProperties": False}}},
]


def test_required_and_named_tool_calls_parse_and_a_two_step_conversation_round_trips(api):
    client, _ = api
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    whole = client.chat.completions.create(model="m", messages=ask, tools=TOOLS, tool_choice="required",
                                           temperature=0, max_tokens=100)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    (call,) = choice.message.tool_calls
    args = json.loads(call.function.arguments)
    assert call.function.name in ("get_weather", "get_time") and isinstance(args["city"], str)
    streamed: dict[int, list] = {}  # as OpenAI streams a call: id and name first, then argument pieces
    for chunk in client.chat.completions.create(model="m", messages=ask, tools=TOOLS, tool_choice="required",
                                                temperature=0, max_tokens=100, stream=True):
        for c in (chunk.choices[0].delta.tool_calls or ()) if chunk.choices else ():
            name, pieces = streamed.setdefault(c.index, [None, ""])
            streamed[c.index] = [name or (c.function.name if c.function else None),
                                 pieces + ((c.function.arguments or "") if c.function else "")]
    assert list(streamed.values()) == [[call.function.name, call.function.arguments]]
    named = client.chat.completions.create(model="m", messages=ask, tools=TOOLS, temperature=0.8, seed=2,
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           max_tokens=100)
    (time_call,) = named.choices[0].message.tool_calls
    assert time_call.function.name == "get_time" and set(json.loads(time_call.function.arguments)) == {"city"}
    history = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                     {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 22, "sky": "sunny"}'}]
    answer = client.chat.completions.create(model="m", messages=history, tools=TOOLS, tool_choice="none",
                                            temperature=0, max_tokens=40)
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.content


def test_embeddings_place_similar_texts_closer(api):
    client, _ = api
    texts = ["The cat sat on the mat.", "A cat was sitting on the mat.", "Stock markets fell sharply today."]
    vectors = [d.embedding for d in client.embeddings.create(model="m", input=texts).data]

    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    assert len(vectors) == 3 and len(vectors[0]) >= 64
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


def test_logprobs_stay_one_per_token_with_drafting(sample_gguf, tmp_path):
    from workbench.options import GenerationRequest, GenParams

    models = ModelService(Paths(str(tmp_path)))
    models.load(sample_gguf, options=LoadOptions(n_ctx=512, parallel=1, draft_tokens=4))
    try:
        code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
        request = GenerationRequest(messages=[{"role": "user", "content": "Repeat this code exactly:\n" + code}],
                                    params=GenParams(temperature=0, max_tokens=40, logprobs=1))
        text, entries, stats = "", [], None
        for kind, value in models.generate(request):
            if kind == "token":
                text += value
            elif kind == "logprobs":
                entries += value
            else:
                stats = value
        assert stats.draft_accepted > 0  # drafting did happen
        assert len(entries) == stats.completion_tokens and "".join(e["token"] for e in entries) == text
    finally:
        models.close()
