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


def bar(n: int, out: str, progress=print) -> str:
    """Reports through a tqdm bar on stderr, as the engines' loaders and converters do."""
    from tqdm import tqdm

    progress("starting")
    for _ in tqdm(range(n), desc="Copying tensors", mininterval=0):
        time.sleep(0.01)
    with open(out, "w") as f:
        f.write(str(n))
    return out
