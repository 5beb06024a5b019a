"""Real training runs on the sample model: LoRA lowers the loss and changes the output, a GPT trained
from scratch loads and generates, runs survive kill -9 and Cancel and resume, exports load and answer.

Every run is its own process, started through TrainingService as the UI does.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import SAMPLE_NAME, run_cli
from workbench.errors import WorkbenchError
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService
from workbench.services.training_service import TrainingService
from workbench.training.config import TrainConfig

STORY = (
    "The lighthouse keeper of Ardmore Point was named Oswin Tull. Every night Oswin Tull climbed the ninety "
    "steps of the tower and lit the great lamp. The ships that passed Ardmore Point knew the light of Oswin "
    "Tull. When storms came, Oswin Tull stayed awake until dawn, watching the sea.\n"
)
PROMPT = "The lighthouse keeper of Ardmore Point was named"


@pytest.fixture(scope="module")
def root(tmp_path_factory, sample_gguf, sample_transformers):
    root = tmp_path_factory.mktemp("train-root")
    (root / "models").mkdir()
    (root / "models" / "smol").symlink_to(sample_transformers)
    (root / "models" / SAMPLE_NAME).symlink_to(sample_gguf)
    (root / "datasets").mkdir()
    (root / "datasets" / "story.txt").write_text(STORY * 8, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def service(root):
    return TrainingService(Paths(str(root)))


def greedy(models: ModelService, path: str, options: LoadOptions, loader: str | None = None) -> str:
    models.load(path, loader, options)
    request = GenerationRequest(prompt=PROMPT, params=GenParams(temperature=0, max_tokens=12))
    return models.complete(request).text


def scratch_config(name: str, **changes) -> TrainConfig:
    base = dict(name=name, method="scratch", dataset="story.txt", cutoff_len=64, overlap=16, n_layer=2, n_head=2,
                n_embd=64, max_steps=30, batch_size=4, learning_rate=3e-3, save_every=5, validation_fraction=0.2)
    return TrainConfig(**{**base, **changes})


def wait_for_step(service: TrainingService, name: str, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = service.status(name)
        assert status.status == "running", f"{status.status}: {status.error}\n{service.log_tail(name)}"
        if status.step >= step:
            return
        time.sleep(0.3)
    raise AssertionError(f"run {name} did not reach step {step}:\n{service.log_tail(name)}")


def losses(service, name) -> list[float]:
    return [r["loss"] for r in service.metrics(name) if "loss" in r]


@pytest.fixture(scope="module")
def lora_run(service):
    config = TrainConfig(name="lora1", base_model="smol", dataset="story.txt", cutoff_len=64, overlap=16,
                         max_steps=16, batch_size=2, learning_rate=2e-3, save_every=8, validation_fraction=0.2,
                         lora_rank=8, lora_alpha=16)
    service.start(config)
    status = service.wait("lora1", 900)
    assert status.status == "completed", f"{status.error}\n{service.log_tail('lora1')}"
    return status


def test_lora_lowers_the_loss_and_changes_the_output(lora_run, service, root, sample_transformers):
    curve = losses(service, "lora1")
    assert len(curve) == 16
    assert sum(curve[-4:]) / 4 < sum(curve[:4]) / 4
    assert lora_run.perplexity_after < lora_run.perplexity_before
    models = ModelService(Paths(str(root)))
    try:
        before = greedy(models, sample_transformers, LoadOptions(n_ctx=512))
        base, adapter = service.adapter_of("lora1")
        after = greedy(models, base, LoadOptions(n_ctx=512, adapter=adapter))
        # perplexity with the adapter, through the worker, agrees with the run's own measurement direction
        scored = models.perplexity(STORY * 2, window=64)["perplexity"]
    finally:
        models.close()
    assert before != after
    assert scored < lora_run.perplexity_before


def test_lora_on_a_gptq_model_trains_and_loads_with_its_adapter(service, root, sample_gptq):
    (root / "models" / "smol-gptq").symlink_to(sample_gptq)
    config = TrainConfig(name="gptq-lora", base_model="smol-gptq", dataset="story.txt", cutoff_len=64, overlap=16,
                         max_steps=6, batch_size=2, learning_rate=2e-3, save_every=6, validation_fraction=0.2)
    service.start(config)
    status = service.wait("gptq-lora", 900)
    assert status.status == "completed", f"{status.error}\n{service.log_tail('gptq-lora')}"
    assert status.perplexity_after < status.perplexity_before
    base, adapter = service.adapter_of("gptq-lora")
    models = ModelService(Paths(str(root)))
    try:
        assert greedy(models, base, LoadOptions(n_ctx=512, adapter=adapter)).strip()
        assert models.status().loaded.backend == "gptq"
    finally:
        models.close()
    result = run_cli("export", "gptq-lora", "--to", "gguf", str(root / "models" / "nope.gguf"),
                     env={"WORKBENCH_ROOT": str(root)})
    assert result.returncode == 2 and "cannot be merged into its quantized weights" in result.stderr


def test_scratch_gpt_trains_loads_and_generates(service, root):
    service.start(scratch_config("scratch1", output_model="tiny-gpt"))
    status = service.wait("scratch1", 600)
    assert status.status == "completed", f"{status.error}\n{service.log_tail('scratch1')}"
    curve = losses(service, "scratch1")
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 1.0  # a fresh model learns fast at first
    assert status.output == str(root / "models" / "tiny-gpt")
    models = ModelService(Paths(str(root)))
    try:
        info = models.load(models.resolve_name("tiny-gpt"), None, LoadOptions(n_ctx=64))
        result = models.complete(GenerationRequest(messages=[{"role": "user", "content": "Oswin"}],
                                                   params=GenParams(temperature=0, max_tokens=16)))
    finally:
        models.close()
    assert info.backend == "transformers"
    assert result.stats.completion_tokens > 0


def test_a_killed_run_is_listed_and_resumes_from_its_checkpoint(service):
    service.start(scratch_config("killed", max_steps=60))
    wait_for_step(service, "killed", 7)  # a checkpoint at step 5 exists
    pid = service.run_files("killed").read_state()["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 30
    while service.status("killed").status == "running" and time.time() < deadline:
        time.sleep(0.2)
    interrupted = service.status("killed")
    assert interrupted.status == "interrupted" and interrupted.resumable
    assert "killed" in TrainingService(service.paths).names()  # a restarted app lists it too
    checkpoint = service.run_files("killed").last_checkpoint()
    assert checkpoint is not None
    logged_before_kill = len([r for r in service.metrics("killed") if "loss" in r])
    service.resume("killed")
    status = service.wait("killed", 600)
    assert status.status == "completed", f"{status.error}\n{service.log_tail('killed')}"
    steps = [r["step"] for r in service.metrics("killed") if "loss" in r]
    # The kill may land right after a checkpoint's own step was logged, so the steps need not go back;
    # what matters is that the resumed process went on from the step after the checkpoint.
    assert steps[logged_before_kill] == int(checkpoint.rsplit("-", 1)[1]) + 1
    assert steps[-1] == 60
    assert "resuming from checkpoint-" in service.log_tail("killed", 200)


def test_cancel_keeps_a_checkpoint_and_resume_finishes(service):
    service.start(scratch_config("cancelled", max_steps=400, save_every=1000))
    wait_for_step(service, "cancelled", 3)
    service.cancel("cancelled")
    status = service.wait("cancelled", 120)
    assert status.status == "cancelled" and status.resumable
    checkpoint = service.run_files("cancelled").last_checkpoint()
    assert checkpoint is not None  # saved at the step it stopped on, though save_every is 1000
    stopped_at = int(checkpoint.rsplit("-", 1)[1])
    with pytest.raises(WorkbenchError, match="not running"):
        service.cancel("cancelled")
    service.resume("cancelled")
    wait_for_step(service, "cancelled", stopped_at + 2)
    assert service.running() == ["cancelled"]
    with pytest.raises(WorkbenchError, match="Run 'cancelled' is still training"):
        service.start(scratch_config("second"))  # one run at a time
    assert "second" not in service.names()
    service.cancel("cancelled")
    assert service.wait("cancelled", 120).status == "cancelled"
    service.delete("cancelled")
    assert "cancelled" not in service.names()


@pytest.mark.parametrize("change, message", [
    ({"dataset": "../story.txt"}, "not paths"),
    ({"dataset": "missing.txt"}, "There is no dataset 'missing.txt'"),
    ({"base_model": SAMPLE_NAME}, "is a GGUF file; make a Transformers copy first"),
    ({"base_model": "../etc"}, "not paths"),
    ({"base_model": "/etc"}, "not paths"),
    ({"name": "lora1"}, "already exists"),
    ({"target_modules": ["nonexistent_proj"]}, None),
])
def test_bad_runs_are_refused_or_fail_with_a_reason(service, lora_run, change, message):
    config = TrainConfig(**{**dict(name="bad", base_model="smol", dataset="story.txt", max_steps=2), **change})
    if message is None:  # found only once the model is built: the run fails and says why
        service.start(config)
        status = service.wait("bad", 300)
        assert status.status == "failed" and "no module named nonexistent_proj" in status.error
        service.delete("bad")
        return
    with pytest.raises(WorkbenchError, match=message):
        if "base_model" in change and change["base_model"] == SAMPLE_NAME:
            service.preview(config)
        else:
            service.start(config)
    assert "bad" not in service.names()


def test_bad_dataset_fails_the_run_with_its_reason(service, root):
    (root / "datasets" / "latin.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    service.start(scratch_config("badtext", dataset="latin.txt"))
    status = service.wait("badtext", 300)
    assert status.status == "failed" and "is not UTF-8" in status.error


def test_exports_load_and_answer(lora_run, root):
    env = {"WORKBENCH_ROOT": str(root)}
    merged = root / "models" / "lora1-merged"
    result = run_cli("export", "lora1", "--to", "transformers", str(merged), env=env)
    assert result.returncode == 0, result.stderr
    result = run_cli("generate", "-", "--adapter", "lora1", "-p", PROMPT, "--temperature", "0", "--max-tokens", "8",
                     "--json", env=env)
    assert result.returncode == 0 and json.loads(result.stdout)["text"].strip(), result.stderr
    gguf = root / "models" / "lora1.gguf"
    result = run_cli("export", "lora1", "--to", "gguf", str(gguf), env=env)
    assert result.returncode == 0, result.stderr
    models = ModelService(Paths(str(root)))
    try:
        from_merged = greedy(models, str(merged), LoadOptions(n_ctx=512))
        from_gguf = greedy(models, str(gguf), LoadOptions(n_ctx=512))
        assert models.status().loaded.backend == "llama.cpp"
    finally:
        models.close()
    assert from_merged.strip() and from_gguf.strip()
    # the same weights in two engines (bf16 and q8_0): the first word agrees
    first_word = lambda text: "".join(ch for ch in text.split()[0] if ch.isalnum())  # noqa: E731
    assert first_word(from_merged) == first_word(from_gguf)


def test_cli_train_and_eval(root):
    env = {"WORKBENCH_ROOT": str(root)}
    config = root / "run.yaml"
    config.write_text(scratch_config("cli-run", max_steps=6, output_model="cli-gpt").to_yaml(), encoding="utf-8")
    result = run_cli("train", "--config", str(config), "--json", env=env)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert lines[-1]["run"]["status"] == "completed"
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    result = run_cli("eval", "cli-gpt", "--text", str(root / "datasets" / "story.txt"), "--window", "64", "--json",
                     env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["perplexity"] > 1
    result = run_cli("train", "--config", str(root / "nope.yaml"), env=env)
    assert result.returncode == 2 and "nope.yaml" in result.stderr


def test_perplexity_agrees_between_gguf_and_its_transformers_form(root):
    env = {"WORKBENCH_ROOT": str(root)}
    text = str(root / "datasets" / "story.txt")
    values = {}
    for name in (SAMPLE_NAME, "smol"):
        result = run_cli("eval", name, "--text", text, "--window", "128", "--json", env=env)
        assert result.returncode == 0, result.stderr
        values[name] = json.loads(result.stdout)["perplexity"]
    assert abs(values[SAMPLE_NAME] / values["smol"] - 1) < 0.05
