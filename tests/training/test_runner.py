"""The sentence a failed run shows, for failures that do not come from our own checks."""

from __future__ import annotations

import errno

from workbench.errors import WorkbenchError
from workbench.training.runner import failure_message


def test_failures_become_one_sentence_with_what_to_do():
    assert failure_message(WorkbenchError("The dataset is empty.")) == "The dataset is empty."
    assert "lower the batch size" in failure_message(MemoryError())
    full = failure_message(OSError(errno.ENOSPC, "No space left on device"))
    assert full.startswith("The disk is full") and "Resume" in full
    other = failure_message(RuntimeError("shape mismatch"))
    assert other == "Training failed (RuntimeError: shape mismatch)."
