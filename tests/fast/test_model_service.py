"""ModelService and the worker protocol, driven with the scripted fake backend in a real worker process."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from workbench.errors import GenerationError, LoadError, NoModelLoaded, WorkerDied
from workbench.model_values import GenerationStats
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.plan import PlanRefused
from workbench.services.model_service import ModelService

from .fakes import fake_registry, scratch, write_fake_model

HELLO = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def root(tmp_path):
    return scratch(tmp_path)


@pytest.fixture
def service(root):
    s = ModelService(Paths(str(root)), registry=fake_registry())
    yield s
    s.close()


def chat(text="Hello there", **params) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": text}], params=GenParams(temperature=0, **params))


def test_tokens_stream_then_typed_stats(root, service):
    path = write_fake_model(root / "models", reply="one two three four five")
    loaded = service.load(path, options=LoadOptions(n_ctx=512))
    assert (loaded.backend, loaded.n_ctx, loaded.name) == ("fake", 512, "fake.json")
    events = list(service.generate(chat()))
    assert "".join(v for k, v in events if k == "token") == "one two three four five"
    kind, stats = events[-1]
    assert kind == "done" and isinstance(stats, GenerationStats)
    assert stats.finish_reason == "stop" and stats.completion_tokens == 5 and stats.prompt_tokens > 0
    assert stats.total_s >= stats.ttft_s > 0
    again = service.complete(chat()).stats
    assert again.cached_tokens == again.prompt_tokens  # the same prompt: every token reused


def test_budget_and_stop_strings_end_a_reply_with_the_right_reason(root, service):
    service.load(write_fake_model(root / "models", reply="a b c d e f g STOP h i"), options=LoadOptions(n_ctx=512))
    short = service.complete(chat(max_tokens=3))
    assert short.text == "a b c " and short.stats.finish_reason == "length"
    stopped = service.complete(chat(stop=["STOP"]))
    assert stopped.text == "a b c d e f g " and stopped.stats.finish_reason == "stop"


def test_auto_context_survives_a_load(root, service):
    asked = LoadOptions(n_ctx=0)
    loaded = service.load(write_fake_model(root / "models", context_length=3072), options=asked)
    assert loaded.n_ctx == 3072 and loaded.plan.n_ctx == 3072  # the largest that fits: the model's own
    assert loaded.options.n_ctx == 0 and asked.n_ctx == 0  # what the user asked for stays "auto"
    with pytest.raises(Exception):
        asked.n_ctx = 5  # frozen: changed only through dataclasses.replace


def test_a_load_over_the_cap_is_refused_and_the_loaded_model_stays(root, service):
    service.load(write_fake_model(root / "models", "small.json"), options=LoadOptions(n_ctx=512))
    big = write_fake_model(root / "models", "big.json", parameters=2_000_000_000)
    offloaded = service.plan(big, None, LoadOptions(n_ctx=512, max_ram_gib=1))
    assert offloaded.fits and offloaded.device("disk").layers > 0  # what is over the RAM cap goes to disk
    with pytest.raises(PlanRefused, match="needs .* RAM for the model, cap is 0.00 GiB.*: .*raise the cap"):
        service.load(big, options=LoadOptions(n_ctx=512, max_ram_gib=0.001))
    assert service.loaded_name() == "small.json"
    assert service.complete(chat()).text


def test_engine_errors_keep_the_worker_serving(root, service):
    path = write_fake_model(root / "models", rules=[{"when": "explode", "error": "The fake engine broke.", "after": 2}])
    service.load(path, options=LoadOptions(n_ctx=512))
    events = []
    with pytest.raises(GenerationError, match="The fake engine broke."):
        for event in service.generate(chat("please explode")):
            events.append(event)
    assert [v for k, v in events if k == "token"]  # the two tokens before the error came through
    assert service.complete(chat()).stats.finish_reason == "stop"  # and the worker still answers


def test_a_crashed_worker_says_so_and_loading_again_works(root, service):
    path = write_fake_model(root / "models", rules=[{"when": "crash", "crash": True}])
    service.load(path, options=LoadOptions(n_ctx=512))
    with pytest.raises(WorkerDied, match="stopped unexpectedly"):
        service.complete(chat("crash now"))
    with pytest.raises(NoModelLoaded):
        service.complete(chat())
    assert service.status().loaded is None
    service.load(path, options=LoadOptions(n_ctx=512))
    assert service.complete(chat()).text


def test_a_load_error_is_one_sentence_and_nothing_stays_loaded(root, service):
    with pytest.raises(LoadError, match="^This fake model cannot load.$"):
        service.load(write_fake_model(root / "models", load_error="This fake model cannot load."),
                     options=LoadOptions(n_ctx=512))
    assert service.status().loaded is None and service.worker_pid() is None


def test_unload_ends_a_load_that_hangs_and_the_next_load_works(root, service):
    hanging = write_fake_model(root / "models", "slow.json", load_delay_s=120)
    outcome = {}

    def load():
        try:
            service.load(hanging, options=LoadOptions(n_ctx=512))
        except LoadError as e:
            outcome["error"] = str(e)

    thread = threading.Thread(target=load)
    thread.start()
    deadline = time.monotonic() + 60
    while not service.is_loading():  # the worker has started and is loading
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    time.sleep(0.5)
    started = time.monotonic()
    service.unload()
    thread.join(15)
    assert time.monotonic() - started < 10 and not thread.is_alive()
    assert outcome["error"] == "Loading slow.json was stopped (Unload, or another load started)."
    assert service.status().loaded is None and service.worker_pid() is None
    service.load(write_fake_model(root / "models", reply="Back."), options=LoadOptions(n_ctx=512))
    assert service.complete(chat()).text == "Back."


def _run_together(service, names, stops, delay=0.05):
    results, threads = {}, []

    def run(name):
        results[name] = service.complete(chat(f"request {name}"), stops.get(name))

    for name in names:
        threads.append(threading.Thread(target=run, args=(name,)))
        threads[-1].start()
        time.sleep(delay)  # they arrive in this order
    return results, threads


def test_stop_ends_only_its_own_generation_among_four(root, service):
    service.load(write_fake_model(root / "models", reply=" ".join(["w"] * 40), token_delay_s=0.01),
                 options=LoadOptions(n_ctx=512, parallel=4))
    stops = {"b": threading.Event()}
    results, threads = _run_together(service, "abcd", stops)
    stops["b"].set()
    for t in threads:
        t.join(30)
    assert all(results[n].stats.completion_tokens == 40 for n in "acd")
    assert results["b"].stats.finish_reason == "cancelled" and results["b"].stats.completion_tokens < 40


def test_more_requests_than_slots_wait_in_arrival_order(root, service):
    # Each reply takes 0.3 s and all six arrive within 0.15 s (30 ms apart, so a busy machine does not
    # reorder their arrival): four of them must wait.
    loaded = service.load(write_fake_model(root / "models", reply="{last_user} done", token_delay_s=0.1),
                          options=LoadOptions(n_ctx=512, parallel=2))
    assert loaded.plan.parallel == 2
    results, threads = _run_together(service, "abcdef", {}, delay=0.03)
    for t in threads:
        t.join(30)
    assert {n: results[n].text for n in "abcdef"} == {n: f"request {n} done" for n in "abcdef"}
    # two at a time, first come first served: the later ones waited longer for their first token
    waits = [results[n].stats.ttft_s for n in "abcdef"]
    assert max(waits[:2]) < min(waits[2:4]) and max(waits[2:4]) < min(waits[4:])


def test_a_load_leaves_the_callers_options_alone(root, service):
    asked = LoadOptions(n_ctx=512, max_ram_gib=4)
    loaded = service.load(write_fake_model(root / "models"), options=asked)
    assert asked == replace(asked) and asked.weight_budget is None and asked.offload_folder is None
    assert loaded.options == asked


def test_listing_uses_the_registry_and_reports_unreadable_entries(root, service):
    write_fake_model(root / "models", "a.json")
    (root / "models" / "broken.gguf").write_bytes(b"GGUF\x03\x00")
    entries = {e.name: e for e in service.list_models()}
    assert entries["a.json"].backend == "fake" and entries["a.json"].error is None
    assert entries["broken.gguf"].error and service.model_names() == ["a.json"]


def test_perplexity_goes_through_the_worker_with_progress(root, service):
    service.load(write_fake_model(root / "models"), options=LoadOptions(n_ctx=512))
    seen = []
    result = service.perplexity("word " * 300, 64, lambda done, total: seen.append((done, total)))
    assert result["perplexity"] == pytest.approx(2.718281828 ** 2, rel=1e-6)
    assert seen and seen[-1][0] == seen[-1][1] == result["windows"]
