"""Fetches one file into a partial file of ours, resumably, and verifies it before anyone sees it.

huggingface_hub (>= 1.18) deletes its partial file on failure and names it per process, so a
download killed or cancelled halfway starts again from zero. Here the partial bytes stay in our
own file, and every (re)connection asks for `Range: bytes=<what we have>-`: a cancel, a dropped
connection, a stall, a killed app or a reboot costs only the bytes in flight. Each try that gets
no new byte waits longer (exponential backoff); a stall is a read timeout. The file's sha256 (the
hub's LFS oid; for a small git file its blob sha1) is computed as bytes arrive, over the kept ones
first, and a mismatch deletes the file. Files kept in Xet storage go through hf_xet when it is
installed and nothing is on disk yet; on any hf_xet failure the plain HTTP path takes over.
It owns one file's bytes; the folder, the queue and the progress display are not its business.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable

from .errors import ChecksumMismatch, DownloadCancelled, DownloadError, DownloadStalled
from .hub import Hub
from .types import RetryPolicy

log = logging.getLogger(__name__)
MiB = 2**20
SYNC_EVERY = 256 * MiB


@dataclass(frozen=True)
class FileTask:
    repo_id: str
    name: str                 # path inside the repo
    url: str
    size: int
    sha256: str | None        # expected LFS oid
    blob_id: str | None       # expected git blob sha1 (small files)
    xet: object | None = None  # XetFileData from the HEAD, when the file is in Xet storage


def _hasher(task: FileTask):
    if task.sha256:
        return hashlib.sha256()
    h = hashlib.sha1()
    h.update(f"blob {task.size}\0".encode())  # git's blob id is the sha1 of this prefix and the content
    return h


def _expected(task: FileTask) -> str | None:
    return (task.sha256 or task.blob_id or "").lower() or None


def _verify(task: FileTask, digest: str, part: str) -> None:
    expected = _expected(task)
    if expected and digest != expected:
        os.unlink(part)
        kind = "sha256" if task.sha256 else "git blob id"
        raise ChecksumMismatch(f"{task.name} arrived corrupted (its {kind} is {digest[:12]}..., the hub says "
                               f"{expected[:12]}...), so it was deleted; download it again.")


class FileDownloader:
    """Downloads files one at a time, reporting bytes to `on_bytes` and stopping when `cancel` is set."""

    def __init__(self, hub: Hub, policy: RetryPolicy, cancel: threading.Event,
                 on_bytes: Callable[[int], None], on_retry: Callable[[str], None] = lambda why: None,
                 use_xet: bool | None = None):
        self.hub, self.policy, self.cancel = hub, policy, cancel
        self.on_bytes, self.on_retry = on_bytes, on_retry
        self.use_xet = _xet_available() if use_xet is None else use_xet

    def fetch(self, task: FileTask, part: str) -> None:
        """Make `part` hold the whole verified file (resuming from what it holds); raise on failure."""
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have > task.size:
            os.truncate(part, 0)
            have = 0
        if task.xet is not None and self.use_xet and have == 0 and self._fetch_xet(task, part):
            return
        hasher = _hasher(task)
        if have:
            with open(part, "rb") as f:  # hash the kept bytes; the rest is hashed as it arrives
                for block in iter(lambda: f.read(8 * MiB), b""):
                    hasher.update(block)
        _verify(task, self._fetch_http(task, part, have, hasher), part)

    def _fetch_http(self, task: FileTask, part: str, have: int, hasher) -> str:
        """Fetch the rest of the file into `part`; return the hex digest of the whole file."""
        state = _State(have, hasher)
        failures, delay = 0, self.policy.backoff_s
        with open(part, "r+b" if have else "wb") as out:
            out.seek(have)
            while state.have < task.size:
                if self.cancel.is_set():
                    raise DownloadCancelled(f"Cancelled {task.name} at {state.have / MiB:.0f} MiB; those bytes are "
                                            "kept for a resume.")
                before = state.have
                try:
                    self._one_try(task, out, state)
                except DownloadError:
                    raise
                except Exception as e:  # noqa: BLE001 - drops, resets, timeouts: reconnect from `have`
                    why = f"{type(e).__name__}: {str(e)[:80]}"
                else:
                    why = "the body ended early"
                if state.have >= task.size or self.cancel.is_set():
                    continue
                progressed = state.have > before
                failures = 0 if progressed else failures + 1
                delay = self.policy.backoff_s if progressed else min(delay * 2, self.policy.max_backoff_s)
                if failures >= self.policy.max_tries:
                    raise DownloadStalled(
                        f"{task.name} stopped at {state.have / MiB:.0f} of {task.size / MiB:.0f} MiB: {failures} "
                        f"tries in a row got no data ({why}); the bytes so far are kept, so run the download "
                        "again to resume.")
                self.on_retry(why)
                log.info("%s: retrying from byte %d in %.1f s (%s)", task.name, state.have, delay, why)
                self.cancel.wait(delay if failures else 0)
            out.flush()
            os.fsync(out.fileno())
        return state.hasher.hexdigest()

    def _one_try(self, task: FileTask, out, state: "_State") -> None:
        """One GET from `state.have`, appending what arrives. Transport errors propagate to the retry loop."""
        with self.hub.stream(task.repo_id, task.url, state.have,
                             read_timeout_s=self.policy.stall_timeout_s) as response:
            if response.status_code == 416:  # nothing past `have`: the kept bytes are the whole file or junk
                if state.have != task.size:
                    self.on_bytes(-state.have)
                    state.restart(out, _hasher(task))
                return
            if response.status_code == 200 and state.have:  # the server ignored Range: start over
                self.on_bytes(-state.have)
                state.restart(out, _hasher(task))
            elif response.status_code == 206:
                start = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if start.strip() != str(state.have):
                    raise DownloadStalled(f"{task.name}: the server sent bytes from {start}, not {state.have}; "
                                          "try again later.")
            for chunk in response.iter_bytes():  # as they arrive: a sized chunk would lose its buffer on a drop
                take = chunk[: task.size - state.have]  # never more than the file: a longer body is not the file
                out.write(take)
                state.hasher.update(take)
                state.have += len(take)
                self.on_bytes(len(take))
                if state.have - state.synced >= SYNC_EVERY:  # kept bytes must survive a power cut, not just a kill
                    out.flush()
                    os.fsync(out.fileno())
                    state.synced = state.have
                if state.have >= task.size or self.cancel.is_set():
                    break

    def _fetch_xet(self, task: FileTask, part: str) -> bool:
        """hf_xet into `part`; True when the file arrived and verified, False to fall back to HTTP."""
        from pathlib import Path

        from huggingface_hub.file_download import xet_get

        counted = [0]

        def on_bytes(n: int) -> None:
            counted[0] += n
            self.on_bytes(n)

        try:
            xet_get(incomplete_path=Path(part), xet_file_data=task.xet, headers=self.hub.headers(),
                    expected_size=task.size, displayed_filename=os.path.basename(task.name),
                    tqdm_class=_tqdm_reporter(on_bytes, self.cancel))
        except Exception as e:  # noqa: BLE001 - a cancel, or any hf_xet problem (then the HTTP path does it)
            # hf_xet writes out of order, so its bytes cannot be resumed by Range (its own chunk cache helps).
            _remove(part)
            self.on_bytes(-counted[0])
            if isinstance(e, DownloadCancelled) or self.cancel.is_set():
                raise DownloadCancelled(f"Cancelled {task.name}; run the download again to resume.") from None
            log.warning("hf_xet failed for %s (%s); downloading over HTTP instead", task.name, e)
            return False
        hasher = _hasher(task)
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(8 * MiB), b""):
                hasher.update(block)
        _verify(task, hasher.hexdigest(), part)
        return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _xet_available() -> bool:
    if os.environ.get("HF_HUB_DISABLE_XET", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        from huggingface_hub.utils import is_xet_available
    except ImportError:
        return False
    return bool(is_xet_available())


def _tqdm_reporter(on_bytes: Callable[[int], None], cancel: threading.Event):
    """A tqdm class for hf_xet's progress that forwards byte counts and raises when cancelled."""
    from tqdm.auto import tqdm

    class Reporter(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):  # bytes written to the file
            if cancel.is_set():
                raise DownloadCancelled("Cancelled; run the download again to resume.")
            if n:
                on_bytes(int(n))
            return super().update(n)

        # Having these makes huggingface_hub use one bar for both network and disk, so bytes count once.
        def update_transfer(self, n=1):
            if cancel.is_set():
                raise DownloadCancelled("Cancelled; run the download again to resume.")

        def set_transfer_postfix_str(self, *args, **kwargs):
            pass

    return Reporter


@dataclass
class _State:
    have: int
    hasher: object
    synced: int = 0

    def restart(self, out, hasher) -> None:
        out.seek(0)
        out.truncate()
        self.have, self.hasher = 0, hasher
