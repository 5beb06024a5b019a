"""The files of one training run folder, read and written the same way by the run and the app.

    user_data/runs/<name>/
        config.yaml      the TrainConfig (written once; read again to resume)
        state.json       status, pid, error, outputs (atomic writes)
        metrics.jsonl    one JSON object per logged step or evaluation (appended)
        train.log        the run's stdout and stderr
        checkpoints/     Trainer checkpoints (the last two kept)
        adapter/         the final LoRA adapter
        CANCEL           present when the user asked the run to stop

A run whose state says "running" but whose process is gone was interrupted (kill -9, a
crash, an app restart that took it down): it is shown as such and can resume.
"""

from __future__ import annotations

import json
import os
import time

from ..atomic import write_json_atomic

RUNNING, COMPLETED, FAILED, CANCELLED, INTERRUPTED = "running", "completed", "failed", "cancelled", "interrupted"


class RunFiles:
    def __init__(self, folder: str):
        self.folder = folder

    @property
    def name(self) -> str:
        return os.path.basename(self.folder)

    def path(self, *parts: str) -> str:
        return os.path.join(self.folder, *parts)

    @property
    def config(self) -> str:
        return self.path("config.yaml")

    @property
    def checkpoints(self) -> str:
        return self.path("checkpoints")

    @property
    def adapter(self) -> str:
        return self.path("adapter")

    @property
    def log(self) -> str:
        return self.path("train.log")

    @property
    def cancel_flag(self) -> str:
        return self.path("CANCEL")

    # state ---------------------------------------------------------------
    def read_state(self) -> dict:
        try:
            with open(self.path("state.json"), encoding="utf-8") as f:
                state = json.load(f)
            return state if isinstance(state, dict) else {"status": FAILED, "error": "state.json is not an object"}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            return {"status": FAILED, "error": f"state.json is unreadable ({e})"}

    def update_state(self, **changes) -> dict:
        state = self.read_state()
        state.update(changes)
        state["updated"] = time.time()
        write_json_atomic(self.path("state.json"), state)
        return state

    # metrics -------------------------------------------------------------
    def append_metrics(self, row: dict) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with open(self.path("metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict]:
        """All metric rows; a line cut short by a crash is skipped."""
        rows = []
        try:
            with open(self.path("metrics.jsonl"), encoding="utf-8") as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict):
                        rows.append(row)
        except FileNotFoundError:
            pass
        return rows

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 16384))
                data = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        return "\n".join(data.splitlines()[-lines:])

    def last_checkpoint(self) -> str | None:
        """The newest complete checkpoint folder, or None."""
        try:
            names = os.listdir(self.checkpoints)
        except FileNotFoundError:
            return None
        steps = [int(n[11:]) for n in names
                 if n.startswith("checkpoint-") and n[11:].isdigit() and self._complete(os.path.join(self.checkpoints, n))]
        return os.path.join(self.checkpoints, f"checkpoint-{max(steps)}") if steps else None

    @staticmethod
    def _complete(folder: str) -> bool:
        """The Trainer writes trainer_state.json last: a checkpoint cut short (kill, full disk) lacks it or has it cut."""
        try:
            with open(os.path.join(folder, "trainer_state.json"), encoding="utf-8") as f:
                return isinstance(json.load(f), dict)
        except (OSError, ValueError):
            return False
