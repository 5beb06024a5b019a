"""The model worker process: one loaded model per process, tokens streamed over a pipe.

`ModelWorker` (used in the app process) spawns `_worker_main` (the child) and speaks a
tiny message protocol with it. Why a process: a native crash in a model parser cannot
kill the app, unloading returns every byte (the process ends), a generation can be
cancelled, and the model's memory can be measured on its own.

Messages, parent -> child: ("load", engine, detection, options) where `engine` names the
backend class by dotted path (so a backend registered at run time loads too), ("generate", request),
("tokenize", text), ("memory",), ("score", text, window), ("shutdown",).
"score" (perplexity) is answered by ("progress", done, total) messages, then ("ok", result).
Child -> parent: ("ok", value), ("token", text), ("done", GenerationStats as a dict),
("error", error_class_name, message).
Cancel is a shared Event the child checks after every token, so it needs no pipe round trip.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Callable, Iterator

from .backends.base import DoneEvent
from .detect import Detection
from .errors import WorkbenchError, WorkerDied, brief, raise_by_name
from .model_values import GenerationStats, WorkerMemory
from .options import GenerationRequest, LoadOptions

if TYPE_CHECKING:
    from .backends.registry import BackendSpec

_CTX = mp.get_context("spawn")
STREAM_COALESCE_S = 0.05  # at most ~20 sends a second: smooth to read, light on a small machine


def _peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory() -> dict:
    """RSS now and at peak; `anon_bytes` leaves out file pages (mmapped weights the OS can drop)."""
    import psutil

    info = psutil.Process().memory_info()
    return {"rss_bytes": info.rss, "peak_rss_bytes": _peak_rss_bytes(),
            "anon_bytes": info.rss - getattr(info, "shared", 0)}


def _error_message(e: BaseException) -> tuple[str, str]:
    if isinstance(e, WorkbenchError):
        return type(e).__name__, str(e)
    return "GenerationError", f"The engine failed: {type(e).__name__}: {brief(e)}"


def _redirect_output(log_path: str) -> None:
    """Send the child's stdout/stderr (engine banners, native crash text) to its log file."""
    import sys

    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _stream(conn, backend, n_ctx: int, request: GenerationRequest, cancel_event) -> None:
    """Run one generation, sending text as it comes, then the stats.

    A chat request with `fit_context` first loses its oldest turns that do not fit (the
    stats say how many), here beside the tokenizer, so the caller makes one trip.

    Text made within STREAM_COALESCE_S of the last send goes out with the next send: on a
    small machine each wake-up of the app process steals a core from the engine's threads,
    and a screen cannot show more than a few dozen updates a second anyway. The first
    token always goes out at once, and a model slower than that interval streams token by token.
    """
    cancel_event.clear()
    started = time.perf_counter()
    dropped = 0
    if request.fit_context and request.messages:
        from .context_fit import fit_to_context

        request, dropped = fit_to_context(request, lambda r: len(backend.prompt_tokens(r)), n_ctx)
    first, last_send, pending = None, 0.0, []
    for event in backend.generate(request, cancel_event.is_set):
        now = time.perf_counter()
        if isinstance(event, DoneEvent):
            if pending:
                conn.send(("token", "".join(pending)))
            decode_s = now - first if first is not None else 0.0
            conn.send(("done", GenerationStats(
                finish_reason=event.finish_reason,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                cached_tokens=event.cached_tokens,
                dropped_messages=dropped,
                ttft_s=(first - started) if first is not None else now - started,
                total_s=now - started,
                tokens_per_s=(event.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
            ).to_dict()))
            return
        if first is None:
            first = now
        pending.append(event.text)
        if now - last_send >= STREAM_COALESCE_S:
            conn.send(("token", "".join(pending)))
            pending.clear()
            last_send = now


def _worker_main(conn, cancel_event, log_path: str | None) -> None:
    """Child process loop: serve requests until shutdown or the pipe closes."""
    from .backends.registry import load_backend_class
    from .engine_logging import quiet_engines

    if log_path:
        _redirect_output(log_path)
    quiet_engines()

    backend, n_ctx = None, 0
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        kind = msg[0]
        try:
            if kind == "shutdown":
                break
            if kind == "load":
                _, engine, detection, options = msg
                started = time.perf_counter()
                backend = load_backend_class(engine["class_path"], tuple(engine["requires"]), engine["install_hint"])()
                info = backend.load(Detection(**{**detection, "weight_files": tuple(detection["weight_files"])}),
                                    LoadOptions.from_dict(options))
                result = info.to_dict()
                n_ctx = info.n_ctx
                result["load_s"] = time.perf_counter() - started
                result["memory"] = _memory()
                conn.send(("ok", result))
            elif kind == "generate":
                _stream(conn, backend, n_ctx, GenerationRequest.from_dict(msg[1]), cancel_event)
            elif kind == "tokenize":
                conn.send(("ok", backend.tokenize(msg[1])))
            elif kind == "memory":
                conn.send(("ok", _memory()))
            elif kind == "score":
                from .backends.perplexity import perplexity

                _, text, window = msg
                cancel_event.clear()
                result = perplexity(backend.tokenize(text), window, backend.score_window,
                                    progress=lambda done, total: conn.send(("progress", done, total)),
                                    cancelled=cancel_event.is_set)
                conn.send(("ok", result))
            else:
                conn.send(("error", "WorkbenchError", f"Unknown worker request {kind!r}."))
        except BaseException as e:  # report, keep serving: the parent decides what to do
            if isinstance(e, KeyboardInterrupt):
                break
            name, message = _error_message(e)
            try:
                conn.send(("error", name, message))
            except (OSError, BrokenPipeError):
                break
    if backend is not None:
        backend.unload()
    conn.close()


STOP_POLL_S = 0.05  # how often a waiting reader checks its own stop request


class ArrivalOrderLock:
    """A lock handed over in the order it was asked for (threading.Lock promises no order), so
    chat users and API clients sharing one model are served first come, first served.

    Ownership passes straight from the holder to the oldest waiter. A waiter must not be
    interrupted while it waits (our callers are server threads, which never are).
    """

    def __init__(self):
        self._mutex = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()
        self._held = False

    def __enter__(self) -> "ArrivalOrderLock":
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder when it is this waiter's turn
        return self

    def __exit__(self, *exc) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()  # still held: now by the oldest waiter
            else:
                self._held = False


class ModelWorker:
    """Parent-side handle on one worker process. Calls take turns, in arrival order (ArrivalOrderLock)."""

    def __init__(self, log_path: str | None = None):
        self.log_path = log_path  # the child's stdout/stderr go here (None: inherit the parent's)
        self._conn, child_conn = _CTX.Pipe(duplex=True)
        self._cancel = _CTX.Event()
        self._process = _CTX.Process(target=_worker_main, args=(child_conn, self._cancel, log_path), daemon=True)
        self._process.start()
        child_conn.close()  # so a dead child shows up as EOF on our end
        self._lock = ArrivalOrderLock()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.is_alive()

    def _recv(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError, ConnectionResetError):
            self._process.join(timeout=5)
            code = self._process.exitcode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            where = f" (its log: {self.log_path})" if self.log_path else ""
            raise WorkerDied(f"The model worker stopped unexpectedly ({how}){where}; load the model again.") from None

    def _send(self, msg) -> None:
        try:
            self._conn.send(msg)
        except (OSError, BrokenPipeError):
            raise WorkerDied("The model worker is not running; load the model again.") from None

    def _call(self, msg):
        with self._lock:
            self._send(msg)
            reply = self._recv()
        if reply[0] == "error":
            raise_by_name(reply[1], reply[2])
        return reply[1]

    def load(self, spec: BackendSpec, detection: Detection, options: LoadOptions) -> dict:
        """Load in the child; returns the engine's ModelInfo as a dict plus `load_s` and `memory`."""
        d = detection.__dict__.copy()
        d["weight_files"] = list(d["weight_files"])
        engine = {"class_path": spec.class_path, "requires": list(spec.requires), "install_hint": spec.install_hint}
        return self._call(("load", engine, d, options.to_dict()))

    def tokenize(self, text: str) -> list[int]:
        return self._call(("tokenize", text))

    def memory(self) -> WorkerMemory:
        return WorkerMemory(**self._call(("memory",)))

    def perplexity(self, text: str, window: int, on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Perplexity of `text` (see backends/perplexity.py); `on_progress(done, total)` per window."""
        with self._lock:
            self._send(("score", text, window))
            while True:
                reply = self._recv()
                if reply[0] == "progress":
                    if on_progress:
                        on_progress(reply[1], reply[2])
                    continue
                if reply[0] == "error":
                    raise_by_name(reply[1], reply[2])
                return reply[1]

    def generate(self, request: GenerationRequest,
                 stop: threading.Event | None = None) -> Iterator[tuple[str, str | GenerationStats]]:
        """Yield ("token", text) as text comes (a token, or a few when they come fast), then ("done", GenerationStats).

        `stop`, when set, ends this generation only (not one that runs for another caller):
        one still waiting for the worker ends without starting.
        """
        with self._lock:
            if stop is not None and stop.is_set():
                yield "done", GenerationStats.cancelled_before_start()
                return
            self._send(("generate", request.to_dict()))
            finished = False
            try:
                while True:
                    while stop is not None and not self._conn.poll(STOP_POLL_S):
                        if stop.is_set():
                            self._cancel.set()  # repeated while waiting: the child clears it when it starts
                    reply = self._recv()
                    if stop is not None and stop.is_set():
                        self._cancel.set()
                    if reply[0] == "token":
                        yield reply
                    elif reply[0] == "done":
                        finished = True
                        yield "done", GenerationStats.from_dict(reply[1])
                        return
                    else:
                        finished = True
                        raise_by_name(reply[1], reply[2])
            finally:
                if not finished and self.alive():
                    # The consumer stopped early: cancel and drain so the pipe stays in step.
                    self._cancel.set()
                    while True:
                        reply = self._recv()
                        if reply[0] in ("done", "error"):
                            break

    def cancel(self) -> None:
        """Stop the running generation, whoever asked for it, at its next token."""
        self._cancel.set()

    def stop(self, timeout: float = 10.0) -> None:
        """End the process (and free its memory); kill it if it does not exit in time."""
        self._cancel.set()
        if self._process.is_alive():
            try:
                self._conn.send(("shutdown",))
            except (OSError, BrokenPipeError):
                pass
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)
        self._conn.close()

