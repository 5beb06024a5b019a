"""A browser walkthrough of the launched app, as a person would take it, for eyes rather than asserts.

    .venv/bin/python scripts/walkthrough.py [OUT_FOLDER]

Launches webui.py with the sample model on a scratch root, then at desktop (1400 px) and phone
(390 px) width: types a question and presses Enter, presses Enter again during the reply, and visits
every tab. Screenshots go to OUT_FOLDER (default test-artifacts/walkthrough/), named
<width>-<step>.png. What they showed once is pinned by browser tests in tests/e2e/.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.conftest import SAMPLE_NAME  # noqa: E402
from tests.e2e.conftest import stop  # noqa: E402
from tests.ui.test_webui import App, scratch_root  # noqa: E402

SIZES = {"desktop": dict(viewport={"width": 1400, "height": 900}),
         "phone": dict(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)}


def walk(page, out: str, label: str) -> None:
    def shot(step: str, full: bool = False) -> None:
        page.screenshot(path=os.path.join(out, f"{label}-{step}.png"), full_page=full)

    page.locator("#chatbot").wait_for()
    shot("1-chat")
    box = page.locator("#chat-input textarea")
    box.click()
    box.type("What is the capital of France?")
    box.press("Enter")
    page.wait_for_timeout(500)
    box.type("And of Germany?")
    box.press("Enter")  # during the reply: a toast says why nothing was sent, the text stays
    page.wait_for_timeout(300)
    shot("2-enter-during-reply")
    page.locator("#chatbot [data-testid='bot']").last.wait_for()
    page.wait_for_timeout(8000)
    shot("3-replied", full=True)
    for number, tab in enumerate(("Model", "Training", "Compare"), start=4):
        page.get_by_role("tab", name=tab).click()
        page.wait_for_timeout(2000)
        shot(f"{number}-{tab.lower()}", full=True)


def main() -> None:
    from playwright.sync_api import sync_playwright

    out = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "test-artifacts", "walkthrough"))
    os.makedirs(out, exist_ok=True)
    root = scratch_root(pathlib.Path(tempfile.mkdtemp(prefix="walkthrough-")), os.path.join(ROOT, "models", SAMPLE_NAME))
    app = App("--model", SAMPLE_NAME, root=str(root))
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                                 args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            for label, size in SIZES.items():
                context = browser.new_context(**size)
                page = context.new_page()
                page.set_default_timeout(90_000)
                page.goto(app.url)
                walk(page, out, label)
                context.close()
            browser.close()
    finally:
        stop(app)
        shutil.rmtree(root, ignore_errors=True)
    print(f"screenshots in {out}")


if __name__ == "__main__":
    main()
