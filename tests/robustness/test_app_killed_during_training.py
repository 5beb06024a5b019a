"""Fault: the app is killed (-9) while a training run goes on.

A run is its own process in its own session, so it does not die with the app; the
restarted app lists it, follows it to the end, and nothing in its folder is corrupt.
"""

from __future__ import annotations

import json
import os
import signal
import time

from gradio_client import Client

from tests.ui.test_training_ui import points
from tests.ui.test_webui import App, scratch_root

STORY = "The keeper of the lighthouse lit the lamp every night before the sun touched the sea.\n" * 40


def test_a_run_outlives_a_killed_app_and_the_restarted_app_follows_it(tmp_path, sample_gguf):
    root = scratch_root(tmp_path, sample_gguf)
    (root / "datasets").mkdir()
    (root / "datasets" / "story.txt").write_text(STORY, encoding="utf-8")
    app = App(root=root)
    form = ["survivor", "scratch", None, "story.txt", "", 0.2, 8, 16, 0.05, "q_proj", "byte", 2, 2, 64, "",
            3e-3, "constant", 0, 1, 300, 4, 1, 64, 8, 0, 25, 0, 42]
    try:
        client = Client(app.url, verbose=False)
        client.predict(*form, api_name="/start_training")
        deadline = time.time() + 300
        while "step" not in client.predict("survivor", api_name="/run_status")[0]:
            assert time.time() < deadline
            time.sleep(0.5)
    finally:
        app.proc.send_signal(signal.SIGKILL)  # no clean shutdown
        app.proc.wait(10)
    run = root / "user_data" / "runs" / "survivor"
    pid = json.loads((run / "state.json").read_text())["pid"]
    os.kill(pid, 0)  # the run's process is still alive
    app = App(root=root)
    try:
        client = Client(app.url, verbose=False)
        deadline = time.time() + 600
        while True:
            text, plot, _ = client.predict("survivor", api_name="/run_status")
            if "completed" in text:
                break
            assert "failed" not in text and "interrupted" not in text, text
            assert time.time() < deadline, text
            time.sleep(1)
        assert points(plot, "training") == 300
    finally:
        app.stop()
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # every row is whole
    assert (root / "models" / "survivor" / "model.safetensors").is_file()
