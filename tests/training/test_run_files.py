"""RunFiles: which checkpoint a resume starts from."""

from __future__ import annotations

import json
import os

from workbench.training.run_files import RunFiles


def _checkpoint(run: RunFiles, step: int, state: str | None) -> None:
    folder = run.path("checkpoints", f"checkpoint-{step}")
    os.makedirs(folder)
    if state is not None:
        with open(os.path.join(folder, "trainer_state.json"), "w") as f:
            f.write(state)


def test_resume_skips_checkpoints_cut_short(tmp_path):
    run = RunFiles(str(tmp_path / "r"))
    assert run.last_checkpoint() is None
    _checkpoint(run, 5, json.dumps({"global_step": 5}))
    _checkpoint(run, 10, '{"global_step": 1')   # cut mid-write (a kill, a full disk)
    _checkpoint(run, 15, None)                   # killed before the state was written
    _checkpoint(run, 20, "[]")                   # not what the Trainer writes
    assert run.last_checkpoint() == run.path("checkpoints", "checkpoint-5")
    _checkpoint(run, 25, json.dumps({"global_step": 25}))
    assert run.last_checkpoint() == run.path("checkpoints", "checkpoint-25")
