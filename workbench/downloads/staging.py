"""One model's download on disk: a hidden staging folder in models/, its manifest, the disk check,
and the final rename that makes the model appear.

Everything lands in `models/.download-<name>/` (a dot name, so ModelService.list_models skips it):
`.workbench-download.json` says what is being fetched (repo, commit, files), each file grows as `<file>.part` and
becomes `<file>` only once verified. When every file is there, one `os.replace` puts the GGUF file
or the folder at `models/<name>`; until then nothing half-written is visible. The staging folder
survives a cancel, a killed app or a reboot, and the next run of the same download resumes in it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from ..atomic import write_json_atomic
from ..errors import PathOutsideModels, WorkbenchError
from ..paths import resolve_inside
from .downloader import FileDownloader, FileTask
from .errors import ChecksumMismatch, DownloadError, NotEnoughDisk, TargetExists
from .hub import Hub
from .types import GGUF_FORM, Form, RepoFile

STAGING_PREFIX = ".download-"
MANIFEST = ".workbench-download.json"  # dot names: no repo file can collide with them (forms skip them)
# Held while a process works in the staging folder: the app and a command line must not both write there.
LOCK = ".workbench-download.lock"
GiB = 2**30


@dataclass(frozen=True)
class DownloadSpec:
    """What one download fetches and where it goes; saved as the staging folder's manifest."""

    repo_id: str
    commit: str
    label: str
    kind: str
    name: str                    # the entry in models/
    files: tuple[RepoFile, ...]

    @property
    def single_file(self) -> bool:
        return self.kind == GGUF_FORM and len(self.files) == 1

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @classmethod
    def for_form(cls, repo_id: str, commit: str, form: Form, name: str | None = None) -> "DownloadSpec":
        return cls(repo_id, commit, form.label, form.kind, name or form.default_name, form.files)

    def to_dict(self) -> dict:
        return {"repo_id": self.repo_id, "commit": self.commit, "label": self.label, "kind": self.kind,
                "name": self.name, "files": [f.__dict__ for f in self.files]}

    @classmethod
    def from_dict(cls, d: dict) -> "DownloadSpec":
        files = tuple(RepoFile(**f) for f in d["files"])
        return cls(d["repo_id"], d["commit"], d["label"], d["kind"], d["name"], files)


def check_name(models: str, name: str) -> str:
    """The path `name` takes in models/; refused if it leaves models/, is hidden or nested, or exists."""
    if not isinstance(name, str) or name.startswith(".") or "/" in name.strip("/"):
        raise PathOutsideModels(f"{name!r} cannot be a name in models/: use a plain name without '/' or a "
                                "leading dot.")
    path = resolve_inside(models, name, "model")
    if os.path.lexists(path):
        raise TargetExists(f"models/{name} already exists; delete it or pick another name.")
    return path


def staging_dir(models: str, name: str) -> str:
    return os.path.join(models, STAGING_PREFIX + name)


def unfinished(models: str) -> list[DownloadSpec]:
    """Downloads whose staging folder is still in models/ (cancelled, failed, killed)."""
    found = []
    if not os.path.isdir(models):
        return found
    for entry in sorted(os.listdir(models)):
        manifest = os.path.join(models, entry, MANIFEST)
        if entry.startswith(STAGING_PREFIX) and os.path.isfile(manifest):
            try:
                with open(manifest, encoding="utf-8") as f:
                    found.append(DownloadSpec.from_dict(json.load(f)))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a manifest cut short by a crash: the folder is ignored, never half-read
    return found


def bytes_on_disk(models: str, spec: DownloadSpec) -> int:
    """Bytes of `spec` already in its staging folder (finished files and partial ones)."""
    staging, total = staging_dir(models, spec.name), 0
    for f in spec.files:
        final = os.path.join(staging, f.name)
        for path in (final, final + ".part"):
            if os.path.isfile(path):
                total += os.path.getsize(path)
                break
    return total


def check_disk(models: str, spec: DownloadSpec) -> None:
    """Refuse, with how much is missing, when the rest of the download does not fit the free space."""
    need = max(spec.total_bytes - bytes_on_disk(models, spec), 0)
    free = shutil.disk_usage(models).free
    if need > free:
        raise NotEnoughDisk(f"{spec.name} needs {need / GiB:.2f} GiB more but {models} has {free / GiB:.2f} GiB "
                            f"free: free {(need - free) / GiB:.2f} GiB and start it again.")


def prepare(models: str, spec: DownloadSpec) -> str:
    """Create (or find, for a resume) the staging folder with its manifest; return its path."""
    os.makedirs(models, exist_ok=True)
    check_name(models, spec.name)
    staging = staging_dir(models, spec.name)
    existing = next((s for s in unfinished(models) if s.name == spec.name), None)
    if existing and (existing.repo_id, existing.commit, existing.label) != (spec.repo_id, spec.commit, spec.label):
        raise TargetExists(f"An unfinished download of {existing.repo_id}:{existing.label} already uses the name "
                           f"{spec.name}; resume it, delete models/{STAGING_PREFIX}{spec.name}, or pick another name.")
    for f in spec.files:  # a hostile listing must not write outside the staging folder
        try:
            resolve_inside(staging, f.name, "file")
        except PathOutsideModels as e:
            raise PathOutsideModels(f"The repo lists a file {f.name!r} that would land outside models/; "
                                    "refused.") from e
    os.makedirs(staging, exist_ok=True)
    check_disk(models, spec)
    if existing is None:
        write_json_atomic(os.path.join(staging, MANIFEST), spec.to_dict())
    return staging


def _task(hub: Hub, spec: DownloadSpec, f: RepoFile) -> FileTask:
    """The file's task with the checksum the hub gives for it (listing first, then the HEAD's etag)."""
    url = hub.url(spec.repo_id, spec.commit, f.name)
    meta = hub.file_meta(spec.repo_id, url, f.name)
    size = f.size if f.size is not None else meta.size
    if size is None:
        raise DownloadError(f"The hub does not say how large {f.name} is, so it cannot be verified; try again later.")
    etag = (meta.etag or "").lower()
    sha = f.sha256 or (etag if len(etag) == 64 else None)
    blob = f.blob_id or (etag if len(etag) == 40 and not sha else None)
    return FileTask(spec.repo_id, f.name, url, size, sha, blob, meta.xet)


def run(hub: Hub, models: str, spec: DownloadSpec, downloader: FileDownloader,
        on_file: Callable[[str, bool], None] = lambda name, cached: None) -> str:
    """Download every file of `spec` into its staging folder, then move the model into place; its path."""
    staging = prepare(models, spec)
    with _locked(staging, spec):
        for f in spec.files:
            _fetch_one(hub, spec, staging, f, downloader, on_file)
        return finish(models, spec)


@contextmanager
def _locked(staging: str, spec: DownloadSpec):
    """Hold the staging folder's lock (the kernel drops it when the process dies, kill -9 included)."""
    fd = os.open(os.path.join(staging, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TargetExists(f"{spec.name} is being downloaded by another workbench process (the app or a "
                               "command line); wait for it or cancel it there.") from None
        yield
    finally:
        os.close(fd)


def _fetch_one(hub: Hub, spec: DownloadSpec, staging: str, f: RepoFile, downloader: FileDownloader, on_file) -> None:
    """Bring one file into the staging folder, verified (from huggingface_hub's cache when it has it)."""
    final = resolve_inside(staging, f.name, "file")
    if os.path.isfile(final):
        return  # verified in an earlier run
    os.makedirs(os.path.dirname(final), exist_ok=True)
    task = _task(hub, spec, f)
    cached = _link_from_hf_cache(spec, f, final + ".part")
    on_file(f.name, cached)
    if cached:
        downloader.on_bytes(f.size or 0)
        try:
            downloader.fetch(task, final + ".part")  # hashes the cached copy
        except ChecksumMismatch:  # a damaged cache copy: it was deleted, so fetch the file itself
            downloader.on_bytes(-(f.size or 0))
            downloader.fetch(task, final + ".part")
    else:
        downloader.fetch(task, final + ".part")
    os.replace(final + ".part", final)


def hf_cache_dir() -> str:
    """huggingface_hub's cache folder, from the environment as it is now (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                     os.path.expanduser("~/.cache"), "huggingface")
    return os.path.join(home, "hub")


def _link_from_hf_cache(spec: DownloadSpec, f: RepoFile, part: str) -> bool:
    """Put the copy huggingface_hub already has of this file (same commit, same size) at `part`; True if so."""
    from huggingface_hub import try_to_load_from_cache

    if os.path.exists(part):
        return False
    try:
        cached = try_to_load_from_cache(spec.repo_id, f.name, cache_dir=hf_cache_dir(), revision=spec.commit)
    except Exception:  # noqa: BLE001 - an unreadable cache just means downloading
        return False
    if not isinstance(cached, str) or not os.path.isfile(cached) or os.path.getsize(cached) != f.size:
        return False
    try:
        os.link(os.path.realpath(cached), part)  # same disk: no copy, no extra space
    except OSError:
        shutil.copyfile(cached, part)
    return True


def finish(models: str, spec: DownloadSpec) -> str:
    """The one rename that makes the model visible in models/."""
    staging = staging_dir(models, spec.name)
    target = check_name(models, spec.name)
    if spec.single_file:
        os.replace(os.path.join(staging, spec.files[0].name), target)
        shutil.rmtree(staging)
    else:
        for own in (MANIFEST, LOCK):
            os.unlink(os.path.join(staging, own))
        os.replace(staging, target)
    _fsync_dir(models)
    return target


def discard(models: str, name: str) -> None:
    """Delete an unfinished download's staging folder (its kept bytes go too)."""
    staging = staging_dir(models, name)
    if not os.path.isdir(staging):
        raise WorkbenchError(f"There is no unfinished download named {name}.")
    shutil.rmtree(staging)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
