"""The chat box as a person uses it, in a real browser, on the fake backend (fast to launch):
Enter sends, Shift+Enter adds a line, and an error is a toast that leaves the page usable.

Keys are pressed, never Send clicked, since the keyboard is what people use.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import open_app, screenshot, stop
from tests.fast.fakes import scratch, write_fake_model
from tests.ui.test_webui import App


@pytest.fixture(scope="module")
def app(browser, tmp_path_factory):  # `browser` first: without chromium the module skips
    root = scratch(tmp_path_factory.mktemp("keys"))
    write_fake_model(root / "models", reply="Echo: {last_user}")
    write_fake_model(root / "models", "other.json", reply="The other model.")
    run = root / "user_data" / "runs" / "long-log"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"status": "completed", "finished": 1}))
    (run / "train.log").write_text("".join(f"step {i}: loss {3 - i / 100:.2f}\n" for i in range(60)))
    app = App("--model", "fake.json", root=str(root), env={"WORKBENCH_BACKENDS": "workbench.backends.fake_backend:SPEC"})
    app.root = root
    yield app
    stop(app)


def saved_user_messages(root) -> list[str]:
    folder = os.path.join(str(root), "user_data", "chats")
    messages = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            messages += [m["content"] for m in json.load(f)["messages"] if m["role"] == "user"]
    return messages


def test_enter_sends_and_shift_enter_adds_a_line(app, page):
    open_app(page, app.url)
    box = page.locator("#chat-input textarea")
    box.click()
    box.type("first line")
    box.press("Shift+Enter")
    box.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("Echo: first line", timeout=60_000)
    expect(box).to_have_value("")
    screenshot(page, "keys-enter-sends")
    assert "first line\nsecond line" in saved_user_messages(app.root)  # sent as typed, no trailing newline
    box.type("just enter")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("Echo: just enter", timeout=60_000)
    assert "just enter" in saved_user_messages(app.root)


def test_an_error_is_a_toast_and_leaves_no_badges(app, page):
    open_app(page, app.url)
    box = page.locator("#chat-input textarea")
    box.click()
    box.press("Enter")  # an empty message: refused
    toast = page.locator(".toast-body").first
    expect(toast).to_contain_text("The message is empty", timeout=30_000)
    screenshot(page, "keys-error-toast")
    # No component keeps an error badge, and the box takes typing at once.
    badges = page.locator("[data-testid='status-tracker'] .error:visible")
    expect(badges).to_have_count(0)
    box.type("after the error")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("Echo: after the error",
                                                                               timeout=60_000)
    expect(badges).to_have_count(0)


def test_the_chatbots_trash_icon_starts_a_new_conversation(app, page):
    open_app(page, app.url)
    box = page.locator("#chat-input textarea")
    box.click()
    box.type("before the trash")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("Echo: before the trash",
                                                                               timeout=60_000)
    page.locator("#chatbot").get_by_role("button", name=re.compile("clear", re.I)).click()
    expect(page.locator("#chatbot [data-testid='bot']")).to_have_count(0)
    box.type("after the trash")
    box.press("Enter")
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("Echo: after the trash", timeout=60_000)
    folder = os.path.join(str(app.root), "user_data", "chats")
    conversations = []
    for name in os.listdir(folder):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            conversations.append([m["content"] for m in json.load(f)["messages"] if m["role"] == "user"])
    assert ["after the trash"] in conversations  # sent without the old history
    assert any("before the trash" in c for c in conversations)  # which stays saved


def test_enter_during_a_reply_says_why_nothing_was_sent(browser, tmp_path):
    from tests.e2e.conftest import open_app as open_page

    root = scratch(tmp_path)
    write_fake_model(root / "models", reply="slow " * 200, token_delay_s=0.05)
    slow = App("--model", "fake.json", root=str(root), env={"WORKBENCH_BACKENDS": "workbench.backends.fake_backend:SPEC"})
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        open_page(page, slow.url)
        box = page.locator("#chat-input textarea")
        box.click()
        box.type("first")
        box.press("Enter")
        expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text("slow", timeout=60_000)
        box.type("second")
        box.press("Enter")
        expect(page.locator(".toast-body").last).to_contain_text("A reply is still being written", timeout=30_000)
        expect(box).to_have_value("second")  # kept, to send when the reply is done
        screenshot(page, "keys-send-during-reply")
        page.locator("#stop").click()
    finally:
        context.close()
        stop(slow)


def test_the_chat_tab_names_the_model_and_the_model_tab_follows_a_load_made_elsewhere(app, page):
    from gradio_client import Client

    open_app(page, app.url)
    expect(page.locator("#chat-model")).to_contain_text("Talking to fake.json")
    page.get_by_role("tab", name="Model").click()
    expect(page.locator("#model-name input")).to_have_value("fake.json")
    # Another client (the Training tab's Load in Chat, a second browser tab) loads another model.
    Client(app.url, verbose=False).predict("other.json", "auto", 0, -2, 512, 0, "f16", True, True, False, "auto",
                                           "auto", 0, 0, api_name="/load_model")
    expect(page.locator("#model-name input")).to_have_value("other.json", timeout=30_000)
    page.get_by_role("tab", name="Chat").click()
    expect(page.locator("#chat-model")).to_contain_text("Talking to other.json")
    screenshot(page, "keys-model-line")


def test_the_training_log_shows_its_newest_line(app, page):
    open_app(page, app.url)
    page.get_by_role("tab", name="Training").click()
    log = page.locator("#run-log textarea")
    expect(log).to_have_value(re.compile("step 59: loss 2.41"), timeout=30_000)
    at_end = page.wait_for_function("""() => { const t = document.querySelector('#run-log textarea');
        return t && t.scrollHeight > t.clientHeight && t.scrollTop + t.clientHeight >= t.scrollHeight - 2; }""",
                                    timeout=15_000)
    assert at_end


def test_a_reply_shows_no_eta_over_the_lists(app, page):
    open_app(page, app.url)
    box = page.locator("#chat-input textarea")
    box.click()
    box.type("watch the list")
    box.press("Enter")
    # While the reply runs, nothing covers the conversation list or the box (no ETA overlay).
    covered = page.evaluate("""() => ['#conversations', '#chat-input'].some(id => {
        const t = document.querySelector(id + ' [data-testid="status-tracker"]');
        return t && getComputedStyle(t).display !== 'none' && t.innerText.trim() !== ''; })""")
    assert not covered
    expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text(
        re.compile("Echo: watch the list|The other model"), timeout=60_000)


def test_on_a_phone_the_message_box_is_on_the_first_screen(app, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_app(page, app.url)
        box = page.locator("#chat-input textarea")
        top = box.bounding_box()["y"]
        screenshot(page, "keys-phone")
        assert top + 40 < 844, f"the message box starts {top:.0f} px down"
        box.click()
        box.type("from the phone")
        box.press("Enter")
        expect(page.locator("#chatbot [data-testid='bot']").last).to_contain_text(
            re.compile("Echo: from the phone|The other model"), timeout=60_000)
    finally:
        context.close()


def test_a_reload_keeps_the_training_form(app, page):
    open_app(page, app.url)
    page.get_by_role("tab", name="Training").click()
    name = page.get_by_label("Run name")
    name.fill("kept-after-reload")
    name.press("Tab")
    page.wait_for_timeout(500)  # the form is saved as it is typed
    page.reload()
    page.locator("#chatbot").wait_for()
    page.get_by_role("tab", name="Training").click()
    expect(page.get_by_label("Run name")).to_have_value("kept-after-reload", timeout=30_000)


def test_on_a_phone_the_memory_plan_is_readable(app, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    try:
        open_app(page, app.url)
        page.get_by_role("tab", name="Model").click()
        plan = page.locator("#plan-text pre")
        expect(plan).to_contain_text("total", timeout=30_000)
        screenshot(page, "keys-phone-model")
        fits = page.evaluate("""() => { const p = document.querySelector('#plan-text pre');
            return {overflow: p.scrollWidth - p.clientWidth, width: p.getBoundingClientRect().width}; }""")
        assert fits["overflow"] <= 2 and fits["width"] >= 250, fits
    finally:
        context.close()


def test_the_tab_bar_keeps_its_names_as_each_tab_is_opened(app, page):
    """Selecting Training once showed Compare's button as a second, selected "Training"."""
    open_app(page, app.url)
    names = ["Chat", "Model", "Training", "Compare"]
    shown = "() => Array.from(document.querySelectorAll('[role=tab]')).map(t => [t.textContent.trim(), t.getAttribute('aria-selected')])"
    for name in ["Model", "Training", "Compare", "Chat", "Training"]:
        page.get_by_role("tab", name=name).click()
        expect(page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")
        tabs = page.evaluate(shown)
        assert [label for label, _ in tabs] == names, tabs
        assert [label for label, selected in tabs if selected == "true"] == [name], tabs
