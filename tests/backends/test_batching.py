"""Continuous batching with the real engines: concurrent requests get exactly what they get alone.

llama.cpp batches in its own multi-sequence decode; Transformers and GPTQ through a padded
batched forward pass (torch_batch.py), exact in float32 (bf16 batched matmuls round
differently from single-row ones, so long greedy texts may drift there: see README).
"""

from __future__ import annotations

import threading

import pytest

from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

pytestmark = [pytest.mark.model, pytest.mark.slow]

QUESTIONS = ["Tell me a story about a dragon.", "Explain how rain forms.", "Write a poem about the sea.",
             "Describe a city at night."]


def ask(question: str, **params) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "system", "content": "You are a helpful assistant."},
                                       {"role": "user", "content": question}],
                             params=GenParams(**{"temperature": 0, "max_tokens": 40, **params}))


def together(service, requests, stops=None):
    results, threads = [None] * len(requests), []

    def run(i):
        results[i] = service.complete(requests[i], (stops or {}).get(i))

    for i in range(len(requests)):
        threads.append(threading.Thread(target=run, args=(i,)))
        threads[-1].start()
    return results, threads


@pytest.fixture(params=["gguf", "transformers-float32"])
def service(request, tmp_path):
    path = request.getfixturevalue("sample_gguf" if request.param == "gguf" else "sample_transformers")
    dtype = "float32" if request.param.endswith("float32") else "auto"
    s = ModelService(Paths(str(tmp_path)))
    s.load(path, options=LoadOptions(n_ctx=1024, parallel=4, dtype=dtype))
    yield s
    s.close()


def test_four_at_once_give_exactly_what_each_gives_alone(service):
    alone = [service.complete(ask(q)).text for q in QUESTIONS]
    results, threads = together(service, [ask(q) for q in QUESTIONS])
    for t in threads:
        t.join(120)
    assert [r.text for r in results] == alone
    assert service.loaded().plan.parallel == 4


def test_a_seeded_sample_is_the_same_alone_and_in_a_batch(service):
    seeded = ask(QUESTIONS[2], temperature=0.9, seed=1234)
    alone = service.complete(seeded).text
    results, threads = together(service, [ask(QUESTIONS[0]), seeded, ask(QUESTIONS[1])])
    for t in threads:
        t.join(120)
    assert results[1].text == alone


def test_cancelling_one_of_four_leaves_the_others_intact(service):
    long = [ask(q, max_tokens=60) for q in QUESTIONS]
    alone = [service.complete(r).text for r in long]
    stop = threading.Event()
    results, threads = together(service, long, {1: stop})
    stop.set()
    for t in threads:
        t.join(120)
    assert results[1].stats.finish_reason == "cancelled"
    assert [results[i].text for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]


# Transformers in float32, where a pass over several tokens rounds as one token at a time does (in bf16
# the text may drift after some tokens, as batching's does: README).
@pytest.mark.parametrize("form", ["gguf", "transformers-float32"])
def test_prompt_lookup_drafting_keeps_greedy_text_and_reports_acceptance(form, request, tmp_path):
    path = request.getfixturevalue("sample_gguf" if form == "gguf" else "sample_transformers")
    dtype = "float32" if form == "transformers-float32" else "auto"
    code = "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n"
    request = ask(f"Repeat this code exactly:\n\n{code}", max_tokens=60)
    texts = {}
    for draft in (0, 6):
        s = ModelService(Paths(str(tmp_path)))
        try:
            s.load(path, options=LoadOptions(n_ctx=1024, parallel=1, draft_tokens=draft, dtype=dtype))
            result = s.complete(request)
        finally:
            s.close()
        texts[draft] = result.text
        if draft:
            assert result.stats.draft_tokens > 0 and 0 < result.stats.draft_accepted <= result.stats.draft_tokens
    assert texts[0] == texts[6]


def test_one_llama_cpp_step_is_one_computation_whatever_order_the_requests_came_in(sample_gguf):
    """llama.cpp puts only consecutive, increasing sequence ids into one micro-batch (its split for
    per-sequence KV caches). Rows in arrival order (3, 1, 0, 2 here) were split into three computations,
    two of one token: behind the API, where arrival order varies, four streams ran at single-stream speed
    in about half the rounds (Q4_0: 190-250 tok/s instead of 350-400)."""
    from workbench.backends.llama_cpp_backend import LlamaCppBackend
    from workbench.detect import detect

    backend = LlamaCppBackend()
    backend.load(detect(sample_gguf), LoadOptions(n_ctx=256, parallel=4).validate())
    try:
        engine = backend.batch_engine()
        prompt = backend.prompt_tokens(ask(QUESTIONS[0]))
        for slot in (3, 1, 0, 2):
            engine.start(slot, prompt, GenParams(temperature=0), seed=0)
        made = engine.step([3, 1, 0, 2])
        fed = [engine.batch.seq_id[i][0] for i in range(engine.batch.n_tokens)]
        assert fed == [0, 1, 2, 3]  # llama.cpp's perf counters cannot tell micro-batches apart: the rows say it
        assert len({tuple(tokens) for tokens in made.values()}) == 1  # the same prompt, the same greedy token
    finally:
        backend.unload()
