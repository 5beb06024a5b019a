"""The OpenAI-compatible API's wire format, with the official `openai` client, over the fake backend."""

from __future__ import annotations


import httpx
import openai
import pytest

from workbench.options import LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch, write_fake_model, serving_api


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = scratch(tmp_path_factory.mktemp("api"))
    models = ModelService(Paths(str(root)), registry=fake_registry())
    models.load(write_fake_model(root / "models", reply="Paris is the capital. It is in France.",
                                 rules=[{"when": "fail", "error": "The fake engine broke."}]),
                options=LoadOptions(n_ctx=256))
    with serving_api(models) as base:
        yield base, models
    models.close()


@pytest.fixture
def client(api):
    return openai.OpenAI(base_url=api[0] + "/v1", api_key="any", max_retries=0)


def test_chat_completion_with_usage(client):
    reply = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Capital?"}],
                                           temperature=0, max_tokens=50)
    assert reply.choices[0].message.content == "Paris is the capital. It is in France."
    assert reply.choices[0].finish_reason == "stop" and reply.object == "chat.completion"
    assert reply.usage.completion_tokens == 8 and reply.usage.total_tokens > 8


def test_streamed_and_whole_answers_agree(client):
    stream = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Capital?"}],
                                            temperature=0, max_tokens=3, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Paris is the "
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 3
    whole = client.chat.completions.create(model="local", messages=[{"role": "user", "content": "Capital?"}],
                                           temperature=0, max_tokens=3)
    assert whole.choices[0].message.content == text


def test_completions_and_stop_strings(client):
    reply = client.completions.create(model="local", prompt="Say it", max_tokens=50, stop=["France"])
    assert reply.choices[0].text == "Paris is the capital. It is in "


def test_errors_come_in_openais_shape(api, client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="local", messages=[{"role": "user", "content": "x"}], temperature=-1)
    assert "temperature" in bad.value.message
    raw = httpx.post(api[0] + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "fail"}]})
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert "The fake engine broke." in raw.json()["error"]["message"]


def test_models_and_health(api, client):
    assert [m.id for m in client.models.list().data] == ["fake.json"]
    assert httpx.get(api[0] + "/health").json() == {"status": "ok", "model_loaded": True}


def test_an_error_mid_stream_names_no_server_path(tmp_path):
    root = scratch(tmp_path)
    models = ModelService(Paths(str(root)), registry=fake_registry())
    where = f"{root}/user_data/cache/blob.bin"
    models.load(write_fake_model(root / "models", reply="one two three four",
                                 rules=[{"when": "boom", "error": f"Could not read {where}.", "after": 2}]),
                options=LoadOptions(n_ctx=256))
    try:
        with serving_api(models) as base:
            with httpx.stream("POST", base + "/v1/chat/completions", timeout=30,
                              json={"model": "local", "stream": True,
                                    "messages": [{"role": "user", "content": "boom"}]}) as r:
                body = "".join(r.iter_text())
    finally:
        models.close()
    assert "Could not read user_data/cache/blob.bin." in body and str(root) not in body
