"""One run folder that leads out of runs/ is reported and skipped; it does not block training."""

from __future__ import annotations

import json

from workbench.paths import Paths
from workbench.services.training_service import TrainingService

from .fakes import scratch


def test_a_run_leading_outside_is_skipped_and_training_is_not_blocked(tmp_path):
    (tmp_path / "root").mkdir()
    root = scratch(tmp_path / "root")
    runs = root / "user_data" / "runs"
    (runs / "good").mkdir(parents=True)
    (runs / "good" / "state.json").write_text(json.dumps({"status": "completed"}))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (runs / "x").symlink_to(outside, target_is_directory=True)
    training = TrainingService(Paths(str(root)))
    names, skipped = training.listing()
    assert names == ["good"] and training.names() == ["good"]
    assert len(skipped) == 1 and "'x' leads outside runs/" in skipped[0] and str(outside) not in skipped[0]
    assert training.running() == []
    training._refuse_if_busy("new-run")  # what Start and Resume ask first: no error


def test_a_deleted_run_comes_back_with_undo(tmp_path):
    (tmp_path / "root").mkdir()
    root = scratch(tmp_path / "root")
    run = root / "user_data" / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"status": "completed"}))
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    training = TrainingService(Paths(str(root)))
    training.delete("r1")
    assert training.names() == []
    assert training.undo_delete() == "r1" and training.names() == ["r1"]
    assert (run / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_a_resumed_run_has_no_eta_until_its_first_step():
    from workbench.services.training_service import eta_seconds

    before = [{"step": s, "max_steps": 100, "loss": 1.0, "step_s": 2.0, "time": 1000.0 + s} for s in range(1, 11)]
    assert eta_seconds(before, started=1000.0) == 90 * 2.0  # the first run: its own steps
    assert eta_seconds(before, started=5000.0) is None  # resumed at 5000: the old rows give no ETA
    after = before + [{"step": 11, "max_steps": 100, "loss": 0.9, "step_s": 3.0, "time": 5010.0}]
    assert eta_seconds(after, started=5000.0) == 89 * 3.0
