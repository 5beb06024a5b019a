"""The "Get models" panel, launched on its own and driven with gradio_client: find (the fit column),
download with a moving progress bar, cancel, resume, and refusals as one sentence."""

from __future__ import annotations

import re
import time

import pytest

from tests.downloads.conftest import GGUF_NAME, visible

pytestmark = pytest.mark.slow


@pytest.fixture
def panel(service, paths):
    import gradio as gr
    from gradio_client import Client

    from workbench.services.model_service import ModelService
    from workbench.ui.download_panel import build_download_panel

    with gr.Blocks() as app:
        build_download_panel(service, ModelService(paths), app)
    app.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        yield Client(app.local_url, verbose=False)
    finally:
        app.close()


def percent(bar: str) -> float:
    return float(re.search(r"data-percent='([\d.]+)'", bar).group(1))


def state(bar: str) -> str:
    return re.search(r"data-state='(\w+)'", bar).group(1)


def test_fit_column_then_a_moving_bar_cancel_and_resume(panel, paths, fake_hub):
    summary, table, form = panel.predict("org/smol-gguf", None, 4096, api_name="/find_repo")
    assert "Recommended: **Q4_1**" in summary and "planned from 2.0 MiB of headers" in summary
    (row,) = table["data"]
    assert row[0] == "Q4_1 (recommended)" and row[4] == "fits" and row[5].startswith("fits at context 4096")
    assert form["value"] == "Q4_1"
    tight = panel.predict("org/smol-gguf", "tiny-box", 8192, api_name="/find_repo")[1]["data"][0]
    assert tight[4] == "does not fit" and "lower context to" in tight[5]

    fake_hub.faults.throttle_bps = 30 * 2**20
    bar, _, job, _ = panel.predict("org/smol-gguf", None, 4096, "Q4_1", "", api_name="/start_download")
    job_id = job["value"]
    seen = []
    while not seen or seen[-1] < 40:
        bar = panel.predict(job_id, api_name="/download_progress")[0]
        assert state(bar) in ("queued", "running"), bar
        seen.append(percent(bar))
        time.sleep(0.1)
    assert seen == sorted(seen) and len(set(seen)) >= 3 and "MiB/s" in bar and "left" in bar
    bar, _, _, kept = panel.predict(job_id, api_name="/cancel_download")
    deadline = time.monotonic() + 10
    while state(bar) != "cancelled" and time.monotonic() < deadline:
        bar, _, _, kept = panel.predict(job_id, api_name="/download_progress")
    assert state(bar) == "cancelled" and "kept" in bar and visible(paths.models) == []
    assert [c[0] for c in kept["choices"]] == [GGUF_NAME]

    fake_hub.faults.throttle_bps = None
    bar, _, job, _ = panel.predict(GGUF_NAME, api_name="/resume_download")
    deadline = time.monotonic() + 30
    while state(bar) != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
        bar = panel.predict(job["value"], api_name="/download_progress")[0]
    assert state(bar) == "done" and percent(bar) == 100.0 and visible(paths.models) == [GGUF_NAME]


def test_refusals_are_one_sentence(panel, fake_hub):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no repository org/nope"):
        panel.predict("org/nope", None, 4096, api_name="/find_repo")
    with pytest.raises(AppError, match="cannot be a name in models/"):
        panel.predict("org/tiny", None, 4096, "transformers", "../up", api_name="/start_download")
