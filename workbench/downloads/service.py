"""DownloadService: find a repo's forms with their memory verdicts, queue downloads, report progress, cancel.

One download runs at a time on a background thread; more wait in a queue in the order asked, and
the callers (UI, CLI) only ever read snapshots (`Progress`), so the UI stays responsive. Unfinished
downloads found in models/ (after a cancel, a crash or a reboot) can be resumed or discarded.
Plain Python: no gradio here. The hub is made per call from the environment (HF_ENDPOINT, HF_TOKEN).
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from dataclasses import replace
from typing import Callable

from ..errors import WorkbenchError
from ..hardware import detect_hardware
from ..options import LoadOptions
from ..paths import Paths
from . import staging
from .downloader import FileDownloader
from .errors import DownloadCancelled, TargetExists
from .forms import pick, split_spec
from .hub import Hub
from .planning import list_repo, profile_hardware
from .types import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Progress, RepoListing, RetryPolicy

SPEED_WINDOW_S = 5.0


class _Meter:
    """Bytes done and the speed over the last few seconds."""

    def __init__(self, done: int):
        self.done = done
        self.samples: collections.deque = collections.deque([(time.monotonic(), done)])

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.samples[-1][0] >= 0.2:
            self.samples.append((now, self.done))
            while len(self.samples) > 2 and now - self.samples[0][0] > SPEED_WINDOW_S:
                self.samples.popleft()

    def speed(self) -> float:
        (t0, b0), (t1, b1) = self.samples[0], (time.monotonic(), self.done)
        return max(b1 - b0, 0) / (t1 - t0) if t1 - t0 > 0.05 else 0.0


class DownloadService:
    def __init__(self, paths: Paths, profiles=None, policy: RetryPolicy | None = None,
                 hub_factory: Callable[[], Hub] = Hub):
        self.paths = paths
        self.profiles = profiles          # a ProfileStore, for planning against a hardware profile
        self.policy = policy or RetryPolicy()
        self.hub_factory = hub_factory
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque = collections.deque()
        self._progress: dict[str, Progress] = {}
        self._specs: dict[str, staging.DownloadSpec] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._meters: dict[str, _Meter] = {}
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None

    # --- finding ----------------------------------------------------------------------
    def find(self, spec: str, profile: str | None = None, n_ctx: int | None = None,
             options: LoadOptions | None = None) -> RepoListing:
        """The repo's forms, each with a fit verdict for this machine (or `profile`) at context `n_ctx`."""
        repo_id, choice = split_spec(spec)
        hw = detect_hardware(self.paths.offload)
        options = options or LoadOptions()
        target = "this machine"
        if profile:
            if self.profiles is None:
                raise WorkbenchError("No hardware profiles are available here; leave the profile empty.")
            p = self.profiles.get(profile)
            options = p.options(options)
            hw = profile_hardware(p.assumes_ram_gib, p.assumes_vram_gib, hw)
            target = f"profile {profile}"
        if n_ctx is not None:
            options = replace(options, n_ctx=int(n_ctx))
        return list_repo(self.hub_factory(), repo_id, options.validate(), hw, target, only=choice)

    # --- queueing ---------------------------------------------------------------------
    def enqueue(self, listing: RepoListing, label: str, name: str | None = None) -> str:
        """Queue the form `label` of `listing` as models/<name>; its job id. Bad names are refused now."""
        form = pick([p.form for p in listing.plans], label, listing.repo_id)
        return self.enqueue_spec(staging.DownloadSpec.for_form(listing.repo_id, listing.commit, form, name or None))

    def resume(self, name: str) -> str:
        """Queue an unfinished download found in models/ again; it goes on from its bytes on disk."""
        spec = next((s for s in staging.unfinished(self.paths.models) if s.name == name), None)
        if spec is None:
            raise WorkbenchError(f"There is no unfinished download named {name!r}; start it from the repo.")
        return self.enqueue_spec(spec)

    def enqueue_spec(self, spec: staging.DownloadSpec) -> str:
        staging.check_name(self.paths.models, spec.name)
        with self._lock:
            busy = [j for j, s in self._specs.items() if s.name == spec.name
                    and self._progress[j].state in (QUEUED, RUNNING)]
            if busy:
                raise TargetExists(f"{spec.name} is already being downloaded; wait for it or cancel it.")
            job_id = f"d{next(self._ids)}"
            self._specs[job_id] = spec
            self._cancels[job_id] = threading.Event()
            done = staging.bytes_on_disk(self.paths.models, spec)
            self._progress[job_id] = Progress(job_id, spec.repo_id, spec.label, spec.name, QUEUED, done,
                                              spec.total_bytes, resumed_bytes=done, message="waiting")
            self._queue.append(job_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run_queue, name="downloads", daemon=True)
                self._thread.start()
            self._wake.notify_all()
        return job_id

    def cancel(self, job_id: str) -> None:
        """Stop a running download (its bytes are kept) or drop a queued one."""
        with self._lock:
            if job_id not in self._progress:
                raise WorkbenchError(f"There is no download {job_id!r}.")
            self._cancels[job_id].set()
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._set(job_id, state=CANCELLED, message="cancelled before it started")

    def discard(self, name: str) -> None:
        """Delete an unfinished download's kept bytes."""
        with self._lock:
            if any(s.name == name and self._progress[j].state in (QUEUED, RUNNING) for j, s in self._specs.items()):
                raise WorkbenchError(f"{name} is downloading; cancel it first.")
            staging.discard(self.paths.models, name)

    # --- reading ----------------------------------------------------------------------
    def progress(self, job_id: str) -> Progress:
        with self._lock:
            return self._snapshot(job_id)

    def jobs(self) -> list[Progress]:
        """Every job of this session, newest first."""
        with self._lock:
            return [self._snapshot(j) for j in reversed(list(self._progress))]

    def unfinished(self) -> list[dict]:
        """Staging folders in models/ that no job of this session is working on: resumable."""
        with self._lock:
            active = {s.name for j, s in self._specs.items() if self._progress[j].state in (QUEUED, RUNNING)}
        rows = []
        for spec in staging.unfinished(self.paths.models):
            if spec.name not in active:
                rows.append({"name": spec.name, "repo_id": spec.repo_id, "label": spec.label,
                             "done_bytes": staging.bytes_on_disk(self.paths.models, spec),
                             "total_bytes": spec.total_bytes})
        return rows

    def wait(self, job_id: str, timeout: float | None = None) -> Progress:
        """Block until the job ends (or `timeout`); its last snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._progress[job_id].state in (QUEUED, RUNNING):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._wake.wait(0.5 if left is None else min(left, 0.5))
            return self._snapshot(job_id)

    # --- the worker thread --------------------------------------------------------------
    def _snapshot(self, job_id: str) -> Progress:
        p = self._progress[job_id]
        meter = self._meters.get(job_id)
        if meter is None or p.state != RUNNING:
            return p
        speed = meter.speed()
        left = max(p.total_bytes - meter.done, 0)
        return replace(p, done_bytes=meter.done, speed_bps=speed, eta_s=left / speed if speed > 0 else None)

    def _set(self, job_id: str, **changes) -> None:
        self._progress[job_id] = replace(self._progress[job_id], **changes)
        self._wake.notify_all()

    def _run_queue(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    return
                job_id = self._queue.popleft()
                spec, cancel = self._specs[job_id], self._cancels[job_id]
                meter = self._meters[job_id] = _Meter(staging.bytes_on_disk(self.paths.models, spec))
                self._set(job_id, state=RUNNING, message="starting", resumed_bytes=meter.done)
            self._run_one(job_id, spec, cancel, meter)

    def _run_one(self, job_id: str, spec: staging.DownloadSpec, cancel: threading.Event, meter: _Meter) -> None:
        def on_retry(why: str) -> None:
            with self._lock:
                p = self._progress[job_id]
                self._set(job_id, retries=p.retries + 1, message=f"reconnecting ({why})")

        from_cache = []

        def on_file(name: str, cached: bool) -> None:
            with self._lock:
                if cached:
                    from_cache.append(next(f.size or 0 for f in spec.files if f.name == name))
                self._set(job_id, current_file=name, message=f"{'checking the cached' if cached else 'downloading'} "
                                                             f"{name}")

        started = time.monotonic()
        try:
            downloader = FileDownloader(self.hub_factory(), self.policy, cancel, meter.add, on_retry)
            path = staging.run(downloader.hub, self.paths.models, spec, downloader, on_file)
            took = time.monotonic() - started
            fetched = (meter.done - self._progress[job_id].resumed_bytes - sum(from_cache)) / 2**20
            cache = f"; {sum(from_cache) / 2**20:.1f} MiB from huggingface_hub's cache" if from_cache else ""
            kept = self._progress[job_id].resumed_bytes
            cache += f"; resumed: {kept / 2**20:.1f} MiB were already on disk" if kept else ""
            outcome = dict(state=DONE, message=f"{os.path.basename(path)} is ready in models/ ({fetched:.1f} MiB "
                                                f"fetched in {took:.1f} s, {fetched / max(took, 1e-3):.0f} MiB/s{cache}).")
        except DownloadCancelled:
            outcome = dict(state=CANCELLED, message=f"Cancelled; {meter.done / 2**20:.0f} MiB are kept in models/"
                                                    f"{staging.STAGING_PREFIX}{spec.name} to resume from.")
        except (WorkbenchError, OSError) as e:
            outcome = dict(state=FAILED, message=str(e) if isinstance(e, WorkbenchError)
                           else f"Writing to models/ failed: {e.strerror or e}; check the disk and try again.")
        except Exception as e:  # noqa: BLE001 - a bug must not kill the queue; it is reported on the job
            outcome = dict(state=FAILED, message=f"The download failed unexpectedly ({type(e).__name__}: {e}).")
        with self._lock:
            self._set(job_id, done_bytes=meter.done, speed_bps=0.0, eta_s=None, **outcome)
