"""The backend contract, run against every backend with the real sample model in its forms.

GGUF -> llama.cpp, Transformers folder -> transformers, GPTQ folder -> gptq, and the
AutoGPTQ-era layout of the same GPTQ weights -> gptq. Each goes through the real
service and worker process, as the UI and CLI do.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]

from tests.conftest import CAPITAL_QUESTION
from workbench.errors import WorkbenchError, WorkerDied
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

FORMS = {
    "gguf": ("sample_gguf", "llama.cpp"),
    "transformers": ("sample_transformers", "transformers"),
    "gptq": ("sample_gptq", "gptq"),
}
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to fly."}]


@pytest.fixture(scope="module", params=list(FORMS))
def loaded(request, tmp_path_factory):
    fixture_name, backend = FORMS[request.param]
    path = request.getfixturevalue(fixture_name)
    root = tmp_path_factory.mktemp(f"root-{request.param}")
    service = ModelService(Paths(str(root)))
    info = service.load(path, options=LoadOptions(n_ctx=2048))
    yield service, info, path, backend
    service.close()


def ask(service, messages, **params) -> dict:
    return service.complete(GenerationRequest(messages=messages, params=GenParams(**params)))


def test_load_reports_backend_and_context(loaded):
    service, info, path, backend = loaded
    assert info.backend == backend
    assert info.n_ctx == 2048
    assert info.memory.rss_bytes > 50 * 2**20  # the worker really holds weights
    assert service.status().loaded is not None


def test_greedy_answer_names_paris(loaded):
    service, *_ = loaded
    result = ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=24)
    assert "Paris" in result.text
    assert result.stats.finish_reason == "stop"
    assert result.stats.prompt_tokens > 10


def test_tokens_stream_as_they_are_made(loaded):
    service, *_ = loaded
    request = GenerationRequest(messages=STORY, params=GenParams(temperature=0, max_tokens=40))
    timed = [(time.perf_counter(), kind, value) for kind, value in service.generate(request)]
    pieces = [v for _, k, v in timed if k == "token"]
    assert timed[-1][1] == "done" and timed[-1][2].completion_tokens == 40
    # text arrives in pieces while the model works (pieces made within 50 ms of each other travel together)
    assert len(pieces) >= 2
    assert timed[0][0] < timed[-1][0] - 0.05
    assert "".join(pieces) == service.complete(request).text


def test_stop_string_ends_reply_before_it(loaded):
    service, *_ = loaded
    result = ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=24, stop=["Paris"])
    assert "Paris" not in result.text
    assert result.text.strip()  # what came before the stop string is kept
    assert result.stats.finish_reason == "stop"


def test_max_tokens_is_respected(loaded):
    service, *_ = loaded
    result = ask(service, STORY, temperature=0, max_tokens=5)
    assert result.stats.completion_tokens == 5
    assert result.stats.finish_reason == "length"


def test_same_seed_gives_same_text_and_greedy_is_repeatable(loaded):
    service, *_ = loaded
    a = ask(service, STORY, temperature=0.9, seed=1234, max_tokens=16)
    b = ask(service, STORY, temperature=0.9, seed=1234, max_tokens=16)
    assert a.text == b.text
    g1 = ask(service, STORY, temperature=0, max_tokens=16)
    g2 = ask(service, STORY, temperature=0, max_tokens=16)
    assert g1.text == g2.text


def test_cancel_stops_at_next_token(loaded):
    service, *_ = loaded
    pieces = 0
    done = None
    for kind, value in service.generate(GenerationRequest(messages=STORY, params=GenParams(max_tokens=400))):
        if kind == "token":
            pieces += 1
            if pieces == 1:
                service.cancel()
        else:
            done = value
    assert done.finish_reason == "cancelled"
    # the first piece holds at most 50 ms of tokens; the worker stops at the next token after the cancel
    assert done.completion_tokens <= 30
    # the worker is still usable afterwards
    assert ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=4).stats.completion_tokens >= 1


def test_killed_worker_gives_clear_error_and_reload_works(loaded):
    service, info, path, _ = loaded
    os.kill(service.worker_pid(), signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(WorkerDied, match="load the model again"):
        ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=4)
    assert service.status().loaded is None
    service.load(path, options=LoadOptions(n_ctx=2048))
    assert "Paris" in ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=24).text


def test_unload_ends_the_worker_process(loaded):
    service, info, path, _ = loaded
    pid = service.worker_pid()
    assert psutil.pid_exists(pid)
    service.unload()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert service.status().loaded is None
    service.load(path, options=LoadOptions(n_ctx=2048))  # leave it loaded for the fixture's teardown


def test_autogptq_layout_loads_without_renaming(sample_autogptq, tmp_path):
    names = os.listdir(sample_autogptq)
    assert "gptq_model-4bit-128g.safetensors" in names and "model.safetensors" not in names
    service = ModelService(Paths(str(tmp_path)))
    try:
        info = service.load(sample_autogptq, options=LoadOptions(n_ctx=1024))
        assert info.backend == "gptq"
        assert "quantize_config.json" in info.detection.evidence
        assert "Paris" in ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=24).text
    finally:
        service.close()


PERPLEXITY_TEXT = (
    "The river runs through the old town, past the market and the church, and under seven stone bridges. "
    "In spring the water rises and the fishermen wait on the banks for the first trout of the year. "
) * 6


def test_perplexity_is_finite_and_reports_progress(loaded):
    service, info, path, backend = loaded
    seen = []
    result = service.perplexity(PERPLEXITY_TEXT, window=64, on_progress=lambda done, total: seen.append((done, total)))
    assert 1.0 < result["perplexity"] < 100.0
    assert result["windows"] == len(seen) and seen[-1][0] == seen[-1][1] and result["tokens"] > 100
    # generation after scoring is unaffected (llama.cpp's KV cache was cleared, not reused as a prefix)
    assert "Paris" in ask(service, CAPITAL_QUESTION, temperature=0, max_tokens=24).text


def test_perplexity_refuses_bad_windows(loaded):
    service, *_ = loaded
    with pytest.raises(WorkbenchError, match="window must be between 2"):
        service.perplexity(PERPLEXITY_TEXT, window=4096)
    with pytest.raises(WorkbenchError, match="Give some text"):
        service.perplexity("   ")
