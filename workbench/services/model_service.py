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
from dataclasses import replace
from typing import TYPE_CHECKING, AsyncIterator, Iterator

from ..backends.registry import BackendSpec, Registry, check_installed, default_registry
from ..errors import LoadError, NoModelLoaded, WorkbenchError, WorkerDied
from ..hardware import Hardware, detect_hardware
from ..model_values import Completion, GenerationStats, LoadedModel, ModelEntry, ModelStatus, WorkerMemory
from ..options import GenerationRequest, LoadOptions
from ..paths import Paths, resolve_entry, resolve_inside
from ..plan import MemoryPlan, check_plan, make_plan
from ..rpc import parse_endpoints, query_devices
from ..runtime_probe import import_rss_bytes
from ..worker import ModelWorker

if TYPE_CHECKING:
    from ..jobs import JobSpec

MAX_PERPLEXITY_CHARS = 2_000_000


def _stopped_while_loading(path: str) -> LoadError:
    return LoadError(f"Loading {os.path.basename(path)} was stopped (Unload, or another load started).")


class ModelService:
    def __init__(self, paths: Paths, slot: str = "main", registry: Registry | None = None):
        self.paths = paths
        self.slot = slot  # names this service's worker log (a second slot serves the Compare tab)
        self.registry = registry or default_registry()
        self._worker: ModelWorker | None = None
        self._loaded: LoadedModel | None = None
        self._loading: ModelWorker | None = None  # a worker whose load is in progress (Unload kills it)
        self._lock = threading.Lock()  # guards the three above; not held while an engine loads

    # --- discovery -----------------------------------------------------------------
    def list_models(self) -> list[ModelEntry]:
        """Every entry in models/: what detection found, or why it cannot be read."""
        entries = []
        folder = self.paths.models
        if not os.path.isdir(folder):
            return entries
        for name in sorted(os.listdir(folder)):
            if name.startswith(".") or name.lower() in ("readme.md", "readme.txt"):
                continue
            try:
                detection = self.registry.detect(os.path.join(folder, name))
                entries.append(ModelEntry(name, detection, self.registry.default_for(detection.format).name))
            except WorkbenchError as e:
                entries.append(ModelEntry(name, error=str(e)))
        return entries

    def model_names(self) -> list[str]:
        """Names in models/ that can be loaded."""
        return [e.name for e in self.list_models() if e.error is None]

    def resolve_name(self, name: str) -> str:
        """Path of a model named by a client (browser, API): one of the entries of models/."""
        return resolve_entry(self.paths.models, name, "model")

    def locate(self, path_or_name: str) -> str:
        """A path typed by the local user (CLI, --model): as given, or else a name in models/."""
        if os.path.exists(path_or_name):
            return path_or_name
        in_models = os.path.join(self.paths.models, path_or_name)
        return in_models if os.path.exists(in_models) else path_or_name

    def backend_for(self, path: str, loader: str | None = None, trust_pickle: bool = False) -> BackendSpec:
        """The backend that would load `path` with the loader choice `loader`."""
        return self.registry.choose(self.registry.detect(path, trust_pickle), loader)

    def add_remote(self, name: str, base_url: str, model: str, api_key: str | None = None) -> str:
        """Save models/NAME.remote.json for `model` on the OpenAI-compatible server at `base_url`; its entry name.

        A key is saved apart, in user_data/remote_keys/ (0600). Keys from environment variables are only
        for the local command line (`remote add --api-key-env`): a browser user must not pick which of the
        server's variables is sent where."""
        from ..backends.remote_backend import save_entry

        for value, what in ((name, "a name"), (base_url, "the server's base URL"), (model, "the model name")):
            if not isinstance(value, str) or not value.strip():
                raise WorkbenchError(f"Give {what} for the remote server.")
        path = save_entry(self.paths.models, name.strip(), base_url.strip(), model.strip(),
                          api_key=(api_key or "").strip() or None)
        return os.path.basename(path)

    def transformers_copy_job(self, name: str | None) -> JobSpec:
        """The job that makes a Transformers copy of model `name` as models/<name>-transformers."""
        from ..jobs import JobSpec

        if not name:
            raise WorkbenchError("Pick the GGUF model to copy first.")
        out_name = os.path.splitext(name)[0] + "-transformers"
        out = resolve_inside(self.paths.models, out_name, "model")
        return JobSpec("convert_to_transformers", {"src": self.resolve_name(name), "out": out},
                       title=f"Make a Transformers copy of {name}")

    # --- planning -------------------------------------------------------------------
    def hardware(self) -> Hardware:
        return detect_hardware(self.paths.offload)

    def plan(self, path: str, loader: str | None = None, options: LoadOptions | None = None) -> MemoryPlan:
        """The memory plan for loading `path`: per device weights, KV cache, buffers, and whether it fits."""
        options = (options or LoadOptions()).validate()
        detection = self.registry.detect(path, trust_pickle=options.trust_pickle)
        return make_plan(detection, self._measured(self.registry.choose(detection, loader)), options,
                         self._hardware_for(options))

    def _hardware_for(self, options: LoadOptions) -> Hardware:
        """This machine, plus the RPC servers the load names (their free memory, asked now)."""
        hw = self.hardware()
        if not options.rpc_servers:
            return hw
        return replace(hw, rpc=query_devices(parse_endpoints(options.rpc_servers)))

    @staticmethod
    def _measured(spec: BackendSpec) -> BackendSpec:
        """`spec` with its planner's process size measured on this machine (runtime_probe.py)."""
        strategy = spec.planner.calibrated(import_rss_bytes(spec.planner.probe_imports))
        return spec if strategy is spec.planner else replace(spec, planner=strategy)

    # --- lifecycle -----------------------------------------------------------------
    def load(self, path: str, loader: str | None = None, options: LoadOptions | None = None) -> LoadedModel:
        """Plan, refuse what cannot fit, then start a worker and load; the previous model is unloaded first.

        `options` is not changed: the loaded model keeps them as asked (n_ctx 0 stays "auto") beside
        the context the plan chose.
        """
        asked = (options or LoadOptions()).validate()
        detection = self.registry.detect(path, trust_pickle=asked.trust_pickle)
        spec = self.registry.choose(detection, loader)
        check_installed(spec)
        spec = self._measured(spec)
        with self._lock:
            plan = make_plan(detection, spec, asked, self._hardware_for(asked))
            short_of_free = any(not d.fits and d.cap_source == "free" for d in plan.devices)
            if short_of_free and self._worker is not None:
                # The loaded model's memory may be what is missing: plan again without it.
                self._stop_worker()
                plan = make_plan(detection, spec, asked, self._hardware_for(asked))
            check_plan(plan)  # refused over a cap: the model loaded before stays loaded
            self._stop_worker()
            budget = ({d.device.replace("cuda:", ""): d.weights for d in plan.devices if d.device != "disk"}
                      if asked.max_ram_gib or asked.max_vram_gib else None)
            # Auto layers: the worker offloads what the plan placed (the engine's own default is all of
            # them, which a cap or a small GPU cannot hold).
            gpu_layers = plan.n_gpu_layers if asked.n_gpu_layers is None else asked.n_gpu_layers
            run_with = replace(asked, n_ctx=plan.n_ctx, parallel=plan.parallel, weight_budget=budget,
                               n_gpu_layers=gpu_layers, tensor_split=plan.tensor_split,
                               offload_folder=asked.offload_folder or self.paths.offload)
            worker = ModelWorker(log_path=os.path.join(self.paths.user_data, "logs", f"worker-{self.slot}.log"))
            self._loading = worker
        # The lock is not held while the engine loads, so Unload (or a newer load) can end a load
        # that takes long or hangs: it kills the loading worker.
        try:
            info = worker.load(spec, detection, run_with)
        except BaseException as e:
            worker.stop()
            with self._lock:
                stopped = self._loading is not worker
                if not stopped:
                    self._loading = None
            if stopped:
                raise _stopped_while_loading(detection.path) from e
            raise
        with self._lock:
            if self._loading is not worker:  # stopped just as it finished
                worker.stop()
                raise _stopped_while_loading(detection.path)
            self._loading = None
            self._worker = worker
            self._loaded = LoadedModel(
                name=os.path.basename(detection.path), backend=info["backend"], path=info["path"],
                format=info["format"], n_ctx=info["n_ctx"], device=info["device"], dtype=info["dtype"],
                n_threads=info["n_threads"], chat_template=info["chat_template"], details=info["details"],
                load_s=info["load_s"], memory=WorkerMemory(**info["memory"]), worker_pid=worker.pid,
                detection=detection, plan=plan, options=asked,
            )
            return self._loaded

    def unload(self) -> None:
        """End the worker process; all of the model's memory goes back to the system."""
        with self._lock:
            self._stop_worker()

    def _stop_worker(self) -> None:
        loading, self._loading = self._loading, None
        if loading is not None:  # a load in progress: its worker is killed, its load() says so
            loading.stop(timeout=1)
        if self._worker is not None:
            self._record_memory()
            self._worker.stop()
        self._worker, self._loaded = None, None

    def _record_memory(self) -> None:
        """Append the plan's prediction beside the worker's measured peak to user_data/memory_log.jsonl."""
        worker, loaded = self._worker, self._loaded
        if worker is None or loaded is None or not worker.alive():
            return
        try:
            peak = worker.memory(timeout=3).peak_rss_bytes  # a worker stuck in an engine call is not waited for
        except WorkbenchError:
            return
        predicted = loaded.plan.ram_total()
        entry = {"time": time.time(), "model": loaded.name, "backend": loaded.backend, "n_ctx": loaded.n_ctx,
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
                self._worker, self._loaded = None, None

    # --- use -----------------------------------------------------------------------
    def generate(self, request: GenerationRequest,
                 stop: threading.Event | None = None) -> Iterator[tuple[str, str | GenerationStats]]:
        """Stream ("token", text) events, then ("done", GenerationStats); setting `stop` ends this generation only."""
        request.params.validate()
        worker = self._require_worker()
        try:
            yield from worker.generate(request, stop)
        except WorkerDied:
            self._forget_dead(worker)
            raise

    async def agenerate(self, request: GenerationRequest) -> AsyncIterator[tuple[str, str | GenerationStats]]:
        """`generate` for asyncio callers (the API server): waiting for a turn holds no thread."""
        request.params.validate()
        worker = self._require_worker()
        try:
            async for event in worker.agenerate(request):
                yield event
        except WorkerDied:
            self._forget_dead(worker)
            raise

    def complete(self, request: GenerationRequest, stop: threading.Event | None = None) -> Completion:
        """Run a generation to the end (or until `stop` is set); return its text and stats."""
        pieces, stats = [], GenerationStats("cancelled")
        for kind, value in self.generate(request, stop):
            if kind == "token":
                pieces.append(value)
            elif kind == "done":
                stats = value
        return Completion("".join(pieces), stats)

    def tokenize(self, text: str) -> list[int]:
        return self._require_worker().tokenize(text)

    def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """(one embedding per text, or per list of token ids, and the tokens read) from the loaded model."""
        reply = self._require_worker().embed(texts)
        return reply["data"], reply["tokens"]

    def perplexity(self, text: str, window: int | None = None, on_progress=None) -> dict:
        """Perplexity of `text` under the loaded model, in windows of `window` tokens (default: min(context, 512))."""
        if not isinstance(text, str) or not text.strip():
            raise WorkbenchError("Give some text to measure perplexity on.")
        if len(text) > MAX_PERPLEXITY_CHARS:
            raise WorkbenchError(f"The text has {len(text):,} characters; perplexity takes up to "
                                 f"{MAX_PERPLEXITY_CHARS:,}, use a shorter file.")
        worker = self._require_worker()
        loaded = self._loaded
        window = window or min(loaded.n_ctx, 512)
        if not 2 <= window <= loaded.n_ctx:
            raise WorkbenchError(f"The window must be between 2 and the context size ({loaded.n_ctx}) tokens.")
        try:
            result = worker.perplexity(text, window, on_progress)
        except WorkerDied:
            self._forget_dead(worker)
            raise
        return {**result, "model": loaded.name, "backend": loaded.backend}

    def context_size(self) -> int:
        self._require_worker()
        return self._loaded.n_ctx

    def loaded(self) -> LoadedModel | None:
        """The loaded model, or None."""
        return self._loaded

    def is_loading(self) -> bool:
        """True while a worker is loading a model (Unload ends it)."""
        return self._loading is not None

    def loaded_name(self) -> str | None:
        loaded = self._loaded
        return loaded.name if loaded else None

    def cancel(self) -> None:
        """Stop the running generation at its next token (no-op when idle)."""
        if self._worker is not None:
            self._worker.cancel()

    def status(self) -> ModelStatus:
        """The loaded model and the worker's live RAM, or why nothing is loaded."""
        worker, loaded = self._worker, self._loaded
        if worker is None or loaded is None:
            return ModelStatus()
        if not worker.alive():
            self._forget_dead(worker)
            return ModelStatus(error="The model worker stopped unexpectedly; load the model again.")
        try:
            import psutil

            rss = psutil.Process(worker.pid).memory_info().rss
        except Exception:  # the process may end between the two lines
            rss = None
        return ModelStatus(loaded, rss)

    def worker_memory(self) -> WorkerMemory:
        """Current and peak RSS of the worker, measured inside it."""
        return self._require_worker().memory()

    def worker_pid(self) -> int | None:
        return self._worker.pid if self._worker is not None else None

    def close(self) -> None:
        self.unload()
