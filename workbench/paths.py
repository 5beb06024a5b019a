"""Where the workbench keeps things on disk, and safe resolution of client-given names.

A name that comes from a browser or an API client (a preset, a conversation) must
resolve inside its own folder: no absolute paths, no `..`, and no symlink that leads
out. A model name must be one of the entries of models/; an entry may be a symlink the
owner put there (models kept on another drive), since a client cannot create one.
Paths typed on the local command line are the user's own and are trusted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import PathOutsideModels


@dataclass(frozen=True)
class Paths:
    root: str  # the workbench checkout (holds models/, presets/, user_data/)

    @property
    def models(self) -> str:
        return os.path.join(self.root, "models")

    @property
    def presets(self) -> str:
        return os.path.join(self.root, "presets")

    @property
    def user_data(self) -> str:
        return os.path.join(self.root, "user_data")

    @property
    def datasets(self) -> str:
        return os.path.join(self.root, "datasets")

    @property
    def runs(self) -> str:
        return os.path.join(self.user_data, "runs")

    @property
    def offload(self) -> str:
        return os.path.join(self.user_data, "offload")

    @classmethod
    def default(cls) -> "Paths":
        return cls(os.environ.get("WORKBENCH_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def resolve_inside(folder: str, name: str, what: str = "model") -> str:
    """Absolute path of `name` inside `folder`; raise PathOutsideModels if it would leave it."""
    if not isinstance(name, str) or not name.strip():
        raise PathOutsideModels(f"No {what} name was given; pick one from the list.")
    if os.path.isabs(name) or "\\" in name or "\x00" in name or any(p == ".." for p in name.split("/")):
        raise PathOutsideModels(
            f"{what.capitalize()} names must be names inside {os.path.basename(folder)}/, not paths; pick one from the list."
        )
    root = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, resolved]) != root:
        raise PathOutsideModels(f"{what.capitalize()} {name!r} leads outside {os.path.basename(folder)}/; refused.")
    return resolved


def resolve_entry(folder: str, name: str, what: str = "model") -> str:
    """Path of the entry `name` of `folder` (a direct child, possibly a symlink the owner made)."""
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name or "\\" in name \
            or "\x00" in name:
        raise PathOutsideModels(
            f"{what.capitalize()} names must be names inside {os.path.basename(folder)}/, not paths; pick one from the list."
        )
    if not os.path.isdir(folder) or name not in os.listdir(folder):
        raise PathOutsideModels(f"There is no {what} {name!r} in {os.path.basename(folder)}/; pick one from the list.")
    return os.path.join(folder, name)


# An absolute path in a message: starts at a "/" that does not follow a word, a dot or another "/" (so
# "tok/s", "RAM/VRAM" and URLs are left alone) and runs to whitespace, a quote or a bracket.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/-])/[^\s'\"`,;()\[\]{}<>|]+")


def public_text(text: str, root: str) -> str:
    """`text` as a remote user may see it: an absolute server path inside `root` becomes its name there
    (`models/x.gguf`), any other its last part, so messages never show where the server keeps things."""
    roots = sorted({os.path.abspath(root), os.path.realpath(root)}, key=len, reverse=True)

    def shown(match: re.Match) -> str:
        path = match.group(0)
        end = len(path.rstrip(".:"))  # a sentence's full stop is not part of the path
        path, tail = path[:end], path[end:]
        for r in roots:
            if path == r:
                return "the workbench folder" + tail
            if path.startswith(r + "/"):
                return path[len(r) + 1:] + tail
        return (os.path.basename(path.rstrip("/")) or path) + tail

    return _ABSOLUTE_PATH.sub(shown, text)
