"""The errors of getting a model: each message is one sentence saying what is wrong and what to do."""

from __future__ import annotations

from ..errors import WorkbenchError


class DownloadError(WorkbenchError):
    """Base class of every download problem."""


class HubUnreachable(DownloadError):
    """The hub (or mirror) did not answer: no network, wrong HF_ENDPOINT, server down."""


class RepoNotFound(DownloadError):
    """No such repository (or it is private and no token was given)."""


class RepoGated(DownloadError):
    """The repository needs a token that has accepted its terms (HTTP 401/403)."""


class NoMatchingFile(DownloadError):
    """The quantization or file asked for is not in the repository."""


class TargetExists(DownloadError):
    """models/ already has an entry with the name the download would take."""


class NotEnoughDisk(DownloadError):
    """The disk under models/ has less free space than the download needs."""


class ChecksumMismatch(DownloadError):
    """A downloaded file's sha256 differs from the hub's; the file was deleted."""


class DownloadStalled(DownloadError):
    """The connection kept dropping or stalling; the bytes so far are kept for a resume."""


class DownloadCancelled(DownloadError):
    """The user cancelled; the bytes so far are kept for a resume."""
