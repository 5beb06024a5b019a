"""ModelService: the loaded model, behind one API for the UI, the HTTP API and the CLI.

Owns: listing `models/`, choosing a backend (registry), the worker process that holds
the model, loading, unloading, streaming generation and cancel. Takes and returns plain
values; raises WorkbenchError subclasses. It holds no weights itself.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Iterator

from ..backends import registry
from ..detect import Detection, detect
from ..errors import NoModelLoaded, WorkbenchError, WorkerDied
from ..hardware import Hardware, detect_hardware
from ..options import GenerationRequest, LoadOptions
from ..paths import Paths, resolve_entry
from ..plan import MemoryPlan, check_plan, make_plan
from ..worker import ModelWorker


def describe(detection: Detection) -> dict:
    """A model-list row: what detection found plus the backend that would load it."""
    row = detection.to_dict()
    row["name"] = os.path.basename(detection.path)
    row["backend"] = registry.default_backend(detection.format)
    return row


MAX_PERPLEXITY_CHARS = 2_000_000


class ModelService:
    def __init__(self, paths: Paths, slot: str = "main"):
        self.paths = paths
        self.slot = slot  # names this service's worker log (a second slot serves the Compare tab)
        self._worker: ModelWorker | None = None
        self._info: dict | None = None
        self._lock = threading.Lock()  # load/unload one at a time

    # --- discovery -----------------------------------------------------------------
    def list_models(self) -> list[dict]:
        """Every entry in models/: a detection row, or {"name", "error"} for what cannot be read."""
        rows = []
        folder = self.paths.models
        if not os.path.isdir(folder):
            return rows
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or name.lower() in ("readme.md", "readme.txt"):
                continue
            try:
                row = describe(detect(os.path.join(folder, name)))
                row["name"] = name
            except WorkbenchError as e:
                row = {"name": name, "error": str(e)}
            rows.append(row)
        return rows

    def resolve_name(self, name: str) -> str:
        """Path of a model named by a client (browser, API): one of the entries of models/."""
        return resolve_entry(self.paths.models, name, "model")

    def locate(self, path_or_name: str) -> str:
        """A path typed by the local user (CLI, --model): as given, or else a name in models/."""
        if os.path.exists(path_or_name):
            return path_or_name
        in_models = os.path.join(self.paths.models, path_or_name)
        return in_models if os.path.exists(in_models) else path_or_name

    # --- planning -------------------------------------------------------------------
    def hardware(self) -> Hardware:
        return detect_hardware(self.paths.offload)

    def plan(self, path: str, loader: str | None = None, options: LoadOptions | None = None) -> MemoryPlan:
        """The memory plan for loading `path`: per device weights, KV cache, buffers, and whether it fits."""
        options = (options or LoadOptions()).validate()
        detection = detect(path, trust_pickle=options.trust_pickle)
        spec = registry.choose(detection, loader)
        return make_plan(detection, spec.name, options, self.hardware())

    # --- lifecycle -----------------------------------------------------------------
    def load(self, path: str, loader: str | None = None, options: LoadOptions | None = None) -> dict:
        """Plan, refuse what cannot fit, then start a worker and load; the previous model is unloaded first."""
        options = (options or LoadOptions()).validate()
        if options.offload_folder is None:
            options.offload_folder = self.paths.offload
        detection = detect(path, trust_pickle=options.trust_pickle)
        spec = registry.choose(detection, loader)
        registry.check_installed(spec)
        with self._lock:
            plan = make_plan(detection, spec.name, options, self.hardware())
            short_of_free = any(not d.fits and d.cap_source == "free" for d in plan.devices)
            if short_of_free and self._worker is not None:
                # The loaded model's memory may be what is missing: plan again without it.
                self._stop_worker()
                plan = make_plan(detection, spec.name, options, self.hardware())
            check_plan(plan)  # refused over a cap: the model loaded before stays loaded
            self._stop_worker()
            options.n_ctx = plan.n_ctx  # auto (0) becomes the context the plan chose
            if options.max_ram_gib or options.max_vram_gib:
                options.weight_budget = {d.device.replace("cuda:", ""): d.weights
                                         for d in plan.devices if d.device != "disk"}
            worker = ModelWorker(log_path=os.path.join(self.paths.user_data, "logs", f"worker-{self.slot}.log"))
            try:
                info = worker.load(spec.name, detection, options)
            except BaseException:
                worker.stop()
                raise
            info["name"] = os.path.basename(detection.path)
            info["detection"] = detection.to_dict()
            info["worker_pid"] = worker.pid
            info["plan"] = plan.to_dict()
            info["options"] = {k: v for k, v in options.to_dict().items() if k != "weight_budget"}
            self._worker, self._info = worker, info
            return dict(info)

    def unload(self) -> None:
        """End the worker process; all of the model's memory goes back to the system."""
        with self._lock:
            self._stop_worker()

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._record_memory()
            self._worker.stop()
        self._worker, self._info = None, None

    def _record_memory(self) -> None:
        """Append the plan's prediction beside the worker's measured peak to user_data/memory_log.jsonl."""
        worker, info = self._worker, self._info
        if worker is None or info is None or not worker.alive():
            return
        try:
            peak = worker.memory()["peak_rss_bytes"]
        except WorkbenchError:
            return
        plan = info["plan"]
        predicted = sum(d["total"] for d in plan["devices"] if d["device"] == "cpu")
        entry = {"time": time.time(), "model": info["name"], "backend": info["backend"], "n_ctx": info["n_ctx"],
                 "predicted_ram_bytes": predicted, "measured_peak_rss_bytes": peak,
                 "error": (predicted - peak) / peak if peak else None}
        os.makedirs(self.paths.user_data, exist_ok=True)
        with open(os.path.join(self.paths.user_data, "memory_log.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _require_worker(self) -> ModelWorker:
        worker = self._worker
        if worker is None:
            raise NoModelLoaded("No model is loaded; load one in the Model tab (or pass --model).")
        if not worker.alive():
            self._forget_dead(worker)
            raise WorkerDied("The model worker stopped unexpectedly; load the model again.")
        return worker

    def _forget_dead(self, worker: ModelWorker) -> None:
        with self._lock:
            if self._worker is worker:
                worker.stop(timeout=1)
                self._worker, self._info = None, None

    # --- use -----------------------------------------------------------------------
    def generate(self, request: GenerationRequest, stop: threading.Event | None = None) -> Iterator[tuple[str, object]]:
        """Stream ("token", text) events, then ("done", stats); setting `stop` ends this generation only."""
        request.params.validate()
        worker = self._require_worker()
        try:
            yield from worker.generate(request, stop)
        except WorkerDied:
            self._forget_dead(worker)
            raise

    def complete(self, request: GenerationRequest, stop: threading.Event | None = None) -> dict:
        """Run a generation to the end (or until `stop` is set); return {"text", **stats}."""
        pieces, stats = [], {}
        for kind, value in self.generate(request, stop):
            if kind == "token":
                pieces.append(value)
            else:
                stats = value
        return {"text": "".join(pieces), **stats}

    def tokenize(self, text: str) -> list[int]:
        return self._require_worker().tokenize(text)

    def perplexity(self, text: str, window: int | None = None, on_progress=None) -> dict:
        """Perplexity of `text` under the loaded model, in windows of `window` tokens (default: min(context, 512))."""
        if not isinstance(text, str) or not text.strip():
            raise WorkbenchError("Give some text to measure perplexity on.")
        if len(text) > MAX_PERPLEXITY_CHARS:
            raise WorkbenchError(f"The text has {len(text):,} characters; perplexity takes up to "
                                 f"{MAX_PERPLEXITY_CHARS:,}, use a shorter file.")
        worker = self._require_worker()
        n_ctx = self._info["n_ctx"]
        window = window or min(n_ctx, 512)
        if not 2 <= window <= n_ctx:
            raise WorkbenchError(f"The window must be between 2 and the context size ({n_ctx}) tokens.")
        try:
            result = worker.perplexity(text, window, on_progress)
        except WorkerDied:
            self._forget_dead(worker)
            raise
        return {**result, "model": self._info["name"], "backend": self._info["backend"]}

    def context_size(self) -> int:
        self._require_worker()
        return self._info["n_ctx"]

    def loaded_name(self) -> str | None:
        info = self._info
        return info["name"] if info else None

    def cancel(self) -> None:
        """Stop the running generation at its next token (no-op when idle)."""
        if self._worker is not None:
            self._worker.cancel()

    def status(self) -> dict:
        """The loaded model's info and the worker's live memory, or {"loaded": False}."""
        worker, info = self._worker, self._info
        if worker is None or info is None:
            return {"loaded": False}
        if not worker.alive():
            self._forget_dead(worker)
            return {"loaded": False, "error": "The model worker stopped unexpectedly; load the model again."}
        status = {"loaded": True, **info}
        try:
            import psutil

            status["worker_rss_bytes"] = psutil.Process(worker.pid).memory_info().rss
        except Exception:  # the process may end between the two lines
            pass
        return status

    def worker_memory(self) -> dict:
        """Current and peak RSS of the worker, measured inside it."""
        return self._require_worker().memory()

    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    def close(self) -> None:
        self.unload()
