"""The "Get models" panel in a real browser: webui.py launched with HF_ENDPOINT at the fake hub, the
Model tab's panel finds the sample repo (the fit column from headers only), and a throttled download
moves the progress bar to done; the model then lands in models/. Screenshots in test-artifacts/e2e/."""

from __future__ import annotations

import os
import time

import pytest

from tests.downloads.conftest import GGUF_NAME, hub  # noqa: F401 - the fake hub fixture, used below
from tests.e2e.conftest import open_app, screenshot, stop
from tests.ui.test_webui import App

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def app_with_hub(hub, tmp_path):
    import shutil

    from tests.conftest import ROOT

    (tmp_path / "models").mkdir()
    shutil.copytree(os.path.join(ROOT, "presets"), tmp_path / "presets",
                    ignore=shutil.ignore_patterns("this-machine.yaml"))
    app = App(root=str(tmp_path), env={"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": ""})
    try:
        yield app, tmp_path
    finally:
        stop(app)


def percent_and_state(page) -> tuple[float, str]:
    bar = page.locator("#dl-progress .dl-progress")
    if not bar.count():
        return 0.0, ""
    return float(bar.get_attribute("data-percent")), bar.get_attribute("data-state")


def test_panel_shows_the_fit_column_and_a_moving_bar(app_with_hub, page, hub):
    from playwright.sync_api import expect

    app, root = app_with_hub
    hub.faults.throttle_bps = 15 * 2**20
    hub.reset_counts()
    try:
        open_app(page, app.url)
        page.get_by_role("tab", name="Model").click()
        panel = page.locator("#download-panel")
        if not panel.count():
            pytest.skip("the Get models panel is not wired into the Model tab of this webui.py")
        panel.get_by_text("Get models").first.click()  # open the accordion
        page.locator("#dl-repo textarea, #dl-repo input").first.fill("org/smol-gguf")
        page.locator("#dl-find").click()
        forms = page.locator("#dl-forms")
        expect(forms).to_contain_text("Q4_1 (recommended)")
        expect(forms).to_contain_text("fits at context 4096")
        expect(page.locator("#dl-summary")).to_contain_text("planned from 2.0 MiB of headers")
        assert hub.bytes_served(GGUF_NAME) <= 2 << 20  # the header only
        screenshot(page, "downloads-fit-column")

        page.locator("#dl-start").click()
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pct, state = percent_and_state(page)
            if state == "running":
                seen.append(pct)
            if state == "done" or (state == "running" and pct >= 40 and len(set(seen)) >= 3):
                break
            page.wait_for_timeout(200)
        assert len(set(seen)) >= 2 and seen == sorted(seen), seen  # the bar moves forwards, drawn by the timer
        screenshot(page, "downloads-progress")
        hub.faults.throttle_bps = None
        expect(page.locator("#dl-progress .dl-progress[data-state='done']")).to_have_count(1)
        expect(page.locator("#dl-progress")).to_contain_text("is ready in models/")
        assert os.path.isfile(root / "models" / GGUF_NAME)
    finally:
        hub.faults.throttle_bps = None
