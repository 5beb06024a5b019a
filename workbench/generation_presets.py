"""Generation presets: named sampling settings, as YAML in presets/generation/.

A preset sets any of GenParams' sampling fields (temperature, top_p, top_k, min_p,
repetition_penalty, presence_penalty, frequency_penalty, max_tokens, seed, stop). Every
backend honours them the same way. Per-request fields (logit_bias, logprobs, json_schema)
are not preset material and are not saved.
Folder mechanics (names, listing, strict parsing, shipped presets) live in `preset_store.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import WorkbenchError
from .options import GenParams
from .preset_store import KeyChecker, PresetError, PresetFolder, load_mapping

PRESET_KEYS = {"description", "builtin", "params"}
_NUMBER = (int, float)
PARAM_TYPES = {
    "temperature": _NUMBER, "top_p": _NUMBER, "top_k": (int,), "min_p": _NUMBER, "repetition_penalty": _NUMBER,
    "max_tokens": (int,), "seed": (int, type(None)), "stop": (list,), "presence_penalty": _NUMBER,
    "frequency_penalty": _NUMBER,
}


@dataclass
class GenerationPreset:
    name: str
    description: str = ""
    builtin: bool = False
    params: dict = field(default_factory=dict)

    def gen_params(self) -> GenParams:
        return GenParams.from_dict({**GenParams().to_dict(), **self.params})


def parse_preset(name: str, text: str) -> GenerationPreset:
    where = f"generation preset {name!r}"
    data, lines = load_mapping(text, where)
    check = KeyChecker(where, lines)
    check.only(data, PRESET_KEYS)
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise check.error("params", "must be a mapping of sampling settings")
    check.only(params, set(PARAM_TYPES), "params.")
    check.typed(params, PARAM_TYPES, "params.")
    if not all(isinstance(s, str) for s in params.get("stop", [])):
        raise check.error("params.stop", "must be a list of strings")
    try:
        GenParams.from_dict({**GenParams().to_dict(), **params})
    except WorkbenchError as e:
        raise PresetError(f"{where}: {e}") from e
    return GenerationPreset(name, str(data.get("description") or ""), bool(data.get("builtin")), dict(params))


class GenerationPresetStore(PresetFolder[GenerationPreset]):
    kind = "generation preset"

    def __init__(self, folder: str):
        super().__init__(folder, parse_preset, lambda p: p.builtin)

    def save(self, name: str, params: GenParams, description: str = "") -> GenerationPreset:
        import yaml

        values = {k: v for k, v in params.to_dict().items() if k in PARAM_TYPES}
        text = yaml.safe_dump({"description": description, "params": values}, sort_keys=False)
        self.write(name, text)
        return GenerationPreset(name, description, False, values)
