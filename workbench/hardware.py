"""What this machine has: CPU cores, RAM, each NVIDIA GPU's VRAM, free disk for offload.

psutil for CPU and RAM; NVML (nvidia-ml-py) for GPUs, so no torch import is needed; and a
process's own peak RSS (for the worker and training runs).
Works without error on a machine with no GPU or no NVML: `gpus` is then empty.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class RpcDevice:
    """A llama.cpp RPC server another host runs: its address and the memory it reports."""

    endpoint: str                      # host:port
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class Hardware:
    physical_cores: int
    logical_cores: int
    ram_total_bytes: int
    ram_available_bytes: int
    disk_free_bytes: int               # where offloaded weights would go
    gpus: tuple[GPU, ...] = field(default_factory=tuple)
    rpc: tuple[RpcDevice, ...] = field(default_factory=tuple)  # servers a load names (asked at plan time)

    @property
    def vram_total_bytes(self) -> int:
        return sum(g.total_bytes for g in self.gpus)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["gpus"] = [asdict(g) for g in self.gpus]
        d["rpc"] = [asdict(r) for r in self.rpc]
        return d


def detect_gpus() -> tuple[GPU, ...]:
    """NVIDIA GPUs via NVML; empty when there is no driver or no GPU."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no device: a CPU-only machine
        return ()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(GPU(i, name.decode() if isinstance(name, bytes) else str(name), int(mem.total), int(mem.free)))
        return tuple(gpus)
    finally:
        pynvml.nvmlShutdown()


def detect_hardware(offload_dir: str = ".") -> Hardware:
    import psutil

    vm = psutil.virtual_memory()
    probe = offload_dir
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return Hardware(
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count() or 1,
        ram_total_bytes=int(vm.total),
        ram_available_bytes=int(vm.available),
        disk_free_bytes=int(shutil.disk_usage(probe or ".").free),
        gpus=detect_gpus(),
    )


def peak_rss_bytes() -> int:
    """This process's own peak RSS: VmHWM, which starts afresh at exec (ru_maxrss keeps the parent's
    peak across a spawn, so a worker started by a large app would report the app's size)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
