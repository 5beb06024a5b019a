"""The Training tab in a real browser: start a short LoRA run, watch the loss plot move, reload the
page and find the run still followed, then see it complete. Screenshots go to test-artifacts/e2e/.
"""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    PASSWORD,
    USER,
    RunningApp,
    legend_fits,
    legend_labels,
    open_app,
    screenshot,
)
from tests.ui.test_webui import scratch_root

STORY = ("The lighthouse keeper of Ardmore Point was named Oswin Tull. Every night Oswin Tull climbed the "
         "ninety steps of the tower and lit the great lamp.\n") * 12
STEP = re.compile(r"step (\d+) of (\d+)")
RUN_DEADLINE_S = 600  # a generous bound for a busy two-core machine, not a speed check


@pytest.fixture(scope="module")
def running(browser, tmp_path_factory, sample_gguf, sample_transformers):
    root = scratch_root(tmp_path_factory.mktemp("e2e-train"), sample_gguf)
    (root / "models" / "smol").symlink_to(sample_transformers)
    (root / "datasets").mkdir()
    (root / "datasets" / "story.txt").write_text(STORY, encoding="utf-8")
    running = RunningApp("--auth", f"{USER}:{PASSWORD}", root=root)
    yield running
    running.close()


def pick(page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def set_number(page, label: str, value) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Tab")


def plot_path(page) -> str:
    """The loss lines as drawn (path data of the line marks that have a colour), or "" before any is."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('#loss-plot svg .mark-line path'))
        .filter(p => (p.getAttribute('stroke') || 'none') !== 'none' && /L/.test(p.getAttribute('d') || ''))
        .map(p => p.getAttribute('d')).join('|')""")


def test_a_training_run_shows_a_moving_loss_plot_and_survives_a_reload(running, page):
    open_app(page, running.url)
    page.get_by_role("tab", name="Training").click()
    page.get_by_label("Run name", exact=True).fill("browser-run")
    pick(page, "Base model (Transformers form)", "smol")
    pick(page, "Dataset (datasets/)", "story.txt")
    set_number(page, "Max steps", 16)
    set_number(page, "Batch size", 2)
    set_number(page, "Cutoff length (tokens)", 64)
    set_number(page, "Save every N steps", 8)
    set_number(page, "Evaluate every N steps", 4)
    page.get_by_role("button", name="Memory estimate").click()
    expect(page.locator("#train-estimate")).to_contain_text("GiB")
    page.locator("#start-training").click()
    status = page.locator("#run-status")
    expect(status).to_contain_text("browser-run")

    steps, drawings = [], set()
    deadline = time.time() + RUN_DEADLINE_S
    while time.time() < deadline and len(steps) < 3:
        text = status.inner_text()
        match = STEP.search(text)
        if match and (not steps or int(match.group(1)) > steps[-1]):
            steps.append(int(match.group(1)))
            drawings.add(plot_path(page))
            if len(steps) == 2:
                screenshot(page, "10-training-loss-moving")
        assert "failed" not in text, text
        page.wait_for_timeout(300)
    assert len(steps) >= 3, f"the step count did not advance: {steps}"
    assert len(drawings - {""}) >= 2, "the loss plot was not redrawn as steps came in"
    assert legend_labels(page, "loss-plot") == ["training", "validation"] and legend_fits(page, "loss-plot")

    page.reload()  # a new page load re-attaches to the running (or finished) run
    open_app(page, running.url)
    page.get_by_role("tab", name="Training").click()
    expect(page.get_by_role("combobox", name="Runs (user_data/runs/)")).to_have_value("browser-run")
    expect(status).to_contain_text(re.compile(r"running|completed"))
    expect(status).to_contain_text("completed", timeout=RUN_DEADLINE_S * 1000)
    expect(status).to_contain_text("validation perplexity")
    assert plot_path(page)
    screenshot(page, "11-training-completed")
