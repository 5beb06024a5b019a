"""Talks to the Hugging Face Hub (or a mirror) through huggingface_hub: a repo's files, a file's
metadata, byte ranges and streams.

The endpoint is read from HF_ENDPOINT when a `Hub` is made (not when huggingface_hub was imported),
the token from HF_TOKEN or the token file (huggingface_hub's own rules). Every hub failure becomes
one `DownloadError` sentence here, so the callers never see an HTTP exception.
It owns no files on disk; writing them is `downloader.py`'s.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from ..errors import brief
from .errors import DownloadError, HubUnreachable, NoMatchingFile, RepoGated, RepoNotFound
from .types import RepoFile, RepoSnapshot

DEFAULT_ENDPOINT = "https://huggingface.co"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


class HubBusy(Exception):
    """HTTP 429 or 5xx while fetching bytes: worth another try after a wait (not a WorkbenchError)."""

    def __init__(self, status: int, endpoint: str):
        super().__init__(f"{endpoint} answered HTTP {status}")
        self.status = status


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it looks like `org/name`; a one-sentence error otherwise."""
    repo_id = (repo_id or "").strip().strip("/")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise RepoNotFound(f"{repo_id!r} is not a repository id; write it as org/name, e.g. "
                           "HuggingFaceTB/SmolLM2-135M-Instruct.")
    return repo_id


@dataclass(frozen=True)
class HubConfig:
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None

    @classmethod
    def from_env(cls) -> "HubConfig":
        """HF_ENDPOINT and the token as huggingface_hub finds it (HF_TOKEN, then the saved login)."""
        from huggingface_hub import get_token

        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
            raise HubUnreachable("HF_HUB_OFFLINE is set, so nothing can be downloaded; unset it and try again.")
        endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        return cls(endpoint, get_token())


@dataclass(frozen=True)
class FileMeta:
    """What a HEAD on a file's resolve URL says."""

    size: int | None
    etag: str | None          # the LFS sha256 for LFS files (X-Linked-Etag), else the git blob id
    commit: str | None
    xet: object | None        # huggingface_hub's XetFileData when the file is in Xet storage


class Hub:
    def __init__(self, config: HubConfig | None = None, timeout_s: float = 20.0):
        self.config = config or HubConfig.from_env()
        self.timeout_s = timeout_s

    @property
    def endpoint(self) -> str:
        return self.config.endpoint

    def headers(self) -> dict:
        from huggingface_hub.utils import build_hf_headers

        return build_hf_headers(token=self.config.token or False, library_name="model-workbench")

    def translate(self, e: BaseException, repo_id: str, what: str = "") -> DownloadError:
        """One sentence for a failed hub call."""
        from huggingface_hub import errors as hf

        where = f"{what} in {repo_id}" if what else repo_id
        status = e.status if isinstance(e, HubBusy) else getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, hf.GatedRepoError) or status in (401, 403) and not isinstance(e, hf.RepositoryNotFoundError):
            if self.config.token:
                return RepoGated(f"{repo_id} is gated and your token may not read it (HTTP {status}); accept its "
                                 f"terms on its page with the account of your HF_TOKEN, then try again.")
            return RepoGated(f"{repo_id} is gated or private (HTTP {status}); set HF_TOKEN to a token that has "
                             "access (or run `hf auth login`), then try again.")
        if isinstance(e, hf.RevisionNotFoundError):
            return RepoNotFound(f"{where}: that revision does not exist; leave it out to get main.")
        if isinstance(e, hf.RemoteEntryNotFoundError):
            return NoMatchingFile(f"{where} is not on {self.endpoint} (HTTP 404); list the repo to see its files.")
        if isinstance(e, hf.RepositoryNotFoundError) or status == 404:
            hint = "" if self.config.token else " (if it is private, set HF_TOKEN)"
            return RepoNotFound(f"There is no repository {repo_id} on {self.endpoint}{hint}; check the name.")
        if status is not None:
            return HubUnreachable(f"{self.endpoint} answered HTTP {status} for {where}; try again later.")
        return HubUnreachable(f"Could not reach {self.endpoint} ({type(e).__name__}: {brief(e, 120)}); check the "
                              "network or HF_ENDPOINT.")

    def _call(self, repo_id: str, what: str, fn):
        from huggingface_hub.errors import HFValidationError

        try:
            return fn()
        except DownloadError:
            raise
        except HFValidationError as e:
            raise RepoNotFound(f"{repo_id!r} is not a valid repository id ({e}); write it as org/name.") from e
        except Exception as e:  # noqa: BLE001 - HfHubHTTPError, OSError, and httpx2's transport errors
            raise self.translate(e, repo_id, what) from e

    def snapshot(self, repo_id: str, revision: str | None = None) -> RepoSnapshot:
        """The repo's files with sizes and checksums, pinned to one commit."""
        from huggingface_hub import HfApi

        repo_id = check_repo_id(repo_id)
        api = HfApi(endpoint=self.endpoint, token=self.config.token or False)
        info = self._call(repo_id, "", lambda: api.model_info(repo_id, revision=revision, files_metadata=True,
                                                              timeout=self.timeout_s))
        files = tuple(RepoFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None,
                               None if s.lfs else s.blob_id) for s in (info.siblings or []))
        if not info.sha:
            raise HubUnreachable(f"{self.endpoint} did not say which commit {repo_id} is at; try again later.")
        return RepoSnapshot(repo_id, info.sha, files, bool(getattr(info, "gated", False)))

    def url(self, repo_id: str, commit: str, filename: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(repo_id, filename, revision=commit, endpoint=self.endpoint)

    def file_meta(self, repo_id: str, url: str, filename: str) -> FileMeta:
        """HEAD the file: its size, checksum etag, commit and Xet data (this is where a gated repo says 401)."""
        from huggingface_hub import get_hf_file_metadata

        meta = self._call(repo_id, filename, lambda: get_hf_file_metadata(
            url, token=self.config.token or False, endpoint=self.endpoint, timeout=self.timeout_s,
            retry_on_errors=True, library_name="model-workbench"))
        return FileMeta(meta.size, meta.etag, meta.commit_hash, meta.xet_file_data)

    @contextmanager
    def stream(self, repo_id: str, url: str, start: int = 0, end: int | None = None,
               read_timeout_s: float | None = None) -> Iterator[object]:
        """An open GET response from byte `start` (to `end` inclusive), redirects followed.

        Status errors (401, 403, 404) raise as DownloadError sentences; 429 and 5xx as HubBusy and
        transport errors (drops, timeouts) as they are, for the caller's retry loop.
        """
        import httpx2
        from huggingface_hub.utils import get_session

        headers = dict(self.headers())
        headers["Accept-Encoding"] = "identity"  # byte offsets must be offsets in the file
        if start or end is not None:
            headers["Range"] = f"bytes={start}-" + ("" if end is None else str(end))
        timeout = httpx2.Timeout(self.timeout_s, read=read_timeout_s or self.timeout_s)
        with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise HubBusy(response.status_code, self.endpoint)
            if response.status_code >= 400 and response.status_code != 416:
                response.read()
                self._raise_status(repo_id, response, url.rsplit("/", 1)[-1])
            yield response

    def _raise_status(self, repo_id: str, response, filename: str) -> None:
        from huggingface_hub.utils import hf_raise_for_status

        try:
            hf_raise_for_status(response)
        except Exception as e:  # noqa: BLE001 - translated to one sentence
            raise self.translate(e, repo_id, filename) from e
        raise HubUnreachable(f"{self.endpoint} answered HTTP {response.status_code} for {filename}; try again later.")

    def read_range(self, repo_id: str, url: str, start: int, end: int) -> bytes:
        """Bytes `start`..`end` inclusive (fewer at the end of the file); a server that ignores Range is cut off."""
        want = end - start + 1
        try:
            with self.stream(repo_id, url, start, end) as response:
                if response.status_code == 416:
                    return b""
                skip = start if response.status_code == 200 else 0  # Range ignored: the body starts at byte 0
                out = bytearray()
                for chunk in response.iter_bytes(1 << 20):
                    out += chunk
                    if len(out) >= skip + want:
                        break
                return bytes(out[skip:skip + want])
        except DownloadError:
            raise
        except Exception as e:  # noqa: BLE001 - transport errors: one sentence
            raise self.translate(e, repo_id, url.rsplit("/", 1)[-1]) from e

    def read_small(self, repo_id: str, commit: str, filename: str, limit: int = 16 << 20) -> bytes:
        """A whole small file (config.json, an index) at `commit`."""
        return self.read_range(repo_id, self.url(repo_id, commit, filename), 0, limit - 1)
