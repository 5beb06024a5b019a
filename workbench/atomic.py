"""Atomic writes of user data: a crash mid-write leaves the old file intact.

Write a temp file in the same folder, fsync it, then `os.replace` it over the target.
"""

from __future__ import annotations

import json
import os
import tempfile


def write_text_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json_atomic(path: str, value) -> None:
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False))
