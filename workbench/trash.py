"""Undo for deletes: what Delete removes is moved aside into its folder's `.deleted/`, and Undo puts
back the latest.

Owns only moving entries (files or whole folders, such as a training run) aside and back,
newest first, keeping at most `keep`; the stores decide what may be deleted. A `.deleted/`
folder starts with a dot, so no listing shows it and no client-given name can reach it.
"""

from __future__ import annotations

import os
import shutil

from .errors import WorkbenchError

DELETED = ".deleted"


class NothingToUndo(WorkbenchError):
    """Undo was pressed with nothing deleted."""


class Trash:
    def __init__(self, folder: str, keep: int = 20):
        self.folder = os.path.join(folder, DELETED)  # e.g. user_data/chats/.deleted
        self.keep = keep

    def put(self, path: str, copy: bool = False) -> None:
        """Move `path` (a file or folder) aside under its own name, or keep a copy of it (`copy`)."""
        os.makedirs(self.folder, exist_ok=True)
        target = os.path.join(self.folder, os.path.basename(path))
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        if copy:
            shutil.copyfile(path, target)
        else:
            os.replace(path, target)
        os.utime(target)  # ordered by when it was deleted
        for old in self._entries()[: -self.keep]:
            shutil.rmtree(old.path) if old.is_dir(follow_symlinks=False) else os.remove(old.path)

    def restore_latest(self, into: str, what: str) -> str:
        """Move the latest entry back into `into`; return its name (replacing what is there now)."""
        entries = self._entries()
        if not entries:
            raise NothingToUndo(f"There is nothing to undo: no {what} was deleted.")
        latest = entries[-1]
        target = os.path.join(into, latest.name)
        if os.path.isdir(target) and not os.path.islink(target):
            raise WorkbenchError(f"{what.capitalize()} {latest.name!r} exists again; rename or delete it, then undo.")
        os.replace(latest.path, target)
        return latest.name

    def _entries(self) -> list[os.DirEntry]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(os.scandir(self.folder), key=lambda e: e.stat(follow_symlinks=False).st_mtime_ns)
