"""DownloadService against the fake hub: listing and planning from headers, verified downloads,
faults (corruption, drops, stalls, cut bodies), cancel and resume, and every bad input's sentence."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from tests.downloads.conftest import GGUF_NAME, SAMPLE_GGUF, TOKEN, tiny_folder, visible
from workbench.detect import GPTQ, TRANSFORMERS, detect
from workbench.downloads import staging
from workbench.downloads.errors import NoMatchingFile, RepoGated, RepoNotFound, TargetExists
from workbench.downloads.types import CANCELLED, DONE, FAILED, RepoFile
from workbench.errors import PathOutsideModels, WorkbenchError

TINY = tiny_folder()
TINY_WEIGHTS = len(TINY["model.safetensors"])


def one_sentence(e: BaseException) -> str:
    text = str(e)
    assert "\n" not in text and text.endswith((".", ")")) and len(text) < 300, text
    return text


def test_gguf_listing_plans_each_quant_from_its_header_only(service, fake_hub):
    listing = service.find("org/smol-gguf")
    size = os.path.getsize(SAMPLE_GGUF)
    assert [p.form.label for p in listing.plans] == ["Q4_1"]
    plan = listing.plans[0]
    assert plan.fits is True and plan.quantization == "Q4_1" and plan.n_ctx == 4096
    assert plan.verdict.startswith("fits at context 4096") and plan.form.size == size
    assert listing.recommended == "Q4_1" and listing.commit == fake_hub.commits["org/smol-gguf"]
    # Only the header travelled: a few MiB of a 94 MiB file.
    assert fake_hub.bytes_served(GGUF_NAME) == plan.header_bytes == listing.bytes_fetched
    assert plan.header_bytes < size * 0.05
    assert all(method != "GET" or rng for method, path, rng in fake_hub.requests if "/cdn/" in path)


def test_fit_column_follows_the_profile_and_the_context(service, fake_hub):
    small = service.find("org/smol-gguf", profile="tiny-box", n_ctx=8192).plans[0]
    assert small.fits is False
    assert small.verdict.startswith("does not fit at context 8192") and "lower context to" in small.verdict
    assert small.max_n_ctx and small.max_n_ctx < 8192
    listing = service.find("org/smol-gguf", profile="tiny-box", n_ctx=1024)
    assert listing.target == "profile tiny-box" and listing.plans[0].fits is True


def test_safetensors_forms_planned_from_config_and_header(service, fake_hub):
    listing = service.find("org/tiny")
    (plan,) = listing.plans
    assert plan.form.kind == TRANSFORMERS and plan.fits is True and plan.quantization == "bfloat16"
    assert {f.name for f in plan.form.files} == {"config.json", "generation_config.json", "tokenizer_config.json",
                                                 "model.safetensors"}
    assert listing.other_files == ("pytorch_model.bin",)
    assert fake_hub.bytes_served("model.safetensors") < TINY_WEIGHTS * 0.05
    gptq = service.find("org/tiny-gptq").plans[0]
    assert gptq.form.kind == GPTQ and gptq.form.default_name == "tiny-gptq-gptq" and gptq.fits is True
    awq = service.find("org/tiny-awq").plans[0]
    assert awq.form.kind == "awq" and awq.fits is None and "AWQ" in awq.verdict


def test_download_lands_verified_and_is_detected(service, paths, fake_hub):
    job = service.enqueue(service.find("org/tiny"), "transformers")
    p = service.wait(job, 30)
    assert p.state == DONE, p.message
    assert p.done_bytes == p.total_bytes and "ready in models/" in p.message
    assert visible(paths.models) == ["tiny"] and os.listdir(paths.models) == ["tiny"]  # no staging left
    folder = os.path.join(paths.models, "tiny")
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        assert f.read() == TINY["model.safetensors"]
    d = detect(folder)
    assert d.format == TRANSFORMERS and d.n_layers == 2
    # A second download under the same name is refused before anything is fetched.
    with pytest.raises(TargetExists):
        service.enqueue(service.find("org/tiny"), "transformers")


def test_corrupted_byte_is_refused_and_nothing_appears(service, paths, fake_hub):
    fake_hub.faults.corrupt_at = TINY_WEIGHTS // 2
    p = service.wait(service.enqueue(service.find("org/tiny"), "transformers"), 30)
    assert p.state == FAILED and "arrived corrupted" in p.message and "deleted" in p.message
    assert visible(paths.models) == []
    folder = staging.staging_dir(paths.models, "tiny")
    assert not os.path.exists(os.path.join(folder, "model.safetensors"))
    assert not os.path.exists(os.path.join(folder, "model.safetensors.part"))


def test_dropped_connection_resumes_where_it_broke(service, paths, fake_hub):
    fake_hub.faults.drop_at = [300_000, 700_000]
    p = service.wait(service.enqueue(service.find("org/tiny"), "transformers"), 30)
    assert p.state == DONE and p.retries == 2, p
    served = fake_hub.bytes_served("model.safetensors")
    assert served < TINY_WEIGHTS + 64 * 1024  # header probe + one pass: nothing fetched twice
    assert detect(os.path.join(paths.models, "tiny")).format == TRANSFORMERS


def test_stall_is_a_timeout_then_a_resume(service, fake_hub):
    fake_hub.faults.stall_at, fake_hub.faults.stall_s = [500_000], 1.5
    p = service.wait(service.enqueue(service.find("org/tiny"), "transformers"), 30)
    assert p.state == DONE and p.retries >= 1, p
    assert fake_hub.bytes_served("model.safetensors") < TINY_WEIGHTS + 64 * 1024


def test_cut_bodies_give_up_keep_bytes_and_resume(service, paths, fake_hub):
    fake_hub.faults.drop_at = [400_000] * 10  # every try dies at the same byte
    listing = service.find("org/tiny")
    p = service.wait(service.enqueue(listing, "transformers"), 30)
    assert p.state == FAILED and "run the download again to resume" in one_sentence(p.message)
    assert visible(paths.models) == []
    part = os.path.join(staging.staging_dir(paths.models, "tiny"), "model.safetensors.part")
    assert os.path.getsize(part) == 400_000
    assert [r["name"] for r in service.unfinished()] == ["tiny"]
    fake_hub.faults.drop_at = []
    fake_hub.reset_counts()
    p = service.wait(service.resume("tiny"), 30)
    assert p.state == DONE and p.resumed_bytes >= 400_000
    assert fake_hub.bytes_served("model.safetensors") == TINY_WEIGHTS - 400_000
    assert visible(paths.models) == ["tiny"] and service.unfinished() == []


def test_cancel_keeps_bytes_and_the_next_run_goes_on(service, paths, fake_hub):
    fake_hub.faults.throttle_bps = 2_000_000
    listing = service.find("org/tiny")
    job = service.enqueue(listing, "transformers")
    while service.progress(job).done_bytes < 300_000:
        time.sleep(0.02)
    running = service.progress(job)
    assert running.speed_bps > 0 and running.eta_s is not None and running.current_file == "model.safetensors"
    service.cancel(job)
    p = service.wait(job, 10)
    assert p.state == CANCELLED and "kept" in p.message and visible(paths.models) == []
    kept = os.path.getsize(os.path.join(staging.staging_dir(paths.models, "tiny"), "model.safetensors.part"))
    fake_hub.faults.throttle_bps = None
    settled, last = 0, -1
    while settled < 3:  # the cancelled run's server thread may push chunks into the closed socket a while
        now = fake_hub.bytes_served("model.safetensors")
        settled, last = (settled + 1 if now == last else 0), now
        time.sleep(0.1)
    fake_hub.reset_counts()
    p = service.wait(service.enqueue(listing, "transformers"), 30)
    assert p.state == DONE and p.resumed_bytes == kept + sum(len(TINY[n]) for n in ("config.json",
                                                                                 "generation_config.json"))
    assert ("GET", "/cdn/org/tiny/model.safetensors", f"bytes={kept}-") in fake_hub.requests
    assert TINY_WEIGHTS - kept <= fake_hub.bytes_served("model.safetensors") <= TINY_WEIGHTS - kept + 65536


def test_gated_repo_needs_a_token(service, fake_hub, monkeypatch):
    with pytest.raises(RepoGated, match="set HF_TOKEN"):
        service.find("org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(RepoGated, match="accept its terms") as e:
        service.find("org/gated")
    one_sentence(e.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert service.find("org/gated").plans[0].fits is True


@pytest.mark.parametrize("spec, error, words", [
    ("org/missing", RepoNotFound, "no repository org/missing"),
    ("not a repo", RepoNotFound, "org/name"),
    ("../../etc", RepoNotFound, "org/name"),
    ("org/smol-gguf:Q8_0", NoMatchingFile, "it offers: Q4_1"),
])
def test_bad_input_is_one_sentence(service, fake_hub, spec, error, words):
    with pytest.raises(error) as e:
        service.find(spec)
    assert words in one_sentence(e.value)


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", ".hidden", "a/b"])
def test_a_name_that_leaves_models_is_refused(service, paths, fake_hub, name):
    listing = service.find("org/tiny")
    with pytest.raises(PathOutsideModels) as e:
        service.enqueue(listing, "transformers", name)
    one_sentence(e.value)
    assert os.listdir(paths.models) == []


def test_a_listing_naming_files_outside_is_refused(paths):
    spec = staging.DownloadSpec("org/x", "0" * 40, "transformers", TRANSFORMERS, "x",
                        (RepoFile("config.json", 2), RepoFile("../../evil.safetensors", 2)))
    with pytest.raises(PathOutsideModels, match="outside models/"):
        staging.prepare(paths.models, spec)


def test_not_enough_disk_says_how_much_is_missing(service, paths, fake_hub, monkeypatch):
    import collections
    import shutil

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    p = service.wait(service.enqueue(service.find("org/tiny"), "transformers"), 30)
    assert p.state == FAILED and "GiB more" in p.message and "free 0.00 GiB" in p.message, p.message
    assert visible(paths.models) == []


def test_queue_runs_jobs_one_after_another(service, paths, fake_hub):
    first = service.enqueue(service.find("org/tiny"), "transformers")
    second = service.enqueue(service.find("org/tiny-gptq"), "gptq")
    assert service.wait(second, 30).state == DONE and service.progress(first).state == DONE
    assert visible(paths.models) == ["tiny", "tiny-gptq-gptq"]
    assert detect(os.path.join(paths.models, "tiny-gptq-gptq")).format == GPTQ
    assert [p.job_id for p in service.jobs()] == [second, first]
    with pytest.raises(WorkbenchError):
        service.cancel("nope")


@pytest.mark.slow
def test_download_checks_gguf_sha256(service, paths, fake_hub):
    p = service.wait(service.enqueue(service.find(f"org/smol-gguf:{GGUF_NAME}"), "Q4_1"), 60)
    assert p.state == DONE, p.message
    path = os.path.join(paths.models, GGUF_NAME)
    assert visible(paths.models) == [GGUF_NAME]
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest == fake_hub.repos["org/smol-gguf"][GGUF_NAME].sha256
    d = detect(path)
    assert d.quantization == "Q4_1" and d.n_layers == 30


def test_a_file_in_huggingface_hubs_cache_is_not_fetched_again(service, paths, fake_hub, tmp_path, monkeypatch):
    commit = fake_hub.commits["org/tiny"]
    snapshot = tmp_path / "hf" / "models--org--tiny" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(TINY["model.safetensors"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    listing = service.find("org/tiny")
    probe = fake_hub.bytes_served("model.safetensors")
    p = service.wait(service.enqueue(listing, "transformers"), 30)
    assert p.state == DONE and p.done_bytes == p.total_bytes, p
    assert fake_hub.bytes_served("model.safetensors") == probe  # only the header probe travelled
    assert "1.1 MiB from huggingface_hub's cache" in p.message, p.message
    assert detect(os.path.join(paths.models, "tiny")).format == TRANSFORMERS
    # A damaged cache copy is not trusted: it is fetched from the hub instead.
    damaged = bytearray(TINY["model.safetensors"])
    damaged[-1] ^= 0xFF
    (snapshot / "model.safetensors").write_bytes(bytes(damaged))
    p = service.wait(service.enqueue(listing, "transformers", "tiny-again"), 30)
    assert p.state == DONE and fake_hub.bytes_served("model.safetensors") == probe + TINY_WEIGHTS, p
    with open(os.path.join(paths.models, "tiny-again", "model.safetensors"), "rb") as f:
        assert f.read() == TINY["model.safetensors"]


def test_busy_hub_answers_are_retried(service, paths, fake_hub):
    listing = service.find("org/tiny")
    fake_hub.faults.fail_next = [503, 429]  # two in a row; the third try (max_tries) would give up
    p = service.wait(service.enqueue(listing, "transformers"), 30)
    assert p.state == DONE and p.retries == 2, p
    assert visible(paths.models) == ["tiny"]


@pytest.mark.parametrize("spec, parsed", [
    ("org/name", ("org/name", None)),
    ("org/name:q4_k_m", ("org/name", "q4_k_m")),
    ("https://huggingface.co/org/name", ("org/name", None)),
    ("https://huggingface.co/org/name/tree/main", ("org/name", None)),
    ("https://hf-mirror.example:8080/org/name/blob/main/m.Q8_0.gguf", ("org/name", "m.Q8_0.gguf")),
])
def test_repo_specs(spec, parsed):
    from workbench.downloads.forms import split_spec

    assert split_spec(spec) == parsed


def test_two_processes_never_write_one_download(service, paths, fake_hub):
    import fcntl

    listing = service.find("org/tiny")
    form = listing.plans[0].form
    spec = staging.DownloadSpec.for_form(listing.repo_id, listing.commit, form)
    folder = staging.prepare(paths.models, spec)
    with open(os.path.join(folder, staging.LOCK), "w") as held:  # as the CLI holds it while it downloads
        fcntl.flock(held, fcntl.LOCK_EX)
        p = service.wait(service.enqueue(listing, "transformers"), 30)
        assert p.state == FAILED and "another workbench process" in p.message
    p = service.wait(service.resume("tiny"), 30)  # the other process ended: its lock went with it
    assert p.state == DONE, p.message
    assert sorted(os.listdir(os.path.join(paths.models, "tiny"))) == sorted(f.name for f in form.files)


def test_hf_xet_failure_falls_back_to_http(paths, fake_hub):
    import threading

    from huggingface_hub.utils._xet import XetFileData

    from workbench.downloads.downloader import FileDownloader, FileTask
    from workbench.downloads.hub import Hub
    from workbench.downloads.types import RetryPolicy

    hub = Hub()
    commit = fake_hub.commits["org/tiny"]
    url = hub.url("org/tiny", commit, "model.safetensors")
    # The fake hub has no Xet service: hf_xet's token refresh fails, and the HTTP path does the work.
    xet = XetFileData(file_hash="0" * 64, refresh_route=f"{fake_hub.url}/api/models/org/tiny/xet-read-token/{commit}")
    task = FileTask("org/tiny", "model.safetensors", url, TINY_WEIGHTS,
                    fake_hub.repos["org/tiny"]["model.safetensors"].sha256, None, xet)
    got = []
    part = os.path.join(paths.models, ".x.part")
    FileDownloader(hub, RetryPolicy(), threading.Event(), got.append, use_xet=True).fetch(task, part)
    with open(part, "rb") as f:
        assert f.read() == TINY["model.safetensors"]
    assert sum(got) == TINY_WEIGHTS
