"""The planner's process size is measured on each machine: a probe imports the engine's modules."""

from __future__ import annotations

import json

from workbench.backends.registry import TRANSFORMERS_PLAN
from workbench.plan import MiB
from workbench.runtime_probe import import_rss_bytes


def test_the_probe_measures_a_fresh_import_once_and_keeps_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    measured = import_rss_bytes(("json", "decimal"))
    assert 5 * MiB < measured < 200 * MiB  # a bare interpreter and two standard modules
    kept = json.loads((tmp_path / "model-workbench" / "runtime-probe.json").read_text())
    assert list(kept.values()) == [measured]
    assert import_rss_bytes(("json", "decimal")) == measured  # read back, not measured again


def test_a_probe_that_cannot_import_leaves_the_constant(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert import_rss_bytes(("no_such_module_anywhere",)) is None
    assert TRANSFORMERS_PLAN.calibrated(None) is TRANSFORMERS_PLAN


def test_calibration_moves_the_runtime_by_the_measured_difference():
    larger = TRANSFORMERS_PLAN.calibrated(TRANSFORMERS_PLAN.probe_reference + 90 * MiB)
    assert larger.runtime == TRANSFORMERS_PLAN.runtime + 90 * MiB
    assert larger.load_overhead == TRANSFORMERS_PLAN.load_overhead
