"""A job for tests of jobs.py: counts, prints noise on stdout like an engine, writes its output last."""

from __future__ import annotations

import time

from workbench.errors import ConversionError


def count(n: int, out: str, delay: float = 0.0, progress=print) -> str:
    if n < 0:
        raise ConversionError(f"Counting to {n} makes no sense; give a positive number.")
    1 / n  # n == 0: an unexpected crash
    for i in range(1, n + 1):
        print("engine noise on stdout", flush=True)
        progress(f"step {i} of {n}")
        time.sleep(delay)
    with open(out, "w") as f:
        f.write(str(n))
    return out
