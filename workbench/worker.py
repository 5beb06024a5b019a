"""The model worker process: one loaded model per process, many requests over one pipe.

`ModelWorker` (used in the app process) spawns `_worker_main` (the child). Why a process:
a native crash in a model parser cannot kill the app, unloading returns every byte (the
process ends), and the model's memory can be measured on its own.

Every message carries a request id, so several requests are in flight at once.
Parent -> child: ("load", rid, engine, detection, options) where `engine` names the backend
class by dotted path (a backend registered at run time loads too); ("generate", rid,
request); ("cancel", rid) (rid None: every request); ("tokenize", rid, text);
("memory", rid); ("score", rid, text, window); ("embed", rid, texts); ("shutdown",).
Child -> parent: ("ok", rid, value); ("token", rid, text) or, when the request asked for
logprobs, ("token", rid, text, [entry per token]); ("done", rid, GenerationStats as a
dict); ("progress", rid, done, total); ("error", rid, error_class_name, message).

The child's scheduler (scheduler.py) runs the generations; between its steps the child
answers the other messages, so a tokenize or a cancel never waits for a reply to end. A
perplexity run waits until no generation is running (it uses the whole context). On the
parent side one reader thread routes replies to their request's channel; a caller waits
on its own channel, blocking (`generate`) or without holding a thread (`agenerate`, for
the async API server).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
import os
import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

from .detect import Detection
from .errors import WorkbenchError, WorkerDied, brief, raise_by_name
from .hardware import peak_rss_bytes
from .model_values import GenerationStats, WorkerMemory
from .options import GenerationRequest, LoadOptions

if TYPE_CHECKING:
    from .backends.registry import BackendSpec

_CTX = mp.get_context("spawn")
STOP_POLL_S = 0.05  # how often a blocked reader checks its own stop request


def _memory() -> dict:
    """RSS now and at peak; `anon_bytes` leaves out file pages (mmapped weights the OS can drop)."""
    import psutil

    info = psutil.Process().memory_info()
    return {"rss_bytes": info.rss, "peak_rss_bytes": peak_rss_bytes(),
            "anon_bytes": info.rss - getattr(info, "shared", 0)}


def error_message(e: BaseException) -> tuple[str, str]:
    """(error class name, one sentence) for an exception raised in the worker."""
    if isinstance(e, WorkbenchError):
        return type(e).__name__, str(e)
    if isinstance(e, MemoryError):
        return "GenerationError", "The model worker ran out of memory; use a shorter prompt or a smaller context."
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


class _Child:
    """The child's state: the backend, its scheduler and perplexity runs waiting for an idle engine."""

    def __init__(self, conn):
        self.conn = conn
        self.backend = None
        self.scheduler = None
        self.scores: deque = deque()  # (rid, text, window) waiting until no generation runs
        self.cancelled_scores: set = set()

    def send(self, msg: tuple) -> None:
        self.conn.send(msg)

    def handle(self, msg: tuple) -> bool:
        """Serve one message; False on shutdown."""
        kind, rid = msg[0], (msg[1] if len(msg) > 1 else None)
        if kind == "shutdown":
            return False
        try:
            if kind == "load":
                self.load(rid, *msg[2:])
            elif kind == "generate":
                self._require()
                self.scheduler.submit(rid, GenerationRequest.from_dict(msg[2]))
            elif kind == "cancel":
                if self.scheduler is not None:
                    self.scheduler.cancel(rid)
                self.cancelled_scores.add(rid)
            elif kind == "tokenize":
                self.send(("ok", rid, self._require().tokenize(msg[2])))
            elif kind == "memory":
                self.send(("ok", rid, _memory()))
            elif kind == "embed":
                vectors, tokens = self._require().embed(msg[2])
                self.send(("ok", rid, {"data": vectors, "tokens": tokens}))
            elif kind == "score":
                self._require()
                self.scores.append((rid, msg[2], msg[3]))
            else:
                self.send(("error", rid, "WorkbenchError", f"Unknown worker request {kind!r}."))
        except Exception as e:  # noqa: BLE001 - reported to the asker; the worker keeps serving
            self.send(("error", rid, *error_message(e)))
        return True

    def _require(self):
        if self.backend is None:
            raise WorkbenchError("No model is loaded in this worker; load one first.")
        return self.backend

    def load(self, rid, engine: dict, detection: dict, options: dict) -> None:
        from .backends.registry import load_backend_class
        from .scheduler import Scheduler

        started = time.perf_counter()
        backend = load_backend_class(engine["class_path"], tuple(engine["requires"]), engine["install_hint"])()
        load_options = LoadOptions.from_dict(options)
        info = backend.load(Detection(**{**detection, "weight_files": tuple(detection["weight_files"])}), load_options)
        self.backend = backend
        self.scheduler = Scheduler(backend, info.n_ctx, max(load_options.parallel, 1), self.send,
                                   draft_n=load_options.draft_tokens)
        result = info.to_dict()
        result.update(load_s=time.perf_counter() - started, memory=_memory(), slots=self.scheduler.slots)
        self.send(("ok", rid, result))

    def score_next(self) -> None:
        """Run one waiting perplexity request (the engine is idle)."""
        from .backends.perplexity import perplexity

        rid, text, window = self.scores.popleft()
        self.cancelled_scores.discard(rid)
        try:
            result = perplexity(self.backend.tokenize(text), window, self.backend.score_window,
                                progress=lambda done, total: self.send(("progress", rid, done, total)),
                                cancelled=lambda: self._score_cancelled(rid))
            self.send(("ok", rid, result))
        except Exception as e:  # noqa: BLE001
            self.send(("error", rid, *error_message(e)))
        finally:
            if self.scheduler.engine is not None:
                self.scheduler.engine.forget()  # scoring used the cache the slots remembered

    def _score_cancelled(self, rid) -> bool:
        while self.conn.poll(0):  # a cancel (or anything else) may have arrived meanwhile
            msg = self.conn.recv()
            if msg[0] == "cancel":
                self.cancelled_scores.add(msg[1])
            else:
                self.handle(msg)
        return rid in self.cancelled_scores or None in self.cancelled_scores


def _worker_main(conn, log_path: str | None) -> None:
    """Child process loop: serve messages and run the scheduler until shutdown or the pipe closes."""
    from .engine_logging import quiet_engines

    if log_path:
        _redirect_output(log_path)
    quiet_engines()
    child = _Child(conn)
    running = True
    try:
        while running:
            busy = child.scheduler is not None and child.scheduler.busy()
            # Idle: block for the next message. Busy: take what has arrived, then step.
            timeout = 0 if busy or child.scores else None
            while running and conn.poll(timeout):
                running = child.handle(conn.recv())
                timeout = 0
            if not running:
                break
            if child.scheduler is not None and child.scheduler.busy():
                child.scheduler.run_once()
            elif child.scores:
                child.score_next()
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    if child.backend is not None:
        child.backend.unload()
    conn.close()


class _Channel:
    """The replies to one request, handed from the reader thread to a blocking or an async consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        self.loop = loop
        self.queue: queue.Queue | asyncio.Queue = asyncio.Queue() if loop else queue.Queue()

    def put(self, msg: tuple) -> None:
        if self.loop is None:
            self.queue.put(msg)
        else:
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)
            except RuntimeError:  # the event loop closed: nobody is listening any more
                pass


class ModelWorker:
    """Parent-side handle on one worker process; any number of threads (or tasks) may use it at once."""

    def __init__(self, log_path: str | None = None):
        self.log_path = log_path  # the child's stdout/stderr go here (None: inherit the parent's)
        self._conn, child_conn = _CTX.Pipe(duplex=True)
        self._process = _CTX.Process(target=_worker_main, args=(child_conn, log_path), daemon=True)
        self._process.start()
        child_conn.close()  # so a dead child shows up as EOF on our end
        self._ids = itertools.count(1)
        self._channels: dict[int, _Channel] = {}
        self._lock = threading.Lock()  # guards _channels and sends (in arrival order)
        self._dead: str | None = None
        self._stop_lock, self._stopped = threading.Lock(), False
        self._reader = threading.Thread(target=self._read, name="worker-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        return self._dead is None and self._process.is_alive()

    # --- the pipe ------------------------------------------------------------------
    def _read(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError, ConnectionResetError):
                break
            with self._lock:
                channel = self._channels.get(msg[1])
            if channel is not None:  # replies to a request nobody waits for any more are dropped
                channel.put(msg)
        self._process.join(timeout=5)
        code = self._process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        where = f" (its log: {self.log_path})" if self.log_path else ""
        with self._lock:
            self._dead = f"The model worker stopped unexpectedly ({how}){where}; load the model again."
            channels = list(self._channels.values())
        for channel in channels:
            channel.put(("died", None, self._dead))

    def _open(self, msg_kind: str, *args, loop: asyncio.AbstractEventLoop | None = None) -> tuple[int, _Channel]:
        rid, channel = next(self._ids), _Channel(loop)
        with self._lock:
            if self._dead:
                raise WorkerDied(self._dead)
            self._channels[rid] = channel
            try:
                self._conn.send((msg_kind, rid, *args))
            except (OSError, BrokenPipeError):
                self._channels.pop(rid, None)
                raise WorkerDied("The model worker is not running; load the model again.") from None
        return rid, channel

    def _close(self, rid: int) -> None:
        with self._lock:
            self._channels.pop(rid, None)

    def _cancel(self, rid: int | None) -> None:
        with self._lock:
            if self._dead is None:
                try:
                    self._conn.send(("cancel", rid))
                except (OSError, BrokenPipeError):
                    pass

    @staticmethod
    def _raise(reply: tuple):
        if reply[0] == "died":
            raise WorkerDied(reply[2])
        raise_by_name(reply[2], reply[3])

    def _call(self, kind: str, *args, on_progress: Callable[[int, int], None] | None = None,
              timeout: float | None = None):
        rid, channel = self._open(kind, *args)
        try:
            while True:
                try:
                    reply = channel.queue.get(timeout=timeout)
                except queue.Empty:
                    raise WorkbenchError(f"The model worker did not answer within {timeout:.0f} s.") from None
                if reply[0] == "progress":
                    if on_progress:
                        on_progress(reply[2], reply[3])
                    continue
                if reply[0] == "ok":
                    return reply[2]
                self._raise(reply)
        finally:
            self._close(rid)

    # --- requests ------------------------------------------------------------------
    def load(self, spec: BackendSpec, detection: Detection, options: LoadOptions) -> dict:
        """Load in the child; returns the engine's ModelInfo as a dict plus `load_s`, `memory` and `slots`."""
        d = detection.__dict__.copy()
        d["weight_files"] = list(d["weight_files"])
        engine = {"class_path": spec.class_path, "requires": list(spec.requires), "install_hint": spec.install_hint}
        return self._call("load", engine, d, options.to_dict())

    def tokenize(self, text: str) -> list[int]:
        return self._call("tokenize", text)

    def memory(self, timeout: float | None = None) -> WorkerMemory:
        """Current and peak RSS, measured in the child (between generation steps)."""
        return WorkerMemory(**self._call("memory", timeout=timeout))

    def embed(self, texts: list[str]) -> dict:
        """{"data": one vector per text, "tokens": tokens read} from the loaded model."""
        return self._call("embed", texts)

    def perplexity(self, text: str, window: int, on_progress: Callable[[int, int], None] | None = None) -> dict:
        """Perplexity of `text` (see backends/perplexity.py); `on_progress(done, total)` per window."""
        return self._call("score", text, window, on_progress=on_progress)

    def generate(self, request: GenerationRequest,
                 stop: threading.Event | None = None) -> Iterator[tuple[str, str | GenerationStats]]:
        """Yield ("token", text) as text comes (a token, or a few when they come fast), then ("done", GenerationStats).

        A request with `params.logprobs` set also gets ("logprobs", [entry per token]) after each text.

        `stop`, when set, ends this generation only; so does closing the generator early.
        """
        rid, channel = self._open("generate", request.to_dict())
        finished, cancel_sent = False, False
        try:
            while True:
                try:
                    reply = channel.queue.get(timeout=STOP_POLL_S if stop is not None else None)
                except queue.Empty:
                    reply = None
                if stop is not None and stop.is_set() and not cancel_sent:
                    self._cancel(rid)
                    cancel_sent = True
                if reply is None:
                    continue
                finished = reply[0] != "token"
                yield from self._events(reply)
                if finished:
                    return
        finally:
            if not finished:
                self._cancel(rid)  # the consumer stopped early: end this generation in the worker
            self._close(rid)

    def _events(self, reply: tuple) -> Iterator[tuple[str, object]]:
        """The caller's events for one reply of a generation: text (and its logprobs), the stats, or the error."""
        if reply[0] == "token":
            yield "token", reply[2]
            if len(reply) > 3:
                yield "logprobs", reply[3]
        elif reply[0] == "done":
            yield "done", GenerationStats.from_dict(reply[2])
        else:
            self._raise(reply)

    async def agenerate(self, request: GenerationRequest) -> AsyncIterator[tuple[str, str | GenerationStats]]:
        """`generate` for asyncio: waiting holds no thread. Closing it (a hang-up) ends this generation."""
        rid, channel = self._open("generate", request.to_dict(), loop=asyncio.get_running_loop())
        finished = False
        try:
            while True:
                reply = await channel.queue.get()
                finished = reply[0] != "token"
                for event in self._events(reply):
                    yield event
                if finished:
                    return
        finally:
            if not finished:
                self._cancel(rid)
            self._close(rid)

    def cancel(self) -> None:
        """Stop every running or waiting generation at its next token."""
        self._cancel(None)

    def stop(self, timeout: float = 10.0) -> None:
        """End the process (and free its memory); kill it if it does not exit in time. Safe to call from
        two threads at once (Unload while the load itself gives up): the pipe is closed once, after the
        reader thread has seen its end, so its file descriptor cannot be closed again after the number
        was reused by the next worker's pipe."""
        with self._stop_lock:
            if self._stopped:
                return
            if self._process.is_alive():
                with self._lock:
                    try:
                        self._conn.send(("shutdown",))
                    except (OSError, BrokenPipeError):
                        pass
                self._process.join(timeout)
                if self._process.is_alive():
                    self._process.kill()
                    self._process.join(5)
            if threading.current_thread() is not self._reader:
                self._reader.join(5)  # it reads EOF now that the child is gone
            self._conn.close()
            self._stopped = True
