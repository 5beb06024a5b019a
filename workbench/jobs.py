"""Long work in its own process (convert, export, GGUF conversion), with a JSON-lines protocol.

`JobService.run(spec, on_progress, stop)` starts `python -m workbench.jobs`, sends it the
job as one JSON line and reads JSON lines back:

    {"event": "progress", "message": "..."}          any number of times
    {"event": "result", "output": "/abs/path"}       once, when the job made its output
    {"event": "error", "class": "ConversionError", "message": "..."}   once, instead

The child keeps that protocol on a private copy of its stdout and points fd 1 at its
stderr, so whatever an engine prints cannot break it; stderr goes to a log file in
user_data/logs/ (or to the caller's stderr). The app process never holds the weights, a
job can be stopped (the process is killed; jobs write into a temporary folder that is
renamed into place only when complete) and the UI and the CLI are both clients of the
same jobs. The job functions themselves live where they belong (convert.py,
training/export.py); this module only names them.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

from .errors import WorkbenchError, brief, raise_by_name
from .paths import Paths

# kind -> "module:function(**kwargs, progress=callback) -> output path"
JOBS = {
    "convert_to_transformers": "workbench.convert:gguf_to_transformers",
    "convert_to_gptq": "workbench.convert:transformers_to_gptq",
    "export": "workbench.training.export:export",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class JobFailed(WorkbenchError):
    """A job ended without a result and without saying why."""


@dataclass(frozen=True)
class JobSpec:
    kind: str                                   # a key of JOBS
    kwargs: dict = field(default_factory=dict)  # plain values only (they cross the process boundary)
    title: str = ""                             # what it does, for logs and progress ("Export r1 to GGUF")


@dataclass(frozen=True)
class JobResult:
    output: str                                 # absolute path of what the job made


class JobService:
    def __init__(self, paths: Paths, jobs: dict[str, str] | None = None):
        self.paths = paths
        self.jobs = {**JOBS, **(jobs or {})}  # kind -> "module:function" (tests add their own)

    def run(self, spec: JobSpec, on_progress: Callable[[str], None] = lambda message: None,
            stop: threading.Event | None = None, log_to_stderr: bool = False,
            on_fraction: Callable[[float, str], None] | None = None) -> JobResult:
        """Run `spec` in a child process to the end; `on_progress(message)` per progress line, or
        `on_fraction(done, message)` for those that say how far along the job is (0..1) when given.

        Setting `stop` kills the child (its temporary output is left unfinished and never renamed
        into place). Raises the job's own error class with its one-sentence message.
        """
        if spec.kind not in self.jobs:
            raise WorkbenchError(f"Unknown job {spec.kind!r}; known jobs are {', '.join(self.jobs)}.")
        log_dir = os.path.join(self.paths.user_data, "logs")
        os.makedirs(log_dir, exist_ok=True)
        log = None if log_to_stderr else open(os.path.join(log_dir, f"job-{spec.kind}.log"), "ab")
        env = dict(os.environ, WORKBENCH_ROOT=self.paths.root, PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.Popen([sys.executable, "-m", "workbench.jobs"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, text=True, env=env, cwd=ROOT)
        finally:
            if log is not None:
                log.close()
        watcher = None
        if stop is not None:
            done = threading.Event()

            def watch():
                while not done.wait(0.2):
                    if stop.is_set():
                        proc.kill()
                        return

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
        try:
            proc.stdin.write(json.dumps({"function": self.jobs[spec.kind], "kwargs": spec.kwargs}) + "\n")
            proc.stdin.close()
            outcome = None
            for line in proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if event.get("event") == "progress":
                    fraction = event.get("fraction")
                    if on_fraction is not None and isinstance(fraction, (int, float)):
                        on_fraction(min(max(float(fraction), 0.0), 1.0), str(event.get("message", "")))
                    else:
                        on_progress(str(event.get("message", "")))
                else:
                    outcome = event
            proc.wait()
        finally:
            if watcher is not None:
                done.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if stop is not None and stop.is_set():
            raise JobFailed(f"{spec.title or spec.kind} was stopped; nothing was written.")
        if outcome is None:
            raise JobFailed(f"{spec.title or spec.kind} ended without a result (exit code {proc.returncode}); "
                            f"see user_data/logs/job-{spec.kind}.log.")
        if outcome["event"] == "error":
            raise_by_name(outcome.get("class", ""), outcome.get("message", "The job failed."), JobFailed)
        return JobResult(outcome["output"])


def run_in_terminal(spec: JobSpec, paths: Paths) -> int:
    """For the CLI: run `spec`, progress on stderr (with the engines' own output), its output's path on stdout."""
    result = JobService(paths).run(spec, lambda message: print(message, file=sys.stderr, flush=True),
                                   log_to_stderr=True, on_fraction=lambda done, message: None)  # bars show there
    print(result.output)
    return 0


_BAR = re.compile(r"(?P<desc>[^\r\n|]*?):?\s*(?P<pct>\d{1,3})%\|")


class ProgressBars(io.TextIOBase):
    """A text stream in front of stderr that passes everything through and turns each tqdm bar's
    percentage ("Writing: 41%|####  |") into `progress(desc, fraction)`, at most once per percent."""

    def __init__(self, stream, progress: Callable[..., None]):
        self.stream, self.progress, self._last = stream, progress, None

    def write(self, text: str) -> int:
        self.stream.write(text)
        for part in re.split(r"[\r\n]", text):
            match = _BAR.search(part)
            if match:
                seen = (match["desc"].strip(), int(match["pct"]))
                if seen != self._last:
                    self._last = seen
                    self.progress(seen[0] or "Working", min(seen[1], 100) / 100)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return False


def _child() -> int:
    """The job process: read the job from stdin, run it, report on a private copy of stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever the job or its engines print goes to stderr (the log)
    sys.stdout = sys.stderr

    def emit(event: dict) -> None:
        protocol.write(json.dumps(event) + "\n")

    def progress(message, fraction: float | None = None) -> None:
        emit({"event": "progress", "message": str(message), "fraction": fraction})

    sys.stderr = ProgressBars(sys.stderr, progress)  # the engines' tqdm bars become fractions

    try:
        job = json.loads(sys.stdin.readline())
        module_name, function = job["function"].split(":")
        run = getattr(importlib.import_module(module_name), function)
        output = run(**job["kwargs"], progress=progress)
        emit({"event": "result", "output": os.path.abspath(output)})
        return 0
    except WorkbenchError as e:
        emit({"event": "error", "class": type(e).__name__, "message": str(e)})
    except MemoryError:
        emit({"event": "error", "class": "JobFailed", "message": "The job ran out of memory; close other programs "
                                                                 "or pick a smaller model."})
    except OSError as e:
        emit({"event": "error", "class": "JobFailed",
              "message": f"The job could not read or write a file ({e.strerror or e}); check free disk space."})
    except Exception as e:  # noqa: BLE001 - reported as one sentence; the traceback is in the log
        import traceback

        traceback.print_exc()
        emit({"event": "error", "class": "JobFailed", "message": f"The job failed: {type(e).__name__}: {brief(e)}"})
    return 1


if __name__ == "__main__":
    sys.exit(_child())
