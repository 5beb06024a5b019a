"""Atomic writes of user data: a crash mid-write leaves the old file intact.

Write a temp file in the same folder, fsync it, then `os.replace` it over the target.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile

from .errors import WorkbenchError


class SaveError(WorkbenchError, OSError):
    """Writing user data failed (full disk, no permission); the previous file is intact."""


def _save_error(path: str, e: OSError) -> SaveError:
    full = e.errno in (errno.ENOSPC, errno.EDQUOT)
    fix = "free some disk space and try again" if full else "check the folder and its permissions, then try again"
    why = e.strerror or str(e)
    error = SaveError(f"Could not save {os.path.basename(path)}: {why} (the previous version is kept); {fix}.")
    error.errno = e.errno
    return error


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` atomically; raise SaveError (an OSError too) naming why it failed."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, SaveError):
            raise _save_error(path, e) from e
        raise


def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False))
