"""Training runs as the app sees them: start, list, follow, cancel, resume, delete.

Each run is its own process (`workbench.training.runner`) writing into
user_data/runs/<name>/; this service only writes the run's config, starts or signals the
process and reads the files back, so a page reload or an app restart re-attaches to a run
simply by reading its folder. Names from a browser resolve inside their folders (models/,
datasets/, user_data/runs/); the CLI may pass its own paths.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import WorkbenchError
from ..trash import Trash
from ..paths import Paths, resolve_entry, resolve_inside
from ..training.config import LORA, RUN_NAME, SCRATCH, TrainConfig
from ..training.estimate import TrainEstimate
from ..training.run_files import CANCELLED, FAILED, INTERRUPTED, RUNNING, RunFiles

if TYPE_CHECKING:
    from ..jobs import JobSpec

DATASET_SUFFIXES = (".txt", ".md", ".json", ".jsonl")
RUN_MODULES = ("workbench.training.runner", "workbench.training.launch")  # a run's process (one, or the launcher)


class RunError(WorkbenchError):
    """A run cannot be started, found or changed as asked."""


@dataclass
class RunStatus:
    name: str
    method: str
    status: str                 # running, completed, failed, cancelled, interrupted
    step: int
    max_steps: int
    loss: float | None
    eval_loss: float | None
    eta_s: float | None         # seconds left, from the recent step times
    error: str | None
    output: str | None
    perplexity_before: float | None
    perplexity_after: float | None
    resumable: bool


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        import psutil

        proc = psutil.Process(pid)
        cmdline = " ".join(proc.cmdline())
        return proc.status() != psutil.STATUS_ZOMBIE and any(m in cmdline for m in RUN_MODULES)
    except Exception:  # noqa: BLE001 - gone, or not ours
        return False


def eta_seconds(rows: list[dict], started: float | None = None) -> float | None:
    """Seconds left from the step times this process measured (None until its first step: a resumed run's
    older rows would give a number that stands still while it loads)."""
    steps = [r for r in rows if "loss" in r and r.get("step_s") and (not started or r.get("time", 0) >= started)]
    if not steps:
        return None
    recent = [r["step_s"] for r in steps[-10:]]
    last = steps[-1]
    left = max(0, (last.get("max_steps") or 0) - last["step"])
    return left * sorted(recent)[len(recent) // 2]


class TrainingService:
    def __init__(self, paths: Paths, runner: str = "workbench.training.runner"):
        self.paths = paths
        self.runner = runner  # the module a run's process executes (tests use workbench.training.fake_runner)
        self._procs: dict[str, subprocess.Popen] = {}  # children of this app, reaped when they end

    # names ---------------------------------------------------------------
    def run_files(self, name: str) -> RunFiles:
        if not isinstance(name, str) or not RUN_NAME.match(name):
            raise RunError(f"Run name {name[:40] if isinstance(name, str) else name!r} is not allowed; "
                           "use up to 64 letters, digits, '-', '_' or '.'." if name else
                           "No run is picked; choose one from the list.")
        return RunFiles(resolve_inside(self.paths.runs, name, "run"))

    def datasets(self) -> list[str]:
        folder = self.paths.datasets
        if not os.path.isdir(folder):
            return []
        return sorted(f for f in os.listdir(folder) if f.lower().endswith(DATASET_SUFFIXES) and not f.startswith("."))

    def dataset_path(self, name: str) -> str:
        path = resolve_inside(self.paths.datasets, name, "dataset")
        if not os.path.isfile(path):
            raise RunError(f"There is no dataset {name!r} in datasets/; put your file there or upload it.")
        return path

    def dataset_text(self, name: str | None) -> str:
        """The text of dataset `name` (in datasets/), for perplexity."""
        from ..training.dataset import read_text

        if not name:
            raise RunError("Pick a text file from datasets/ first.")
        return read_text(self.dataset_path(name))[0]

    def _resolve(self, config: TrainConfig, trusted_paths: bool, need_dataset: bool = True) -> TrainConfig:
        """The config with every name turned into a checked absolute path."""
        def model(name):
            if trusted_paths and os.path.exists(name):
                return os.path.abspath(name)
            return resolve_entry(self.paths.models, name)

        def dataset(name):
            if trusted_paths and os.path.isfile(name):
                return os.path.abspath(name)
            return self.dataset_path(name)

        resolved = TrainConfig(**config.to_dict())
        if config.method == LORA:
            resolved.base_model = model(config.base_model)
        elif config.tokenizer != "byte":
            resolved.tokenizer = model(config.tokenizer)
        if not need_dataset:
            return resolved
        resolved.dataset = dataset(config.dataset)
        if config.validation_file:
            resolved.validation_file = dataset(config.validation_file)
        return resolved.validate()

    def estimate(self, config: TrainConfig, trusted_paths: bool = False) -> TrainEstimate:
        """Memory the run will need (see training/estimate.py), from the model's files, before anything loads."""
        from ..detect import detect
        from ..training.estimate import estimate, scratch_parameters

        resolved = self._resolve(config, trusted_paths, need_dataset=False)
        if config.method == LORA:
            d = detect(resolved.base_model)
            if not (d.parameter_count and d.embedding_size and d.n_layers and d.vocab_size):
                raise RunError(f"The files of {os.path.basename(d.path)} do not say its size; cannot estimate memory.")
            stored = 4.0 if (d.quantization or "").startswith(("float32", "f32")) else 2.0
            return estimate(resolved, d.parameter_count, d.embedding_size, d.n_layers, d.vocab_size, stored)
        vocab = 260 if config.tokenizer == "byte" else (detect(resolved.tokenizer).vocab_size or 50000)
        return estimate(resolved, scratch_parameters(resolved, vocab), config.n_embd, config.n_layer, vocab)

    def check_memory(self, config: TrainConfig, trusted_paths: bool = False) -> str:
        """Refuse a run that cannot fit in this machine's RAM; return the estimate's summary."""
        from ..hardware import detect_hardware

        need = self.estimate(config, trusted_paths)
        hw = detect_hardware()
        if need.total > hw.ram_total_bytes:
            raise RunError(f"This run needs {need.summary()}, more than this machine's "
                           f"{hw.ram_total_bytes / 2**30:.1f} GiB of RAM; lower the batch size, the cutoff length "
                           "or the processes.")
        return need.summary()

    # lifecycle -----------------------------------------------------------
    def running(self) -> list[str]:
        """Names of the runs whose process is training now (from state.json and the process table)."""
        names = []
        for name in self.names():
            state = self.run_files(name).read_state()
            if state.get("status") == RUNNING and _alive(state.get("pid")):
                names.append(name)
        return names

    def _refuse_if_busy(self, name: str) -> None:
        """One run at a time: two would split the cores and add up memory the estimate does not count."""
        busy = [n for n in self.running() if n != name]
        if busy:
            raise RunError(f"Run {busy[0]!r} is still training; wait for it to finish or cancel it, "
                           "then start this one (two runs would share this machine's cores and memory).")

    def start(self, config: TrainConfig, trusted_paths: bool = False) -> RunStatus:
        """Write the run folder and start its process."""
        config.validate()
        if config.node_rank:
            raise RunError("Start a run on machine 0; the other machines run the command it prints.")
        run = self.run_files(config.name)
        if os.path.exists(run.folder):
            raise RunError(f"A run named {config.name!r} already exists; pick another name, or resume or delete it.")
        self._refuse_if_busy(config.name)
        self.check_memory(config, trusted_paths)
        resolved = self._resolve(config, trusted_paths)
        output = None
        if config.method == SCRATCH:
            output_name = config.output_model or config.name
            output = resolve_inside(self.paths.models, output_name, "model")
            if os.path.exists(output):
                raise RunError(f"models/{output_name} already exists; choose another output model name.")
        os.makedirs(run.folder)
        from ..atomic import write_text_atomic

        write_text_atomic(run.config, resolved.to_yaml())
        run.update_state(status=RUNNING, method=config.method, created=time.time(), output_path=output)
        self._launch(run)
        return self.status(config.name)

    def _launch(self, run: RunFiles) -> None:
        env = dict(os.environ, WORKBENCH_ROOT=self.paths.root, PYTHONUNBUFFERED="1")
        module = self.runner
        if module == "workbench.training.runner" and self._distributed(run):
            module = "workbench.training.launch"  # torchrun in that process, the runner in each rank
        log = open(run.log, "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, run.folder],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                start_new_session=True,
            )
        finally:
            log.close()
        run.update_state(status=RUNNING, pid=proc.pid)
        self._procs[run.name] = proc

    def _distributed(self, run: RunFiles) -> bool:
        try:
            config = self.config(run.name)
        except WorkbenchError:
            return False
        return config.world_size > 1

    def node_commands(self, name: str) -> list[str]:
        """The command to run on each other machine of a several-machine run (empty for one machine).

        That machine needs the same run folder (at least config.yaml, with the model and dataset at the
        same paths) and this project; it writes nothing there, machine 0 writes the run's files."""
        from ..training.distributed import other_node_commands

        return other_node_commands(self.config(name), self.run_files(name).folder, self.paths.root)

    def resume(self, name: str) -> RunStatus:
        run = self.run_files(name)
        current = self.status(name)
        if current.status == RUNNING:
            raise RunError(f"Run {name!r} is already running.")
        if not current.resumable:
            raise RunError(f"Run {name!r} has {current.status}; there is nothing to resume.")
        self._refuse_if_busy(name)
        try:
            os.unlink(run.cancel_flag)
        except FileNotFoundError:
            pass
        self._launch(run)
        return self.status(name)

    def cancel(self, name: str) -> RunStatus:
        """Ask the run to save a checkpoint and stop (it finishes its current step first)."""
        run = self.run_files(name)
        current = self.status(name)
        if current.status != RUNNING:
            raise RunError(f"Run {name!r} is not running ({current.status}).")
        with open(run.cancel_flag, "w"):
            pass
        pid = run.read_state().get("pid")
        if _alive(pid) and not self._distributed(run):  # several processes: each rank sees the flag at a step's end
            os.kill(pid, signal.SIGTERM)
        return current

    def wait(self, name: str, timeout: float) -> RunStatus:
        """Block until the run is no longer running (or the timeout passes); for the CLI and tests."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(name)
            if status.status != RUNNING:
                return status
            time.sleep(0.5)
        return self.status(name)

    def delete(self, name: str) -> None:
        run = self.run_files(name)
        if not os.path.isdir(run.folder):
            raise RunError(f"There is no run {name!r}.")
        if self.status(name).status == RUNNING:
            raise RunError(f"Run {name!r} is running; cancel it before deleting it.")
        Trash(self.paths.runs, keep=3).put(run.folder)  # runs are big: the last three can be undone

    def undo_delete(self) -> str:
        """Bring back the run deleted last; return its name."""
        return Trash(self.paths.runs, keep=3).restore_latest(self.paths.runs, "run")

    # reading -------------------------------------------------------------
    def names(self) -> list[str]:
        """The runs, newest first; a run folder that leads outside runs/ is left out (see `listing`)."""
        return self.listing()[0]

    def listing(self) -> tuple[list[str], list[str]]:
        """(the runs newest first, one sentence per run folder that was skipped because it leads outside runs/)."""
        if not os.path.isdir(self.paths.runs):
            return [], []
        runs, skipped = [], []
        for n in os.listdir(self.paths.runs):
            if not RUN_NAME.match(n) or not os.path.isdir(os.path.join(self.paths.runs, n)):
                continue
            try:
                self.run_files(n)
            except WorkbenchError:  # a link that leads out: report it, list the rest
                skipped.append(f"Run {n!r} leads outside runs/, so it was skipped; move it into runs/ or delete the link.")
                continue
            runs.append(n)
        return sorted(runs, key=lambda n: os.path.getmtime(os.path.join(self.paths.runs, n)), reverse=True), skipped

    def status(self, name: str) -> RunStatus:
        run = self.run_files(name)
        if not os.path.isdir(run.folder):
            raise RunError(f"There is no run {name!r}.")
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is not None:
            del self._procs[name]
        state = run.read_state()
        status = state.get("status") or FAILED
        if status == RUNNING and not _alive(state.get("pid")):
            status = INTERRUPTED
        rows = run.read_metrics()
        steps = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_loss" in r]
        last = steps[-1] if steps else {}
        return RunStatus(
            name=name,
            method=state.get("method", "?"),
            status=status,
            step=last.get("step", 0),
            max_steps=last.get("max_steps", 0),
            loss=last.get("loss"),
            eval_loss=evals[-1]["eval_loss"] if evals else None,
            eta_s=eta_seconds(rows, state.get("started")) if status == RUNNING else None,
            error=state.get("error") if status == FAILED else None,
            output=state.get("output"),
            perplexity_before=state.get("perplexity_before"),
            perplexity_after=state.get("perplexity_after"),
            resumable=status in (CANCELLED, INTERRUPTED, FAILED) and os.path.isfile(run.config),
        )

    def metrics(self, name: str) -> list[dict]:
        return self.run_files(name).read_metrics()

    def log_tail(self, name: str, lines: int = 30) -> str:
        return self.run_files(name).log_tail(lines)

    def config(self, name: str) -> TrainConfig:
        run = self.run_files(name)
        try:
            with open(run.config, encoding="utf-8") as f:
                return TrainConfig.from_yaml(f.read(), f"runs/{name}/config.yaml")
        except FileNotFoundError as e:
            raise RunError(f"Run {name!r} has no config.yaml; it cannot be resumed.") from e

    # preparing and using ------------------------------------------------------
    def preview(self, config: TrainConfig, trusted_paths: bool = False) -> dict:
        """Counts, problems and one rendered example of the config's dataset, as the run will see it."""
        from ..training.dataset import load_dataset, preview, split_examples, tokenize_dataset
        from ..training.model_setup import chat_template_of, load_tokenizer

        resolved = self._resolve(config, trusted_paths)
        if resolved.method == LORA:
            from ..training.model_setup import check_base_model

            check_base_model(resolved.base_model)
        tokenizer = load_tokenizer(resolved)
        template = chat_template_of(tokenizer)
        raw = load_dataset(resolved.dataset)
        examples = tokenize_dataset(raw, tokenizer, resolved.cutoff_len, resolved.overlap, template)
        info = preview(raw, examples, tokenizer, template)
        if resolved.validation_file:
            info["train_examples"], info["validation_examples"] = len(examples.input_ids), "separate file"
        else:
            train, val = split_examples(examples, resolved.validation_fraction, resolved.seed)
            info["train_examples"], info["validation_examples"] = len(train.input_ids), len(val.input_ids) if val else 0
        return info

    def save_upload(self, source_path: str, filename: str) -> str:
        """Copy an uploaded file into datasets/ under a safe version of its name; return that name."""
        import re

        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(filename or "dataset.txt")).lstrip(".") or "dataset.txt"
        if not base.lower().endswith(DATASET_SUFFIXES):
            raise RunError(f"{base} is not a .txt, .md, .json or .jsonl file; upload training text or JSON rows.")
        os.makedirs(self.paths.datasets, exist_ok=True)
        stem, ext = os.path.splitext(base)
        name, n = base, 1
        while os.path.exists(os.path.join(self.paths.datasets, name)):
            n += 1
            name = f"{stem}-{n}{ext}"
        target = resolve_inside(self.paths.datasets, name, "dataset")
        from ..training.dataset import MAX_DATASET_BYTES

        if os.path.getsize(source_path) > MAX_DATASET_BYTES:
            raise RunError(f"The upload is larger than {MAX_DATASET_BYTES // 2**20} MiB; split it into smaller files.")
        tmp = target + ".part"
        shutil.copyfile(source_path, tmp)
        os.replace(tmp, target)
        return name

    def adapter_of(self, name: str) -> tuple[str, str]:
        """(base model path, adapter folder) of a finished LoRA run."""
        config = self.config(name)
        adapter = self.run_files(name).adapter
        if config.method != LORA or not os.path.isfile(os.path.join(adapter, "adapter_model.safetensors")):
            raise RunError(f"Run {name!r} has no finished LoRA adapter; a completed LoRA run has one.")
        return config.base_model, adapter

    def export_job(self, name: str, kind: str, out_name: str | None) -> JobSpec:
        """The job that exports run `name` as `kind` (transformers, gptq, gguf) to models/OUT_NAME (or a default)."""
        from ..jobs import JobSpec

        if not name:
            raise RunError("Pick a run to export.")
        out_name = (out_name or "").strip() or f"{name}-{kind}"
        if kind == "gguf" and not out_name.endswith(".gguf"):
            out_name += ".gguf"
        out = resolve_inside(self.paths.models, out_name, "model")
        status = self.status(name)
        if status.status != "completed" or (status.method != LORA and not status.output):
            raise RunError(f"Run {name!r} has not completed; there is nothing to export yet.")
        if status.method == LORA:
            source, adapter = self.adapter_of(name)
        else:
            if kind == "transformers":
                raise RunError(f"The scratch model is already a Transformers folder: "
                               f"models/{os.path.basename(status.output)}.")
            source, adapter = status.output, None
        return JobSpec("export", {"kind": kind, "source": source, "out": out, "adapter": adapter},
                       title=f"Export {name} as {kind} to models/{out_name}")

    def result_to_load(self, name: str) -> tuple[str, str | None, str | None]:
        """(model path, loader, adapter) that loads a completed run's result for chat."""
        status = self.status(name)
        if status.status != "completed":
            raise RunError(f"Run {name!r} has not completed ({status.status}); finish or resume it first.")
        if status.method == LORA:
            base, adapter = self.adapter_of(name)
            return base, None, adapter
        return status.output, None, None
