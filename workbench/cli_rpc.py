"""`python -m workbench rpc-server`: lend this machine's memory (CPU or GPU) to a workbench on another
host through llama.cpp's RPC backend (see rpc.py for the safety rules)."""

from __future__ import annotations

import argparse
import os

from .rpc import DEFAULT_PORT, serve


def cmd_rpc_server(args, paths) -> int:
    threads = args.threads or max(1, (os.cpu_count() or 2) // 2)
    serve(args.host, args.port, threads, args.allow_remote, args.cache_dir)
    return 0


def add_rpc_command(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("rpc-server", help="serve this machine's memory to another workbench (llama.cpp RPC)",
                       description="Runs llama.cpp's RPC server so a workbench elsewhere can put layers of a GGUF "
                                   "here (Model tab: RPC servers). The protocol has no authentication: it listens "
                                   "on 127.0.0.1 unless --host and --allow-remote say otherwise; reach it from "
                                   "another host through an SSH tunnel (README: Beyond one machine).")
    r.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    r.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})")
    r.add_argument("--threads", type=int, help="CPU threads (default: half the logical cores)")
    r.add_argument("--cache-dir", help="keep received tensors in this folder, so a reload is faster")
    r.add_argument("--allow-remote", action="store_true",
                   help="allow an address other than loopback (unauthenticated: private networks only)")
    r.set_defaults(func=cmd_rpc_server)
