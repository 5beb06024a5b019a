"""The devices llama.cpp's ggml sees, through its C API: local GPUs, and RPC servers (another host's
CPU or GPU reached over TCP with llama.cpp's RPC backend).

Only worker and helper processes call into here: an RPC server that is down or speaks another
protocol version makes ggml abort the whole process, so the app asks through `rpc.py`, which runs
these calls in a short-lived subprocess after a plain TCP check.
"""

from __future__ import annotations

import ctypes
import os
from functools import lru_cache

_CPU, _GPU = 0, 1  # enum ggml_backend_dev_type


@lru_cache(maxsize=1)
def _libs() -> tuple[ctypes.CDLL, ctypes.CDLL]:
    import llama_cpp  # loads the package's libggml and libggml-base first

    folder = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")

    def same_copy_as_libllama(name: str) -> ctypes.CDLL:
        # A wheel stores libggml.so and libggml.so.0 as two files, and the loader keeps two copies with
        # two device registries: open the one libllama was linked against (its soname), or RPC servers
        # registered here would be invisible to llama.cpp.
        for candidate in (f"{name}.0", name):
            if os.path.exists(os.path.join(folder, candidate)):
                return ctypes.CDLL(os.path.join(folder, candidate))
        raise OSError(f"{name} is not in {folder}")

    ggml = same_copy_as_libllama("libggml.so")
    base = same_copy_as_libllama("libggml-base.so")
    vp, sz = ctypes.c_void_p, ctypes.c_size_t
    for lib, name, args, res in (
        (ggml, "ggml_backend_load_all", [], None),
        (ggml, "ggml_backend_dev_by_type", [ctypes.c_int], vp),
        (ggml, "ggml_backend_reg_by_name", [ctypes.c_char_p], vp),
        (ggml, "ggml_backend_register", [vp], None),
        (ggml, "ggml_backend_dev_count", [], sz),
        (ggml, "ggml_backend_dev_get", [sz], vp),
        (base, "ggml_backend_dev_type", [vp], ctypes.c_int),
        (base, "ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
        (base, "ggml_backend_reg_dev_count", [vp], sz),
        (base, "ggml_backend_reg_dev_get", [vp, sz], vp),
        (base, "ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
    ):
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return ggml, base


def rpc_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_rpc())


def local_gpu_count() -> int:
    """GPUs of this llama.cpp build's GPU backend (CUDA, ...) present here; call before adding RPC
    servers, which ggml also lists as GPUs."""
    ggml, base = _libs()
    ggml.ggml_backend_load_all()
    return sum(base.ggml_backend_dev_type(ggml.ggml_backend_dev_get(i)) == _GPU
               for i in range(ggml.ggml_backend_dev_count()))


def _rpc_function(name: str, restype, argtypes):
    ggml, base = _libs()
    ggml.ggml_backend_load_all()
    reg = ggml.ggml_backend_reg_by_name(b"RPC")
    if not reg:
        raise RuntimeError("this llama.cpp build has no RPC backend")
    address = base.ggml_backend_reg_get_proc_address(reg, name.encode())
    if not address:
        raise RuntimeError(f"llama.cpp's RPC backend has no {name}")
    return ctypes.CFUNCTYPE(restype, *argtypes)(address)


def add_rpc_servers(endpoints: list[str]) -> list[tuple[int, int]]:
    """Registers each `host:port` as devices for the next model load (in this process) and returns
    each server's (free, total) memory in bytes. Aborts the process if one is down: check first."""
    ggml, base = _libs()
    add = _rpc_function("ggml_backend_rpc_add_server", ctypes.c_void_p, [ctypes.c_char_p])
    memory = []
    for endpoint in endpoints:
        reg = add(endpoint.encode())
        if not reg:
            raise RuntimeError(f"the RPC server at {endpoint} offers no device")
        ggml.ggml_backend_register(reg)
        free = total = 0
        for i in range(base.ggml_backend_reg_dev_count(reg)):
            f, t = ctypes.c_size_t(), ctypes.c_size_t()
            base.ggml_backend_dev_memory(base.ggml_backend_reg_dev_get(reg, i), ctypes.byref(f), ctypes.byref(t))
            free, total = free + f.value, total + t.value
        memory.append((free, total))
    return memory


def serve_rpc(endpoint: str, n_threads: int, cache_dir: str | None) -> None:
    """Runs llama.cpp's RPC server on `endpoint` with this host's GPUs, or its CPU; never returns."""
    ggml, _ = _libs()
    ggml.ggml_backend_load_all()
    device = ggml.ggml_backend_dev_by_type(_GPU) or ggml.ggml_backend_dev_by_type(_CPU)
    start = _rpc_function("ggml_backend_rpc_start_server", None,
                          [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                           ctypes.POINTER(ctypes.c_void_p)])
    devices = (ctypes.c_void_p * 1)(device)
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, n_threads, 1, devices)
