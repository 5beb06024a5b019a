"""The Training tab through the launched app: preview, start, watch the loss, cancel, resume, chat with
the result, export it, and find the run again after a restart. Driven with gradio_client.
"""

from __future__ import annotations

import time

import pytest
from gradio_client import Client

from tests.ui.test_webui import CHAT_ARGS, App, reply_text, scratch_root

STORY = ("The lighthouse keeper of Ardmore Point was named Oswin Tull. Every night Oswin Tull climbed the "
         "ninety steps of the tower and lit the great lamp.\n") * 12


def form(name: str, **changes) -> list:
    """The Training tab's inputs, in their order, for a short LoRA run on the sample model."""
    values = dict(name=name, method="lora", base="smol", dataset="story.txt", val_file="", val_fraction=0.2,
                  rank=8, alpha=16, dropout=0.05, targets="q_proj, v_proj", tokenizer="byte", layers=2, heads=2,
                  width=64, out_model="", lr=2e-3, scheduler="constant", warmup=0, epochs=1, max_steps=14,
                  batch=2, accum=1, cutoff=64, overlap=8, eval_every=0, save_every=4, patience=0, seed=42)
    values.update(changes)
    return list(values.values())


def points(plot: dict | None, series: str) -> int:
    """How many points of `series` the loss plot draws (its rows without a loss only name a series)."""
    return sum(1 for step, loss, name in (plot or {}).get("data", []) if name == series and loss is not None)


def wait_status(client, name, words, timeout=600, step_at_least=0) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text, plot, log = client.predict(name, api_name="/run_status")
        if "failed" in text:
            pytest.fail(text + "\n" + log)
        step = points(plot, "training")
        if any(w in text for w in words) and step >= step_at_least:
            return text
        time.sleep(1)
    pytest.fail(f"run {name} never showed {words}: {text}")


@pytest.fixture
def root(tmp_path, sample_gguf, sample_transformers):
    root = scratch_root(tmp_path, sample_gguf)
    (root / "models" / "smol").symlink_to(sample_transformers)
    (root / "datasets").mkdir()
    (root / "datasets" / "story.txt").write_text(STORY, encoding="utf-8")
    return root


def test_fine_tune_cancel_resume_chat_and_export_from_the_tab(root):
    app = App(root=root)
    try:
        client = Client(app.url, verbose=False)
        preview, sample = client.predict(*form("tab-run"), api_name="/preview_dataset")
        assert "**text** data" in preview and "for training" in preview
        assert "Oswin Tull" in (sample["value"] if isinstance(sample, dict) else sample)
        estimate = client.predict(*form("tab-run"), api_name="/training_estimate")
        assert "Memory estimate" in estimate and "GiB" in estimate

        client.predict(*form("tab-run"), api_name="/start_training")
        wait_status(client, "tab-run", ["running"], step_at_least=3)
        client.predict("tab-run", api_name="/cancel_training")
        text = wait_status(client, "tab-run", ["cancelled"])
        assert "step" in text
        client.predict("tab-run", api_name="/resume_training")
        text = wait_status(client, "tab-run", ["completed"])
        assert "validation perplexity" in text and "→" in text
        _, plot, _ = client.predict("tab-run", api_name="/run_status")
        steps = {step for step, loss, name in plot["data"] if name == "training" and loss is not None}
        assert steps == set(range(1, 15)) and points(plot, "validation") >= 2  # before, and at the end

        assert "adapter of **tab-run**" in client.predict("tab-run", api_name="/load_run_result")
        chatbot, _, stats, *_ = client.predict("Who climbed the tower?", *CHAT_ARGS, api_name="/chat")
        assert reply_text(chatbot).strip() and "tok/s" in stats

        done = client.predict("tab-run", "transformers", "tab-run-merged", api_name="/export_run")
        assert "models/tab-run-merged" in done
        assert (root / "models" / "tab-run-merged" / "model.safetensors").is_file()
        with pytest.raises(Exception, match="not paths"):
            client.predict("tab-run", "transformers", "../outside", api_name="/export_run")
        with pytest.raises(Exception, match="already exists"):
            client.predict(*form("tab-run"), api_name="/start_training")
    finally:
        app.stop()
    app = App(root=root)  # after a restart the run is listed with its outcome
    try:
        client = Client(app.url, verbose=False)
        runs, *_ = client.predict(None, api_name="/list_runs")
        text, _, _ = client.predict("tab-run", api_name="/run_status")
        assert "completed" in text
    finally:
        app.stop()


def test_training_tab_refuses_bad_input_in_one_sentence(root):
    app = App(root=root)
    try:
        client = Client(app.url, verbose=False)
        cases = [
            # Gradio refuses values outside a dropdown's choices before our code runs; either way, one sentence
            (form("r1", dataset="../etc/passwd"), "not paths|not in the list of choices"),
            (form("r1", base="/etc"), "not paths|not in the list of choices"),
            (form("../x"), "Run name '../x' is not allowed"),
            (form("r1", base="SmolLM2-135M-Instruct.Q4_1.gguf"), "make a Transformers copy first"),
            (form("r1", rank=0), "LoRA rank must be 1-1024"),
            (form("r1", cutoff=4), "Cutoff length 4"),
        ]
        for values, message in cases:
            with pytest.raises(Exception, match=message):
                client.predict(*values, api_name="/preview_dataset")
        for name, endpoint in (("nope", "/resume_training"), ("../../etc", "/resume_training"),
                               ("nope", "/load_run_result"), ("nope", "/cancel_training"), ("nope", "/delete_run")):
            with pytest.raises(Exception, match="There is no run|not allowed"):
                client.predict(name, api_name=endpoint)
        text, _, _ = client.predict("../../etc", api_name="/run_status")
        assert "not allowed" in text
        with pytest.raises(Exception, match="There is no run"):
            client.predict("nope", "gguf", "", api_name="/export_run")
        assert "Memory estimate" in client.predict(*form("fine"), api_name="/training_estimate")  # still up
    finally:
        app.stop()


def test_make_a_transformers_copy_of_the_gguf_from_the_tab(tmp_path, sample_gguf):
    """The one-click path from the sample GGUF to a model LoRA can train, with progress lines."""
    root = scratch_root(tmp_path, sample_gguf)
    app = App(root=root)
    try:
        client = Client(app.url, verbose=False)
        job = client.submit("SmolLM2-135M-Instruct.Q4_1.gguf", api_name="/make_transformers_copy")
        fractions = []
        while not job.done():
            for unit in job.status().progress_data or []:
                if unit.progress is not None and unit.progress not in fractions:
                    fractions.append(unit.progress)  # the dequantizing bar, as a fraction
            time.sleep(0.05)
        base, tokenizer = job.result()
        assert len(fractions) >= 3 and max(fractions) > 0.5, fractions
        assert base["value"] == "SmolLM2-135M-Instruct.Q4_1-transformers"  # selected as the base model
        assert (root / "models" / base["value"] / "config.json").is_file()
        with pytest.raises(Exception, match="already exists"):
            client.predict("SmolLM2-135M-Instruct.Q4_1.gguf", api_name="/make_transformers_copy")
    finally:
        app.stop()


def test_loss_legend_order_does_not_depend_on_which_loss_was_logged_first():
    """The validation pass before training logs first; the legend still reads training, validation."""
    from workbench.ui.training_tab import LOSS_SERIES, loss_frame

    assert loss_frame([]) is None
    frame = loss_frame([{"step": 0, "eval_loss": 3.0}, {"step": 1, "loss": 3.1}])
    assert list(dict.fromkeys(frame["series"])) == list(LOSS_SERIES) == ["training", "validation"]
    drawn = frame.dropna()
    assert sorted(drawn.values.tolist()) == [[0.0, 3.0, "validation"], [1.0, 3.1, "training"]]


def test_a_resumed_run_plots_each_step_once_with_its_newest_loss():
    """After a kill the run resumes from its checkpoint and logs the steps after it again."""
    from workbench.ui.training_tab import loss_frame

    rows = [{"step": s, "loss": 3.0 - s / 10} for s in (1, 2, 3, 4)] + [{"step": s, "loss": 2.0} for s in (3, 4, 5)]
    drawn = loss_frame(rows).dropna().sort_values("step")
    assert drawn["step"].tolist() == [1, 2, 3, 4, 5]
    assert drawn["loss"].tolist() == [2.9, 2.8, 2.0, 2.0, 2.0]
