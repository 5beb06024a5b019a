"""Hardware profiles: saved load settings for a kind of machine, as YAML in presets/hardware/.

A profile has a description, what memory it assumes the machine has, and load options.
Reading is strict: an unknown key or a bad value is an error that names the key and its
line. Shipped profiles (`builtin: true`) cannot be overwritten or deleted. The store
also writes `this-machine.yaml` from the detected hardware at first run, warns when a
profile assumes more memory than this machine has, and remembers each model's last
settings in user_data/model_settings.json. Every write is atomic.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields

from .atomic import write_json_atomic, write_text_atomic
from .errors import WorkbenchError
from .hardware import Hardware
from .options import LoadOptions
from .paths import resolve_inside

PROFILE_KEYS = {"description", "builtin", "assumes", "load"}
ASSUMES_KEYS = {"ram_gib", "vram_gib"}
# Load options a profile may set (paths and trust flags are not machine settings).
PROFILE_LOAD_KEYS = {f.name for f in fields(LoadOptions)} - {"offload_folder", "trust_pickle", "weight_budget"}
THIS_MACHINE = "this-machine"
_NUMBER_OR_NONE = (int, float, type(None))
_LOAD_TYPES = {
    "n_ctx": (int,), "n_gpu_layers": (int, type(None)), "n_batch": (int,), "n_threads": (int, type(None)),
    "use_mmap": (bool,), "use_mlock": (bool,), "flash_attn": (bool,), "cache_type": (str,), "dtype": (str,),
    "device": (str,), "max_vram_gib": _NUMBER_OR_NONE, "max_ram_gib": _NUMBER_OR_NONE,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


class ProfileError(WorkbenchError):
    """A profile file or name is invalid."""


@dataclass
class HardwareProfile:
    name: str
    description: str = ""
    builtin: bool = False
    assumes_ram_gib: float | None = None
    assumes_vram_gib: float | None = None
    load: dict = field(default_factory=dict)  # LoadOptions fields it sets

    def options(self, base: LoadOptions | None = None) -> LoadOptions:
        """LoadOptions with this profile's settings over `base` (defaults when None)."""
        data = (base or LoadOptions()).to_dict()
        data.update(self.load)
        return LoadOptions.from_dict(data)

    def warning(self, hw: Hardware) -> str | None:
        """A sentence when the profile assumes more memory than `hw` has, else None."""
        problems = []
        if self.assumes_ram_gib and self.assumes_ram_gib * 2**30 > hw.ram_total_bytes * 1.02:
            problems.append(f"{self.assumes_ram_gib:g} GiB RAM (this machine has {hw.ram_total_bytes / 2**30:.1f})")
        if self.assumes_vram_gib and self.assumes_vram_gib * 2**30 > hw.vram_total_bytes * 1.02:
            problems.append(f"{self.assumes_vram_gib:g} GiB VRAM (this machine has {hw.vram_total_bytes / 2**30:.1f})")
        if not problems:
            return None
        return f"Profile {self.name!r} assumes {' and '.join(problems)}; loads may not fit."

    def to_yaml(self) -> str:
        import yaml

        data = {"description": self.description, "builtin": self.builtin or None,
                "assumes": {k: v for k, v in (("ram_gib", self.assumes_ram_gib),
                                              ("vram_gib", self.assumes_vram_gib)) if v is not None} or None,
                "load": self.load}
        return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)


def parse_profile(name: str, text: str) -> HardwareProfile:
    """Parse a profile's YAML strictly; errors name the key and line."""
    import yaml

    where = f"profile {name!r}"
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{where} is not valid YAML{line}; fix the file or delete it.") from e
    if data is None:
        data, root = {}, None
    if not isinstance(data, dict):
        raise ProfileError(f"{where} must be a mapping of keys (description, assumes, load).")
    lines: dict[str, int] = {}

    def collect(node, prefix=""):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                lines[prefix + str(k.value)] = k.start_mark.line + 1
                collect(v, prefix + str(k.value) + ".")

    collect(root)

    def bad(key: str, why: str) -> ProfileError:
        return ProfileError(f"{where}, line {lines.get(key, '?')}: {key!r} {why}.")

    for key in data:
        if key not in PROFILE_KEYS:
            raise bad(key, f"is not a profile key (valid: {', '.join(sorted(PROFILE_KEYS))})")
    assumes = data.get("assumes") or {}
    load = data.get("load") or {}
    if not isinstance(assumes, dict):
        raise bad("assumes", "must be a mapping with ram_gib / vram_gib")
    if not isinstance(load, dict):
        raise bad("load", "must be a mapping of load options")
    for key, value in assumes.items():
        if key not in ASSUMES_KEYS:
            raise bad(f"assumes.{key}", f"is unknown (valid: {', '.join(sorted(ASSUMES_KEYS))})")
        if not isinstance(value, (int, float)) or value <= 0:
            raise bad(f"assumes.{key}", "must be a positive number of GiB")
    defaults = LoadOptions().to_dict()
    for key, value in load.items():
        if key not in PROFILE_LOAD_KEYS:
            raise bad(f"load.{key}", f"is not a load option (valid: {', '.join(sorted(PROFILE_LOAD_KEYS))})")
        expected = _LOAD_TYPES[key]
        if isinstance(value, bool) and bool not in expected or not isinstance(value, expected):
            raise bad(f"load.{key}", f"has the wrong type ({type(value).__name__})")
    try:
        LoadOptions.from_dict({**defaults, **load})
    except WorkbenchError as e:
        raise ProfileError(f"{where}: {e}") from e
    return HardwareProfile(
        name=name, description=str(data.get("description") or ""), builtin=bool(data.get("builtin")),
        assumes_ram_gib=assumes.get("ram_gib"), assumes_vram_gib=assumes.get("vram_gib"), load=dict(load),
    )


def profile_for_machine(hw: Hardware) -> HardwareProfile:
    """A profile that matches the detected hardware: caps a little under what it has."""
    ram = round(hw.ram_total_bytes / 2**30 * 0.8, 1)
    load: dict = {"n_threads": hw.physical_cores, "max_ram_gib": ram}
    if hw.gpus:
        load["max_vram_gib"] = round(hw.gpus[0].total_bytes / 2**30 * 0.9, 1)
    gpu = f", {hw.gpus[0].name}" if hw.gpus else ", no GPU"
    return HardwareProfile(
        THIS_MACHINE, f"Written from the detected hardware: {hw.physical_cores} cores, "
        f"{hw.ram_total_bytes / 2**30:.0f} GiB RAM{gpu}.",
        assumes_ram_gib=round(hw.ram_total_bytes / 2**30, 1),
        assumes_vram_gib=round(hw.vram_total_bytes / 2**30, 1) if hw.gpus else None, load=load)


class ProfileStore:
    def __init__(self, folder: str, settings_path: str):
        self.folder = folder                # presets/hardware
        self.settings_path = settings_path  # user_data/model_settings.json

    def _path(self, name: str) -> str:
        if not _NAME.match(name or ""):
            raise ProfileError(f"Profile name {name!r} is not allowed; use letters, digits, spaces, '-', '_' or '.'.")
        return resolve_inside(self.folder, f"{name}.yaml", "profile")

    def names(self) -> list[str]:
        if not os.path.isdir(self.folder):
            return []
        return sorted(f[:-5] for f in os.listdir(self.folder) if f.endswith(".yaml") and not f.startswith("."))

    def get(self, name: str) -> HardwareProfile:
        path = self._path(name)
        if not os.path.isfile(path):
            raise ProfileError(f"There is no hardware profile {name!r}; choose one of {', '.join(self.names())}.")
        with open(path, encoding="utf-8") as f:
            return parse_profile(name, f.read())

    def list(self) -> list[dict]:
        """Every profile, or {"name", "error"} for one that cannot be read (the others still load)."""
        rows = []
        for name in self.names():
            try:
                p = self.get(name)
                rows.append({"name": name, "description": p.description, "builtin": p.builtin, "load": p.load})
            except WorkbenchError as e:
                rows.append({"name": name, "error": str(e)})
        return rows

    def save(self, name: str, options: LoadOptions, description: str = "",
             assumes_ram_gib: float | None = None, assumes_vram_gib: float | None = None) -> HardwareProfile:
        path = self._path(name)
        if self._is_builtin(name):
            raise ProfileError(f"{name!r} is a shipped profile; save under another name.")
        load = {k: v for k, v in options.to_dict().items() if k in PROFILE_LOAD_KEYS}
        profile = HardwareProfile(name, description, False, assumes_ram_gib, assumes_vram_gib, load)
        write_text_atomic(path, profile.to_yaml())
        return profile

    def delete(self, name: str) -> None:
        path = self._path(name)
        if not os.path.isfile(path):
            raise ProfileError(f"There is no hardware profile {name!r}.")
        if self._is_builtin(name):
            raise ProfileError(f"{name!r} is a shipped profile and cannot be deleted.")
        os.remove(path)

    def _is_builtin(self, name: str) -> bool:
        try:
            return self.get(name).builtin
        except ProfileError:
            return False  # missing or unreadable: the user may replace or remove it

    def ensure_this_machine(self, hw: Hardware) -> None:
        """Write this-machine.yaml from the hardware if it does not exist yet."""
        path = self._path(THIS_MACHINE)
        if not os.path.exists(path):
            write_text_atomic(path, profile_for_machine(hw).to_yaml())

    # --- per-model last settings ------------------------------------------------------
    def _settings(self) -> dict:
        try:
            with open(self.settings_path, encoding="utf-8") as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, json.JSONDecodeError):
            return {}  # missing or corrupt: start fresh, the next save replaces it atomically

    def remember(self, model: str, loader: str, options: LoadOptions) -> None:
        data = self._settings()
        data[model] = {"loader": loader, "options": {k: v for k, v in options.to_dict().items()
                                                     if k in PROFILE_LOAD_KEYS}}
        write_json_atomic(self.settings_path, data)

    def last_settings(self, model: str) -> tuple[str, LoadOptions] | None:
        entry = self._settings().get(model)
        if not isinstance(entry, dict):
            return None
        try:
            return entry.get("loader", "auto"), LoadOptions.from_dict({**LoadOptions().to_dict(), **entry.get("options", {})})
        except WorkbenchError:
            return None
