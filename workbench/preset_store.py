"""A folder of strict YAML presets (hardware profiles, generation presets).

Owns what every preset kind shares: safe names inside the folder, listing (an unreadable
file is reported and the others still load), atomic saves, deletes, protection of shipped
presets (`builtin: true`), and strict parsing where an unknown key or bad value is an
error naming the key and its line. What a preset means is its own module's business.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Generic, TypeVar

from .atomic import write_text_atomic
from .errors import WorkbenchError
from .paths import resolve_inside
from .trash import Trash

NAME_MAX = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,%d}$" % (NAME_MAX - 1))
T = TypeVar("T")


class PresetError(WorkbenchError):
    """A preset file or name is invalid."""


def load_mapping(text: str, where: str) -> tuple[dict, dict[str, int]]:
    """Parse YAML that must be a mapping; return it and the line of every (dotted) key."""
    import yaml

    try:
        # Presets are small hand-written files; aliases would only serve an "alias bomb" that
        # expands exponentially when the values are walked or printed.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise PresetError(f"{where} uses YAML aliases (*name), which presets do not support; write the values out.")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise PresetError(f"{where} is not valid YAML{line}; fix the file or delete it.") from e
    except RecursionError:
        raise PresetError(f"{where} is nested too deeply to be a preset; fix the file or delete it.") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise PresetError(f"{where} must be a mapping of keys.")
    lines: dict[str, int] = {}

    def collect(node, prefix=""):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[prefix + str(k.value)] = k.start_mark.line + 1
                collect(v, prefix + str(k.value) + ".")

    collect(root)
    return data, lines


class KeyChecker:
    """Builds the "<where>, line N: 'key' <why>." errors for one file."""

    def __init__(self, where: str, lines: dict[str, int]):
        self.where, self.lines = where, lines

    def error(self, key: str, why: str) -> PresetError:
        return PresetError(f"{self.where}, line {self.lines.get(key, '?')}: {key!r} {why}.")

    def only(self, mapping: dict, allowed: set, prefix: str = "") -> None:
        for key in mapping:
            if key not in allowed:
                raise self.error(prefix + str(key), f"is not a valid key (valid: {', '.join(sorted(allowed))})")

    def typed(self, mapping: dict, types: dict, prefix: str = "") -> None:
        for key, value in mapping.items():
            expected = types[key]
            if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
                raise self.error(prefix + key, f"has the wrong type ({type(value).__name__})")


class PresetFolder(Generic[T]):
    """Named presets stored as NAME.yaml in one folder."""

    kind = "preset"

    def __init__(self, folder: str, parse: Callable[[str, str], T], is_builtin: Callable[[T], bool]):
        self.folder = folder
        self._parse = parse
        self._builtin = is_builtin

    def path(self, name: str) -> str:
        if name is None or (isinstance(name, str) and not name.strip()):
            raise PresetError(f"No {self.kind} is picked; choose one from the list or type a name.")
        if not isinstance(name, str) or not _NAME.match(name):
            raise PresetError(f"The {self.kind} name {name[:40] if isinstance(name, str) else name!r} is not allowed; "
                              f"use up to {NAME_MAX} letters, digits, spaces, '-', '_' or '.'.")
        return resolve_inside(self.folder, f"{name}.yaml", self.kind)

    def names(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(f[:-5] for f in os.listdir(self.folder) if f.endswith(".yaml") and not f.startswith("."))

    def get(self, name: str) -> T:
        path = self.path(name)
        if not os.path.isfile(path):
            raise PresetError(f"There is no {self.kind} {name!r}; choose one of {', '.join(self.names())}.")
        with open(path, encoding="utf-8") as f:
            return self._parse(name, f.read())

    def readable(self) -> tuple[list[T], dict[str, str]]:
        """(the presets that parse, {name: error} for those that do not)."""
        good, bad = [], {}
        for name in self.names():
            try:
                good.append(self.get(name))
            except WorkbenchError as e:
                bad[name] = str(e)
        return good, bad

    def is_builtin(self, name: str) -> bool:
        try:
            return self._builtin(self.get(name))
        except WorkbenchError:
            return False  # missing or unreadable: the user may replace or remove it

    def write(self, name: str, text: str) -> None:
        path = self.path(name)
        if self.is_builtin(name):
            raise PresetError(f"{name!r} is a shipped {self.kind}; save under another name.")
        self._parse(name, text)  # never write what could not be read back
        write_text_atomic(path, text)

    def delete(self, name: str) -> None:
        path = self.path(name)
        if not os.path.isfile(path):
            raise PresetError(f"There is no {self.kind} {name!r}.")
        if self.is_builtin(name):
            raise PresetError(f"{name!r} is a shipped {self.kind} and cannot be deleted.")
        Trash(self.folder).put(path)

    def undo_delete(self) -> str:
        """Bring back the one deleted last; return its name."""
        return os.path.splitext(Trash(self.folder).restore_latest(self.folder, self.kind))[0]
