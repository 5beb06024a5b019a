"""Hardware profiles: saved load settings for a kind of machine, as YAML in presets/hardware/.

A profile has a description, what memory it assumes the machine has, and load options.
The store writes `this-machine.yaml` from the detected hardware at first run, warns when
a profile assumes more memory than this machine has, and remembers each model's last
settings in user_data/model_settings.json. Folder mechanics live in `preset_store.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from .atomic import write_json_atomic, write_text_atomic
from .errors import WorkbenchError
from .hardware import Hardware
from .options import LoadOptions
from .preset_store import KeyChecker, PresetError, PresetFolder, load_mapping

ProfileError = PresetError
PROFILE_KEYS = {"description", "builtin", "assumes", "load"}
ASSUMES_KEYS = {"ram_gib", "vram_gib"}
# Load options a profile may set (paths, adapters and trust flags are not machine settings).
PROFILE_LOAD_KEYS = {f.name for f in fields(LoadOptions)} - {"offload_folder", "trust_pickle", "weight_budget", "tensor_split",
                                                             "adapter"}
THIS_MACHINE = "this-machine"
_NUMBER_OR_NONE = (int, float, type(None))
_LOAD_TYPES = {
    "n_ctx": (int,), "n_gpu_layers": (int, type(None)), "n_batch": (int,), "n_threads": (int, type(None)),
    "use_mmap": (bool,), "use_mlock": (bool,), "flash_attn": (bool,), "cache_type": (str,), "dtype": (str,),
    "device": (str,), "max_vram_gib": _NUMBER_OR_NONE, "max_ram_gib": _NUMBER_OR_NONE,
    "parallel": (int,), "draft_tokens": (int,), "rpc_servers": (str,),
}


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
        return LoadOptions.from_dict({**(base or LoadOptions()).to_dict(), **self.load})

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

        assumes = {k: v for k, v in (("ram_gib", self.assumes_ram_gib), ("vram_gib", self.assumes_vram_gib))
                   if v is not None}
        data = {"description": self.description, "builtin": self.builtin or None, "assumes": assumes or None,
                "load": self.load}
        return yaml.safe_dump({k: v for k, v in data.items() if v is not None}, sort_keys=False)


def parse_profile(name: str, text: str) -> HardwareProfile:
    """Parse a profile's YAML strictly; errors name the key and line."""
    where = f"profile {name!r}"
    data, lines = load_mapping(text, where)
    check = KeyChecker(where, lines)
    check.only(data, PROFILE_KEYS)
    assumes, load = data.get("assumes") or {}, data.get("load") or {}
    if not isinstance(assumes, dict):
        raise check.error("assumes", "must be a mapping with ram_gib / vram_gib")
    if not isinstance(load, dict):
        raise check.error("load", "must be a mapping of load options")
    check.only(assumes, ASSUMES_KEYS, "assumes.")
    for key, value in assumes.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise check.error(f"assumes.{key}", "must be a positive number of GiB")
    check.only(load, PROFILE_LOAD_KEYS, "load.")
    check.typed(load, _LOAD_TYPES, "load.")
    try:
        LoadOptions.from_dict({**LoadOptions().to_dict(), **load})
    except WorkbenchError as e:
        raise ProfileError(f"{where}: {e}") from e
    return HardwareProfile(
        name=name, description=str(data.get("description") or ""), builtin=bool(data.get("builtin")),
        assumes_ram_gib=assumes.get("ram_gib"), assumes_vram_gib=assumes.get("vram_gib"), load=dict(load),
    )


def profile_for_machine(hw: Hardware) -> HardwareProfile:
    """A profile that matches the detected hardware: caps a little under what it has."""
    load: dict = {"n_threads": hw.physical_cores, "max_ram_gib": round(hw.ram_total_bytes / 2**30 * 0.8, 1)}
    if hw.gpus:
        load["max_vram_gib"] = round(hw.gpus[0].total_bytes / 2**30 * 0.9, 1)
    gpu = f", {hw.gpus[0].name}" if hw.gpus else ", no GPU"
    return HardwareProfile(
        THIS_MACHINE, f"Written from the detected hardware: {hw.physical_cores} cores, "
        f"{hw.ram_total_bytes / 2**30:.0f} GiB RAM{gpu}.",
        assumes_ram_gib=round(hw.ram_total_bytes / 2**30, 1),
        assumes_vram_gib=round(hw.vram_total_bytes / 2**30, 1) if hw.gpus else None, load=load)


class ProfileStore(PresetFolder[HardwareProfile]):
    kind = "hardware profile"

    def __init__(self, folder: str, settings_path: str):
        super().__init__(folder, parse_profile, lambda p: p.builtin)
        self.settings_path = settings_path  # user_data/model_settings.json

    def list(self) -> list[dict]:
        """Every profile as a row, or {"name", "error"} for one that cannot be read."""
        good, bad = self.readable()
        rows = [{"name": p.name, "description": p.description, "builtin": p.builtin, "load": p.load} for p in good]
        rows += [{"name": name, "error": error} for name, error in bad.items()]
        return sorted(rows, key=lambda r: r["name"])

    def save(self, name: str, options: LoadOptions, description: str = "",
             assumes_ram_gib: float | None = None, assumes_vram_gib: float | None = None) -> HardwareProfile:
        load = {k: v for k, v in options.to_dict().items() if k in PROFILE_LOAD_KEYS}
        profile = HardwareProfile(name, description, False, assumes_ram_gib, assumes_vram_gib, load)
        self.write(name, profile.to_yaml())
        return profile

    def ensure_this_machine(self, hw: Hardware) -> None:
        """Write this-machine.yaml from the hardware if it does not exist yet."""
        path = self.path(THIS_MACHINE)
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
        data[model] = {"loader": loader,
                       "options": {k: v for k, v in options.to_dict().items() if k in PROFILE_LOAD_KEYS}}
        write_json_atomic(self.settings_path, data)

    def last_settings(self, model: str) -> tuple[str, LoadOptions] | None:
        entry = self._settings().get(model)
        if not isinstance(entry, dict):
            return None
        try:
            return entry.get("loader", "auto"), LoadOptions.from_dict({**LoadOptions().to_dict(),
                                                                       **entry.get("options", {})})
        except (WorkbenchError, TypeError):
            return None
