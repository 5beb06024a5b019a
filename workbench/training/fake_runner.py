"""A fake training run for fast service and UI tests: the real run's files, no model, no torch.

Started by `TrainingService(paths, runner="workbench.training.fake_runner")` exactly as the
real runner is (`python -m MODULE RUN_FOLDER`). It reads the run's config.yaml, writes
state.json and one metrics.jsonl row per step (a loss that falls, a validation row every
`eval_every` steps), honours Cancel (SIGTERM or the cancel flag) and finishes the way the
real runner does, so the service's status, ETA, loss plot and resume logic see real files.
It never stands in for the proof that training works: tests/training/ runs real LoRA and
scratch runs. The delay per step is $WORKBENCH_FAKE_STEP_S (default 0.05 s).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time

from .config import TrainConfig
from .run_files import CANCELLED, COMPLETED, RUNNING, RunFiles


def run(folder: str) -> int:
    files = RunFiles(folder)
    stop = {"requested": False}
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(requested=True))
    files.update_state(status=RUNNING, pid=os.getpid(), started=time.time(), error=None)
    with open(files.config, encoding="utf-8") as f:
        config = TrainConfig.from_yaml(f.read(), files.config)
    steps = config.max_steps or 10
    done = max((r["step"] for r in files.read_metrics() if "loss" in r), default=0)  # resumed: go on from there
    delay = float(os.environ.get("WORKBENCH_FAKE_STEP_S", "0.05"))
    for step in range(done + 1, steps + 1):
        if stop["requested"] or os.path.exists(files.cancel_flag):
            files.update_state(status=CANCELLED, finished=time.time())
            return 0
        time.sleep(delay)
        loss = 3.0 * math.exp(-step / steps)
        files.append_metrics({"step": step, "max_steps": steps, "epoch": step / steps, "time": time.time(),
                              "loss": loss, "learning_rate": config.learning_rate, "step_s": delay})
        if config.eval_every and step % config.eval_every == 0:
            files.append_metrics({"step": step, "max_steps": steps, "time": time.time(), "eval_loss": loss + 0.2,
                                  "eval_perplexity": math.exp(loss + 0.2)})
        print(f"step {step}/{steps} loss={loss:.4g}", flush=True)
    files.update_state(status=COMPLETED, finished=time.time(), perplexity_before=math.exp(3.2),
                       perplexity_after=math.exp(3.0 * math.exp(-1) + 0.2))
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
