"""The main paths through the UI in a real browser (Debian's chromium via Playwright).

One app with a login (`--auth`) serves the module on a scratch root: log in, load the
sample model from the Model tab and see its memory plan, watch a reply stream, stop a
long reply, and reopen a saved conversation after the app restarts. Screenshots of each
step go to test-artifacts/e2e/. No timing assertions: the checks are what the page shows.
"""

from __future__ import annotations

import itertools
import re
import time

import pytest
from gradio_client import Client
from playwright.sync_api import expect

from tests.conftest import SAMPLE_NAME
from tests.e2e.conftest import (
    PASSWORD,
    USER,
    RunningApp,
    legend_fits,
    legend_labels,
    login,
    open_app,
    screenshot,
)

# n_ctx, n_gpu_layers (-2 auto), n_batch, threads, cache type, flash attn, mmap, mlock, dtype, device, caps
LOAD_FORM = (4096, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0)
# The last reply's text and the stats line under it, read in one go so they belong together.
READ_REPLY_JS = """() => {
    const bots = document.querySelectorAll('#chatbot [data-testid="bot"]');
    const stats = document.querySelector('#chat-stats');
    return {count: bots.length, text: bots.length ? bots[bots.length - 1].innerText : "",
            stats: stats ? stats.innerText : ""};
}"""
DONE = re.compile(r"tok/s")  # the stats line appears when a reply has ended (finished, limit or stopped)
REPLY_DEADLINE_S = 180  # a generous bound for a busy two-core machine, not a speed check


@pytest.fixture(scope="module")
def running(browser, e2e_root):  # `browser` first: without chromium the module skips before launching anything
    running = RunningApp("--auth", f"{USER}:{PASSWORD}", root=e2e_root)
    yield running
    running.close()


@pytest.fixture
def loaded(running):
    """The module's app with the sample model loaded (through the API when no test loaded it yet)."""
    if not running.model_loaded:
        client = Client(running.url, auth=(USER, PASSWORD), verbose=False)
        assert "llama.cpp" in client.predict(SAMPLE_NAME, "auto", *LOAD_FORM, api_name="/load_model")
        running.model_loaded = True
    return running


def read_reply(page) -> dict:
    return page.evaluate(READ_REPLY_JS)


def use_deterministic_preset(page) -> None:
    """Open the chat settings, apply the Deterministic preset and wait until the sliders show it."""
    if not page.locator("#generation-preset").is_visible():
        page.locator("#chat-settings").get_by_role("button", name="Settings").click()
    page.get_by_role("combobox", name="Generation preset").click()
    page.get_by_role("option", name="Deterministic", exact=True).click()
    page.locator("#apply-preset").click()
    # Until the preset's values arrive, a slider set now would be overwritten by them.
    expect(page.get_by_label("number input for Temperature")).to_have_value("0")


def set_max_tokens(page, n: int) -> None:
    box = page.locator("#max-tokens input[type=number]")
    box.fill(str(n))
    box.press("Enter")
    expect(page.locator("#max-tokens input[type=range]")).to_have_value(str(n))


def send(page, text: str) -> int:
    """Type a message and press Send; return how many replies the page showed before it."""
    before = read_reply(page)["count"]
    page.locator("#chat-input textarea").fill(text)
    page.locator("#send").click()
    return before


def wait_for_reply(page, replies_before: int, on_poll=None) -> tuple[dict, list[int]]:
    """Poll the page until a new reply has ended; return the last reading and the reply's length at each poll."""
    lengths: list[int] = []
    deadline = time.time() + REPLY_DEADLINE_S
    while time.time() < deadline:
        reading = read_reply(page)
        if reading["count"] > replies_before:
            lengths.append(len(reading["text"]))
            if on_poll:
                on_poll(reading)
            if DONE.search(reading["stats"]):
                return reading, lengths
        page.wait_for_timeout(50)
    pytest.fail(f"no finished reply within {REPLY_DEADLINE_S} s; last reading {read_reply(page)}")


def test_login_form_refuses_a_wrong_password_then_lets_the_user_in(running, page):
    page.goto(running.url)
    expect(page.get_by_role("button", name="Login")).to_be_visible()
    screenshot(page, "01-login-form")
    login(page, USER, "not-the-password")
    expect(page.get_by_text(re.compile("incorrect credentials", re.IGNORECASE))).to_be_visible()
    expect(page.locator("#chatbot")).to_have_count(0)
    login(page)
    expect(page.locator("#chatbot")).to_be_visible()
    for tab in ("Chat", "Model", "Compare"):
        expect(page.get_by_role("tab", name=tab)).to_be_visible()
    screenshot(page, "02-logged-in")


def test_model_tab_shows_the_memory_plan_and_loads_the_sample_model(running, page):
    open_app(page, running.url)
    page.get_by_role("tab", name="Model").click()
    expect(page.get_by_role("combobox", name="Model (from models/)")).to_have_value(SAMPLE_NAME)
    page.locator("#unload-model").click()
    expect(page.locator("#model-status")).to_contain_text("No model loaded")
    plan = page.locator("#plan-text")
    expect(plan).to_contain_text("llama.cpp")
    expect(plan).to_contain_text("KV cache")
    expect(plan).to_contain_text("fits")
    expect(page.locator("#plan-chart svg .mark-rect path").first).to_be_visible()  # the bars are drawn
    assert legend_labels(page, "plan-chart") == ["weights", "KV cache", "compute", "runtime", "cap"]
    assert legend_fits(page, "plan-chart")
    screenshot(page, "03-model-memory-plan")
    page.locator("#load-model").click()
    status = page.locator("#model-status")
    expect(status).to_contain_text("Loaded")
    expect(status).to_contain_text(SAMPLE_NAME)
    expect(status).to_contain_text("llama.cpp")
    expect(status).to_contain_text(re.compile(r"RAM of the worker \(pid \d+\): \d+ MiB now"))
    running.model_loaded = True
    screenshot(page, "04-model-loaded")


def test_a_reply_streams_into_the_page(loaded, page):
    open_app(page, loaded.url)
    use_deterministic_preset(page)
    set_max_tokens(page, 128)
    before = send(page, "Write a short poem about the sea.")
    shots = []

    def mid_stream(reading):
        if reading["text"] and not DONE.search(reading["stats"]) and not shots:
            shots.append(screenshot(page, "05-chat-streaming"))

    final, lengths = wait_for_reply(page, before, on_poll=mid_stream)
    screenshot(page, "06-chat-reply-done")
    assert final["text"].strip()
    assert "finished" in final["stats"] or "token limit" in final["stats"]
    # Streaming: the page showed the reply at several growing lengths before it ended.
    grew = sum(later > earlier for earlier, later in itertools.pairwise(lengths))
    assert grew >= 3, f"the reply did not grow across polls: lengths {lengths}"
    assert lengths[0] < len(final["text"]), "the first poll already showed the whole reply"


def test_stop_ends_a_long_reply_and_the_next_message_still_works(loaded, page):
    open_app(page, loaded.url)
    use_deterministic_preset(page)
    set_max_tokens(page, 4096)
    before = send(page, "Count from 1 to 1000, separated by commas.")
    deadline = time.time() + REPLY_DEADLINE_S
    while True:  # wait until the reply is well under way
        reading = read_reply(page)
        if reading["count"] > before and len(reading["text"]) >= 40:
            break
        assert time.time() < deadline, f"the long reply did not start: {reading}"
        page.wait_for_timeout(50)
    assert not DONE.search(reading["stats"]), f"the reply ended before Stop was pressed: {reading}"
    page.locator("#stop").click()
    expect(page.locator("#chat-stats")).to_contain_text("stopped")
    stopped = read_reply(page)
    tokens = int(re.match(r"(\d+) tokens", stopped["stats"]).group(1))
    assert tokens < 4096
    screenshot(page, "07-chat-stopped")
    for _ in range(10):  # it stays stopped
        page.wait_for_timeout(150)
        assert read_reply(page)["text"] == stopped["text"]
    set_max_tokens(page, 48)
    before = send(page, "What is the capital of France?")
    final, _ = wait_for_reply(page, before)
    assert final["count"] == 2 and final["text"].strip()
    assert "stopped" not in final["stats"]


def test_a_saved_conversation_reopens_after_a_restart(loaded, page):
    question = "What is the capital of Italy?"
    open_app(page, loaded.url)
    use_deterministic_preset(page)
    set_max_tokens(page, 48)
    before = send(page, question)
    answer, _ = wait_for_reply(page, before)
    screenshot(page, "08-before-restart")
    loaded.restart()  # same root, new process (and port); no model loaded
    open_app(page, loaded.url)
    expect(page.locator('#chatbot [data-testid="bot"]')).to_have_count(0)
    page.get_by_role("combobox", name="Saved conversations").click()
    page.get_by_role("option", name=re.compile(re.escape(question))).first.click()
    expect(page.locator('#chatbot [data-testid="user"]')).to_have_text([question])
    expect(page.locator('#chatbot [data-testid="bot"]')).to_have_count(1)
    assert read_reply(page)["text"] == answer["text"]
    screenshot(page, "09-reopened-after-restart")


# The Training tab's browser test (start a run, watch the loss plot move, re-attach after a page
# reload) is in test_training_browser.py.


NARROW_BLOCKS_JS = """() => Array.from(document.querySelectorAll('.block'))
    .map(b => [b.getBoundingClientRect(), b.textContent.trim().slice(0, 40)])
    .filter(([r]) => r.width > 0 && r.height > 0 && r.width < 100).map(([r, text]) => [Math.round(r.width), text])"""


def test_on_a_phone_every_field_of_every_tab_is_wide_enough_to_read(running, browser):
    """At 390 px the Model tab's Flash attention, mmap and mlock boxes shrank to 46 px (labels cut to
    "Fl", "m"): Gradio lets a checkbox shrink to its box. The llama.cpp form shows those fields."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(90_000)
    try:
        open_app(page, running.url)
        for tab in ("Chat", "Model", "Training", "Compare"):
            page.get_by_role("tab", name=tab).click()
            if tab == "Model":
                expect(page.get_by_label("mmap")).to_be_visible()
            page.wait_for_timeout(500)
            assert page.evaluate(NARROW_BLOCKS_JS) == [], tab
            screenshot(page, f"phone-{tab}")
    finally:
        context.close()
