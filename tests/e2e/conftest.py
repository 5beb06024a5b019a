"""Fixtures for the end-to-end tests: the app launched on a scratch root, and chromium pages.

Owns launching and stopping the app for these tests (every process it starts is ended,
the model worker included, even when a test fails), driving Debian's chromium through
Playwright (never Playwright's own browser download: scripts/setup.sh installs chromium
with apt), logging in through Gradio's login form, and the screenshots kept in
`test-artifacts/e2e/`. It does not own what the tests check.
"""

from __future__ import annotations

import os
import re
import shutil

import psutil
import pytest

from tests.conftest import ROOT
from tests.ui.test_webui import App, scratch_root

ARTIFACTS = os.path.join(ROOT, "test-artifacts", "e2e")
CHROMIUM = shutil.which("chromium")
USER, PASSWORD = "e2e", "browser-test-pass"
# The machine may be busy (two cores, other jobs): give the UI time rather than fail.
UI_TIMEOUT_MS = 90_000


def launch(*args: str, root, ready: str = "Running on local URL") -> App:
    """webui.py on a free port with WORKBENCH_ROOT=root (App reads its output on, so the pipe never fills)."""
    return App(*args, root=str(root), ready=ready)


def stop(app: App) -> None:
    """Stop the app (SIGINT, then SIGKILL) and kill any child it left behind, such as a model worker."""
    try:
        children = psutil.Process(app.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    app.stop()
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=10)


def tree_rss(app: App) -> dict[int, int]:
    """RSS in bytes of the app process and each of its descendants (the model worker), by pid."""
    parent = psutil.Process(app.proc.pid)
    rss = {}
    for proc in [parent, *parent.children(recursive=True)]:
        try:
            rss[proc.pid] = proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return rss


class RunningApp:
    """One launched app that a test can restart on the same root (its saved data stays)."""

    def __init__(self, *args: str, root):
        self.args, self.root = args, root
        self.app = launch(*args, root=root)
        self.model_loaded = False  # set by whoever loads the model, so others need not load it again

    @property
    def url(self) -> str:
        return self.app.url

    def restart(self) -> None:
        stop(self.app)
        self.app = launch(*self.args, root=self.root)
        self.model_loaded = False

    def close(self) -> None:
        stop(self.app)


@pytest.fixture(scope="module")
def e2e_root(tmp_path_factory, sample_gguf):
    """A scratch workbench root for one test module: the sample model linked in, shipped presets copied."""
    return scratch_root(tmp_path_factory.mktemp("e2e-root"), sample_gguf)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM:
        pytest.skip("chromium is not installed; scripts/setup.sh installs Debian's chromium with apt")
    from playwright.sync_api import sync_playwright

    os.makedirs(ARTIFACTS, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.call_report = report  # the `page` fixture saves a screenshot when the test failed
    return report


@pytest.fixture
def page(browser, request):
    """A fresh browser context (no cookies: a new login) and page; a screenshot is kept if the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        report = getattr(request.node, "call_report", None)
        if report is not None and report.failed:
            screenshot(page, f"FAILED-{request.node.name}")
        context.close()


def screenshot(page, name: str) -> str:
    """Save a full-page screenshot as test-artifacts/e2e/<name>.png; return its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, re.sub(r"[^\w.-]+", "_", name) + ".png")
    page.screenshot(path=path, full_page=True)
    return path


def login(page, user: str = USER, password: str = PASSWORD) -> None:
    """Fill Gradio's login form and submit it."""
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()


def open_app(page, url: str) -> None:
    """Go to the app, log in when it asks, and wait for the chat to show."""
    page.goto(url)
    page.locator("#chatbot, input[type=password]").first.wait_for()
    if page.get_by_label("password").count():
        login(page)
    page.locator("#chatbot").wait_for()


def legend_labels(page, elem_id: str) -> list[str]:
    """The entries of a Gradio plot's colour legend, as drawn (an empty legend draws none)."""
    return page.evaluate(f"""() => Array.from(document.querySelectorAll('#{elem_id} svg .role-legend-label text'))
        .map(t => t.textContent)""")


def legend_fits(page, elem_id: str) -> bool:
    """Whether a plot's legend is drawn inside the plot's box (a fixed height once cut it off)."""
    return page.evaluate(f"""() => {{
        const legend = document.querySelector('#{elem_id} svg .role-legend');
        const box = document.querySelector('#{elem_id}');
        if (!legend || !box) return false;
        const l = legend.getBoundingClientRect(), b = box.getBoundingClientRect();
        return l.height > 0 && l.bottom <= b.bottom + 1 && l.top >= b.top;
    }}""")
