"""Messages that used to mislead (issue 15): each names what is wrong in the user's own terms."""

from __future__ import annotations

import os

import pytest

from workbench.errors import WorkbenchError
from workbench.generation_presets import GenerationPresetStore
from workbench.training.dataset import DatasetError, read_text
from workbench.ui.load_form import FORM_FIELDS, options_from_values

FORM = dict(zip(FORM_FIELDS, (1024, -2, 512, 0, "f16", True, True, False, "auto", "auto", 0, 0, 1, 0)))


def test_nothing_picked_is_not_called_a_name_none(tmp_path):
    store = GenerationPresetStore(str(tmp_path))
    for picked in (None, "", "  "):
        with pytest.raises(WorkbenchError, match="No generation preset is picked"):
            store.get(picked)


def test_a_name_too_long_says_the_length(tmp_path):
    with pytest.raises(WorkbenchError, match="up to 64"):
        GenerationPresetStore(str(tmp_path)).get("x" * 65)


@pytest.mark.parametrize("field", ["max_ram_gib", "max_vram_gib"])
def test_a_negative_cap_says_zero_means_none(field):
    with pytest.raises(WorkbenchError, match=r"must be 0 \(no cap\) or a positive number"):
        options_from_values(list({**FORM, field: -1}.values()))
    assert getattr(options_from_values(list({**FORM, field: 0}.values())), field) is None


def test_random_bytes_are_not_called_windows_1252(tmp_path):
    noise = tmp_path / "noise.txt"
    noise.write_bytes(os.urandom(4096))
    with pytest.raises(DatasetError, match="does not look like text"):
        read_text(str(noise))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Caf\u00e9 au lait, cr\u00e8me br\u00fbl\u00e9e. ".encode("latin-1") * 20)
    with pytest.raises(DatasetError, match="Windows-1252"):
        read_text(str(latin))
