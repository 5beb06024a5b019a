"""OpenAI behaviour llama.cpp's server test suite (bench/peer_suite) checked, on the sample model through the
llama.cpp and Transformers backends: unit-length embeddings, token-id inputs, over-long inputs refused (not cut), cached prompt
tokens in usage, system_fingerprint."""

from __future__ import annotations

import openai
import pytest

from tests.fast.fakes import serving_api
from workbench.options import LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module", params=["sample_gguf", "sample_transformers"])
def client(request, tmp_path_factory):
    models = ModelService(Paths(str(tmp_path_factory.mktemp("fields"))))
    models.load(request.getfixturevalue(request.param), options=LoadOptions(n_ctx=256, parallel=1))
    with serving_api(models) as base:
        yield openai.OpenAI(base_url=base + "/v1", api_key="any", max_retries=0), models
    models.close()


def test_embeddings_unit_length_token_ids_and_too_long(client):
    client, models = client
    text = "I believe the meaning of life is"
    by_text = client.embeddings.create(model="m", input=text).data[0].embedding
    assert abs(sum(x * x for x in by_text) - 1) < 1e-4
    by_ids = client.embeddings.create(model="m", input=[models.tokenize(text)]).data[0].embedding
    assert max(abs(a - b) for a, b in zip(by_text, by_ids)) < 1e-4
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="m", input=["short", "This is a test " * 200])
    assert (e.value.body["code"], e.value.body["param"]) == ("context_length_exceeded", "input")


def test_usage_counts_cached_prompt_tokens_and_the_fingerprint_stays(client):
    client, _ = client
    ask = [{"role": "user", "content": "Name three colours of the rainbow, please."}]
    first = client.chat.completions.create(model="m", messages=ask, max_tokens=4, temperature=0)
    again = client.chat.completions.create(model="m", messages=ask, max_tokens=4, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens > 0
    assert again.usage.prompt_tokens_details.cached_tokens < again.usage.prompt_tokens == first.usage.prompt_tokens
    assert first.system_fingerprint == again.system_fingerprint and first.system_fingerprint.startswith("fp_")
