"""Tokens per second of the sample GGUF split across two local llama.cpp RPC servers against the same
model loaded locally, alternated in one run; JSON out.

Usage: python bench/bench_rpc.py [--model PATH] [--rounds 3] [--tokens 128] [--out FILE]

Both RPC servers run on this machine (127.0.0.1), so this measures the protocol's own cost (every
step's activations go through TCP), not what a second machine's memory or cores would add.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from workbench.options import GenerationRequest, GenParams, LoadOptions  # noqa: E402
from workbench.paths import Paths  # noqa: E402
from workbench.services.model_service import ModelService  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_servers(n: int, threads: int) -> tuple[list[subprocess.Popen], str]:
    ports = [_free_port() for _ in range(n)]
    procs = [subprocess.Popen([sys.executable, "-m", "workbench", "rpc-server", "--port", str(p), "--threads",
                               str(threads)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for p in ports]
    for port in ports:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return procs, ",".join(f"127.0.0.1:{p}" for p in ports)


def _run(service: ModelService, tokens: int) -> dict:
    r = service.complete(GenerationRequest(messages=PROMPT, params=GenParams(temperature=0, max_tokens=tokens)))
    return {"tok_s": r.stats.tokens_per_s, "ttft_s": r.stats.ttft_s, "tokens": r.stats.completion_tokens,
            "text": r.text}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--out")
    args = p.parse_args()
    procs, endpoints = _start_servers(2, threads=1)
    rows: dict[str, list[dict]] = {"local": [], "rpc_2_servers": []}
    setups = {"local": LoadOptions(n_ctx=2048, parallel=1),
              "rpc_2_servers": LoadOptions(n_ctx=2048, parallel=1, rpc_servers=endpoints)}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for name, options in setups.items():  # alternated: each round loads each setup afresh
                    service = ModelService(Paths(tmp))
                    try:
                        service.load(args.model, options=options)
                        _run(service, 8)  # warm-up
                        rows[name].append(_run(service, args.tokens))
                    finally:
                        service.close()
    finally:
        for proc in procs:
            proc.kill()
    result = {name: {"tok_s_median": round(statistics.median(r["tok_s"] for r in runs), 1),
                     "ttft_s_median": round(statistics.median(r["ttft_s"] for r in runs), 3),
                     "tok_s_rounds": [round(r["tok_s"], 1) for r in runs]} for name, runs in rows.items()}
    result["rpc_vs_local"] = round(result["rpc_2_servers"]["tok_s_median"] / result["local"]["tok_s_median"], 3)
    result["same_greedy_text"] = rows["local"][0]["text"] == rows["rpc_2_servers"][0]["text"]
    result["setup"] = {"model": os.path.basename(args.model), "tokens": args.tokens, "rounds": args.rounds,
                       "servers": "2 x python -m workbench rpc-server --threads 1 on 127.0.0.1",
                       "cpu_count": os.cpu_count()}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
