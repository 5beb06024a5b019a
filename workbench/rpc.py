"""A GGUF split across hosts with llama.cpp's RPC backend: the `host:port` list a load names, the
servers' free memory for the memory plan, and `python -m workbench rpc-server`.

The RPC protocol has no authentication and had a remote-code-execution hole (CVE-2026-34159): a
server binds 127.0.0.1 unless told otherwise with an explicit flag, and the README shows SSH tunnels
for reaching another host. Asking a server for its memory runs in a subprocess
(`python -m workbench.rpc memory host:port`) after a plain TCP check, because ggml aborts the process
that talks to a server that is down or speaks another protocol version.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys

from .errors import WorkbenchError
from .hardware import RpcDevice

DEFAULT_PORT = 50052


class RpcError(WorkbenchError):
    """An RPC server list that is malformed, or a server that cannot be reached or used."""


def parse_endpoints(text: str) -> list[str]:
    """`"host:port,host:port"` as a list, each checked; an empty text is no servers."""
    endpoints = []
    for item in (p.strip() for p in (text or "").split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RpcError(f"RPC server {item!r} is not host:port (for example 192.168.1.20:{DEFAULT_PORT}).")
        if any(c.isspace() or c in "/?#@" for c in host):
            raise RpcError(f"RPC server {item!r} has an invalid host name.")
        endpoints.append(f"{host}:{int(port)}")
    if len(endpoints) > 16:
        raise RpcError("llama.cpp takes at most 16 RPC servers.")
    return endpoints


def check_reachable(endpoint: str, timeout_s: float = 3.0) -> None:
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as e:
        raise RpcError(f"Cannot reach the RPC server at {endpoint} ({e.strerror or e}); start one there with "
                       f"`python -m workbench rpc-server --port {port}`, or check the SSH tunnel.") from e


def query_devices(endpoints: list[str], timeout_s: float = 30.0) -> tuple[RpcDevice, ...]:
    """Each server's free and total memory, asked in a subprocess after a TCP check."""
    for endpoint in endpoints:
        check_reachable(endpoint)
    if not endpoints:
        return ()
    try:
        done = subprocess.run([sys.executable, "-m", "workbench.rpc", "memory", *endpoints],
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as e:
        raise RpcError(f"The RPC servers {', '.join(endpoints)} did not answer within {timeout_s:.0f} s.") from e
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RpcError(f"The RPC servers {', '.join(endpoints)} could not be used ({last[:200]}); they must run "
                       "the same llama.cpp version as this workbench (`python -m workbench rpc-server`).")
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    return tuple(RpcDevice(e, free, total) for e, (free, total) in zip(endpoints, sizes))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(host: str, port: int, threads: int, allow_remote: bool, cache_dir: str | None = None) -> None:
    """Runs an RPC server (blocks). Any address but loopback needs `allow_remote`, and warns."""
    from .backends import ggml_devices

    if not ggml_devices.rpc_supported():
        raise RpcError("This llama-cpp-python was built without RPC; run ./start.sh (it builds with -DGGML_RPC=on).")
    if not is_loopback(host):
        if not allow_remote:
            raise RpcError(f"Refusing to listen on {host}: llama.cpp's RPC protocol has no authentication and "
                           "anyone who reaches the port can run work on this machine. Use an SSH tunnel to "
                           "127.0.0.1, or pass --allow-remote on a private network you trust.")
        print(f"WARNING: the RPC server on {host}:{port} has no authentication (CVE-2026-34159 was a remote "
              "code execution through it); keep the port on a private network or firewall it.",
              file=sys.stderr, flush=True)
    endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    print(f"RPC server listening on {endpoint} ({threads} threads); stop it with Ctrl+C.", flush=True)
    ggml_devices.serve_rpc(endpoint, threads, cache_dir)


def _main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "memory":
        from .backends import ggml_devices

        print(json.dumps(ggml_devices.add_rpc_servers(argv[1:])), flush=True)
        return 0
    print("usage: python -m workbench.rpc memory HOST:PORT...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
