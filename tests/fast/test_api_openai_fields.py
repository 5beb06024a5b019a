"""OpenAI behaviour that llama.cpp's server test suite (bench/peer_suite) found missing:
`system_fingerprint` on replies and chunks, `usage.prompt_tokens_details.cached_tokens`, unit-length embeddings."""

from __future__ import annotations

import openai
import pytest

from workbench.options import LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch, write_fake_model, serving_api

ASK = [{"role": "user", "content": "Capital?"}]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("api_fields"))
    models = ModelService(Paths(str(root)), registry=fake_registry())
    models.load(write_fake_model(root / "models", reply="Paris is the capital."), options=LoadOptions(n_ctx=256))
    with serving_api(models) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="any", max_retries=0)
    models.close()


def test_system_fingerprint_on_replies_and_every_chunk(client):
    chat = client.chat.completions.create(model="m", messages=ASK, max_tokens=4)
    text = client.completions.create(model="m", prompt="Capital?", max_tokens=4)
    assert chat.system_fingerprint.startswith("fp_") and text.system_fingerprint == chat.system_fingerprint
    chunks = list(client.chat.completions.create(model="m", messages=ASK, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}))
    assert {c.system_fingerprint for c in chunks} == {chat.system_fingerprint}
    chunks = list(client.completions.create(model="m", prompt="Capital?", max_tokens=4, stream=True))
    assert {c.system_fingerprint for c in chunks} == {chat.system_fingerprint}


def test_usage_says_how_many_prompt_tokens_were_cached(client):
    ask = [{"role": "user", "content": "Which city is the capital of France?"}]
    first = client.chat.completions.create(model="m", messages=ask, max_tokens=4).usage
    assert 0 <= first.prompt_tokens_details.cached_tokens <= first.prompt_tokens
    again = list(client.chat.completions.create(model="m", messages=ask, max_tokens=4, stream=True,
                                                stream_options={"include_usage": True}))[-1].usage
    assert 0 < again.prompt_tokens_details.cached_tokens <= again.prompt_tokens == first.prompt_tokens


def test_embeddings_have_unit_length_as_openais_do(client):
    reply = client.embeddings.create(model="m", input=["Paris is big.", "Rome"])
    for d in reply.data:
        assert abs(sum(x * x for x in d.embedding) - 1) < 1e-6


def test_an_input_too_long_to_embed_is_a_400_not_cut(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input=["short", "word " * 300])
    error = e.value.body
    assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
    assert "input[1] is too large" in error["message"]


def test_embeddings_take_token_ids_as_openais_do(client):
    """`input` may be a list of token ids or a list of token-id lists; ids outside the vocabulary are a 400."""
    one = client.embeddings.create(model="m", input=[12, 34, 56])
    many = client.embeddings.create(model="m", input=[[12, 34, 56], [12, 34, 56], [7]])
    assert len(one.data) == 1 and one.usage.prompt_tokens == 3
    assert [d.index for d in many.data] == [0, 1, 2] and many.usage.prompt_tokens == 7
    assert many.data[0].embedding == many.data[1].embedding == one.data[0].embedding != many.data[2].embedding
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input=[[1, 2], [10**9]])
    assert "input[1] holds token id 1000000000" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input=[[]])
    assert e.value.body["param"] == "input"
