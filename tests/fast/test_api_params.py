"""The API's OpenAI parameters on the fake backend: n, logprobs, penalties, response_format and exact errors."""

from __future__ import annotations

import zlib

import httpx
import openai
import pytest

from workbench.options import LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch, write_fake_model, serving_api

REPLY = "Paris is the capital."
ASK = [{"role": "user", "content": "Capital?"}]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("api_params"))
    models = ModelService(Paths(str(root)), registry=fake_registry())
    write_fake_model(root / "models", "other.json", reply="x")
    models.load(write_fake_model(root / "models", reply=REPLY), options=LoadOptions(n_ctx=64, parallel=4))
    with serving_api(models) as base:
        yield base
    models.close()


@pytest.fixture
def client(api):
    return openai.OpenAI(base_url=api + "/v1", api_key="any", max_retries=0)


def fake_logprob(piece: str) -> float:
    return -(zlib.crc32(piece.encode()) % 100) / 100


def test_n_choices(client):
    reply = client.chat.completions.create(model="m", messages=ASK, n=3, seed=7, max_tokens=10)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert all(c.message.content == REPLY for c in reply.choices)
    assert reply.usage.completion_tokens == 3 * 4
    stream = client.completions.create(model="m", prompt="Say", n=2, stream=True, max_tokens=10)
    texts = ["", ""]
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [REPLY, REPLY]


def test_chat_logprobs_streamed_and_whole_agree(client):
    whole = client.chat.completions.create(model="m", messages=ASK, logprobs=True, top_logprobs=2, max_tokens=10)
    content = whole.choices[0].logprobs.content
    assert [e.token for e in content] == ["Paris ", "is ", "the ", "capital."]
    assert [e.logprob for e in content] == [fake_logprob(e.token) for e in content]
    assert content[0].bytes == list(b"Paris ") and len(content[0].top_logprobs) == 2
    streamed = []
    for chunk in client.chat.completions.create(model="m", messages=ASK, logprobs=True, top_logprobs=2,
                                                max_tokens=10, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    plain = client.chat.completions.create(model="m", messages=ASK, max_tokens=10)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(client):
    reply = client.completions.create(model="m", prompt="Say", logprobs=1, max_tokens=2)
    lp = reply.choices[0].logprobs
    assert lp.tokens == ["Paris ", "is "] and lp.text_offset == [0, 6]
    assert lp.token_logprobs == [fake_logprob("Paris "), fake_logprob("is ")]
    assert lp.top_logprobs == [{"Paris ": fake_logprob("Paris ")}, {"is ": fake_logprob("is ")}]


def test_sampling_extras_are_accepted(client):
    reply = client.chat.completions.create(model="m", messages=ASK, presence_penalty=0.5, frequency_penalty=-0.5,
                                           logit_bias={"42": -100}, max_tokens=10)
    assert reply.choices[0].message.content == REPLY


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "sound"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"9" * 400: 1}}, "logit_bias"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"n": 99}, "n"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
])
def test_bad_parameters_are_400s_naming_the_param(api, body, param):
    raw = httpx.post(api + "/v1/chat/completions", json={"messages": ASK, **body})
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"].endswith(".")


def test_routing_errors_and_context_overflow_in_openais_shape(api, client):
    missing = httpx.post(api + "/v1/nothing", json={})
    assert missing.status_code == 404
    assert missing.json() == {"error": {"message": "Invalid URL (POST /v1/nothing).", "type": "invalid_request_error",
                                        "param": None, "code": "unknown_url"}}
    wrong = httpx.get(api + "/v1/chat/completions")
    assert wrong.status_code == 405 and set(wrong.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as long:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "word " * 100}])
    assert long.value.code == "context_length_exceeded" and long.value.param == "messages"
    streamed = httpx.post(api + "/v1/completions", json={"prompt": "word " * 100, "stream": True})
    assert streamed.status_code == 400 and streamed.json()["error"]["code"] == "context_length_exceeded"


def test_models_lists_models_folder_with_the_loaded_one_first(api, client):
    cards = client.models.list().data
    assert [(c.id, c.loaded) for c in cards] == [("fake.json", True), ("other.json", False)]
    assert client.models.retrieve("other.json").loaded is False
    missing = httpx.get(api + "/v1/models/nope.gguf")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_embeddings(api, client):
    import base64
    import struct

    reply = client.embeddings.create(model="m", input=["Paris is big.", "Paris is big.", "Rome"],
                                     encoding_format="float")
    vectors = [d.embedding for d in reply.data]
    assert [d.index for d in reply.data] == [0, 1, 2] and len(vectors[0]) == 8
    assert vectors[0] == vectors[1] != vectors[2] and reply.usage.prompt_tokens == 3 + 3 + 1
    raw = httpx.post(api + "/v1/embeddings", json={"input": "Rome", "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][0]["embedding"])
    assert [round(x, 5) for x in struct.unpack("<8f", packed)] == [round(x, 5) for x in vectors[2]]
    bad = httpx.post(api + "/v1/embeddings", json={"input": [1, "two"]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
