"""The whole sample GGUF through the fake hub: the CLI killed with SIGKILL at about half and run again
(the server counts what it sends), progress under a throttle with a dropped connection, and the
downloaded file loading and answering in ModelService. Slow: each moves 94 MiB at least once."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.downloads.conftest import GGUF_NAME, ROOT, SAMPLE_GGUF, visible
from workbench.downloads import staging
from workbench.downloads.types import DONE

pytestmark = pytest.mark.slow
SIZE = os.path.getsize(SAMPLE_GGUF)


def cli(paths, fake_hub, *args, **kwargs):
    env = dict(os.environ, HF_ENDPOINT=fake_hub.url, WORKBENCH_ROOT=paths.root, HF_HUB_DISABLE_XET="1")
    return subprocess.Popen([sys.executable, "-m", "workbench.downloads.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_lists_then_a_kill_at_half_resumes_without_fetching_the_first_half(paths, fake_hub):
    listing = cli(paths, fake_hub, "org/smol-gguf")
    out, err = listing.communicate(timeout=60)
    assert listing.returncode == 0, err
    assert "Q4_1 *" in out and "fits at context 4096" in out and "download org/smol-gguf:Q4_1" in out

    fake_hub.faults.throttle_bps = 30 * 2**20
    part = os.path.join(staging.staging_dir(paths.models, GGUF_NAME), GGUF_NAME + ".part")
    first = cli(paths, fake_hub, "org/smol-gguf:Q4_1")
    deadline = time.monotonic() + 60
    while not (os.path.exists(part) and os.path.getsize(part) >= SIZE // 2):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    kept = os.path.getsize(part)
    assert SIZE // 2 <= kept < SIZE and visible(paths.models) == []

    fake_hub.faults.throttle_bps = None
    time.sleep(0.3)  # the killed client's server thread finds its socket closed
    fake_hub.reset_counts()
    second = cli(paths, fake_hub, "org/smol-gguf:Q4_1")
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert out.strip() == os.path.join(paths.models, GGUF_NAME) and "already on disk" in err
    served = fake_hub.bytes_served(GGUF_NAME)
    header = 2 << 20  # the plan reads the header again
    assert SIZE - kept <= served <= SIZE - kept + header, (served, kept, SIZE)
    assert ("GET", f"/cdn/org/smol-gguf/{GGUF_NAME}", f"bytes={kept}-") in fake_hub.requests
    with open(os.path.join(paths.models, GGUF_NAME), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == fake_hub.repos["org/smol-gguf"][GGUF_NAME].sha256
    assert os.listdir(paths.models) == [GGUF_NAME]


def test_throttled_download_reports_progress_and_survives_a_drop(service, paths, fake_hub):
    fake_hub.faults.throttle_bps = 40 * 2**20
    fake_hub.faults.drop_at = [SIZE // 3]
    job = service.enqueue(service.find("org/smol-gguf"), "Q4_1")
    seen = []
    while (p := service.progress(job)).state != DONE:
        assert p.state in ("queued", "running"), p.message
        seen.append(p)
        time.sleep(0.1)
    done = [s.done_bytes for s in seen]
    assert done == sorted(done) and len(set(done)) >= 5  # the bar moves, forwards only
    assert any(s.speed_bps > 0 and s.eta_s is not None for s in seen)
    assert p.retries == 1 and any("reconnecting" in s.message for s in seen)
    assert fake_hub.bytes_served(GGUF_NAME) <= SIZE + (2 << 20)  # the header probe, then every byte once
    assert visible(paths.models) == [GGUF_NAME]


@pytest.mark.model
def test_downloaded_gguf_loads_and_answers(service, paths, fake_hub):
    from workbench.detect import detect
    from workbench.options import GenerationRequest, GenParams, LoadOptions
    from workbench.services.model_service import ModelService

    p = service.wait(service.enqueue(service.find("org/smol-gguf:Q4_1"), "Q4_1"), 120)
    assert p.state == DONE, p.message
    path = os.path.join(paths.models, GGUF_NAME)
    assert detect(path).format == "gguf"
    models = ModelService(paths)
    try:
        models.load(models.resolve_name(GGUF_NAME), options=LoadOptions(n_ctx=512))
        messages = [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is the capital of France?"}]
        reply = models.complete(GenerationRequest(messages=messages, params=GenParams(temperature=0, max_tokens=24)))
        assert "Paris" in reply.text
    finally:
        models.close()
