"""What an engine's libraries take in RAM on this machine, measured once and kept.

A backend's `PlanStrategy.runtime` is its worker's own size, calibrated on one machine. The same
libraries take a different amount elsewhere (another kernel, page-cache state, library build): on CI
a torch worker was ~90 MiB larger than where the constant was measured. So for strategies that name
`probe_imports`, the planner measures a fresh process that imports them (its peak RSS, VmHWM) and
moves the runtime by the difference to the reference taken beside the constant. One probe per set of
modules, package versions and boot: a few seconds the first time, a file read after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata

_PROBE = """
import importlib, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')))
"""


def _cache_file() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "model-workbench", "runtime-probe.json")


def _key(modules: tuple[str, ...]) -> str:
    versions = []
    for dist in sorted({m.split(".")[0] for m in modules}):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=?")
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return "|".join([sys.executable, boot, *versions, *modules])


def import_rss_bytes(modules: tuple[str, ...], timeout_s: float = 180) -> int | None:
    """Peak RSS of a fresh Python that imports `modules`, or None where it cannot be measured
    (no /proc, an import that fails, a timeout): the planner then keeps its constant."""
    if not modules or not os.path.exists("/proc/self/status"):
        return None
    path, key = _cache_file(), _key(modules)
    try:
        with open(path, encoding="utf-8") as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), int):
        return known[key]
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # workbench's own modules too
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True,
                              timeout=timeout_s, env=env)
        measured = int(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        measured = None
    if measured is None:
        return None
    known[key] = measured
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(known, f)
        os.replace(tmp, path)
    except OSError:
        pass  # measured all the same; only the next plan measures again
    return measured
