"""API speed: the workbench's OpenAI-compatible API against the raw library, in one run.

Measures, on the sample GGUF with greedy settings:
  - streaming tokens/s and time to first token through the API (1 client), against
    llama-cpp-python's own token loop in this process, in interleaved rounds;
  - 4 concurrent clients: aggregate tokens/s, and that every answer is complete;
  - time to first token over a 20-turn conversation (the prompt cache keeps it flat);
  - the same streaming request against llama.cpp's `llama-server` when --llama-server is given.
Prints JSON and writes bench/results/api.json.

    .venv/bin/python bench/bench_api.py [--tokens 128] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_generate import MESSAGES, LlamaServer, RawLlama  # noqa: E402

KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_chat(base: str, messages: list[dict], tokens: int, key: str | None = KEY) -> dict:
    """One streamed chat completion; tokens counted from the usage the server reports."""
    body = json.dumps({"model": "x", "messages": messages, "max_tokens": tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + "/v1/chat/completions", body, headers)
    start = time.perf_counter()
    first, n, text, last = None, 0, "", None
    with urllib.request.urlopen(req) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            content = choices[0]["delta"].get("content") if choices else None
            if content:
                first = first or time.perf_counter()
                last = time.perf_counter()
                text += content
    return {"tokens": n, "ttft_s": first - start, "tokens_per_s": (n - 1) / (last - first) if last > first else 0,
            "text": text}


def start_api(model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "webui.py", "--api-only", "--api-port", str(port), "--api-key", KEY,
                             "--model", model, "--n-ctx", "4096"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(urllib.request.Request(base + "/health", headers={"Authorization": f"Bearer {KEY}"}))
            return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


def forget_prompt(base: str) -> None:
    """Send an unrelated prompt, so the next request finds nothing of its own in the prompt cache."""
    body = json.dumps({"model": "x", "prompt": "Hello", "max_tokens": 1}).encode()
    urllib.request.urlopen(urllib.request.Request(base + "/v1/completions", body, {
        "Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})).read()


def conversation_ttft(base: str, turns: int = 20) -> list[float]:
    """TTFT of each turn of a new conversation (each reply kept short); turn 1 starts cold."""
    forget_prompt(base)
    messages = [MESSAGES[0]]
    ttfts = []
    for i in range(turns):
        messages.append({"role": "user", "content": f"Tell me one fact about the number {i + 1}."})
        r = stream_chat(base, messages, 24)
        ttfts.append(r["ttft_s"])
        messages.append({"role": "assistant", "content": r["text"]})
    return ttfts


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    args = p.parse_args()
    from tests.conftest import SAMPLE_GGUF, SAMPLE_NAME

    report: dict = {"model": SAMPLE_NAME, "max_tokens": args.tokens}
    raw = RawLlama(SAMPLE_GGUF, args.tokens, defaults=False)
    proc, base = start_api(SAMPLE_NAME)
    try:
        stream_chat(base, MESSAGES, 8)  # warm up
        raw_runs, api_runs = [], []
        for round_no in range(args.runs + 1):  # interleaved, so machine drift hits both alike
            time.sleep(0.5)
            r = raw.run()
            forget_prompt(base)  # like the raw run, compute the whole prompt
            time.sleep(0.5)
            a = stream_chat(base, MESSAGES, args.tokens)
            if round_no:
                raw_runs.append(r)
                api_runs.append(a)
        report["raw"] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in raw_runs),
                         "ttft_s": statistics.median(r["ttft_s"] for r in raw_runs)}
        report["api_1_client"] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in api_runs),
                                  "ttft_s": statistics.median(r["ttft_s"] for r in api_runs)}
        with ThreadPoolExecutor(4) as pool:
            started = time.perf_counter()
            four = list(pool.map(lambda _: stream_chat(base, MESSAGES, args.tokens), range(4)))
            wall = time.perf_counter() - started
        report["api_4_clients"] = {
            "aggregate_tokens_per_s": sum(r["tokens"] for r in four) / wall,
            "per_stream_tokens_per_s": statistics.median(r["tokens_per_s"] for r in four),
            "ttft_s": sorted(r["ttft_s"] for r in four), "all_complete": all(r["tokens"] > 0 for r in four),
            "note": "requests queue per model: one generation at a time, so later clients wait for earlier ones"}
        conversations = [conversation_ttft(base) for _ in range(3)]
        ttfts = [statistics.median(turn) for turn in zip(*conversations)]  # per turn, over 3 conversations
        report["conversation_ttft_s"] = {"turn_1": ttfts[0], "turn_20": ttfts[-1], "median_per_turn": ttfts,
                                         "ratio_turn20_turn1": ttfts[-1] / ttfts[0]}
    finally:
        proc.terminate()
        proc.wait(15)
    report["ratio_tokens_per_s_api_vs_raw"] = report["api_1_client"]["tokens_per_s"] / report["raw"]["tokens_per_s"]
    report["added_ttft_ms_api_vs_raw"] = (report["api_1_client"]["ttft_s"] - report["raw"]["ttft_s"]) * 1000
    if args.llama_server and os.path.exists(args.llama_server):
        server = LlamaServer(args.llama_server, SAMPLE_GGUF, args.tokens)
        try:
            server.run()  # warm up
            runs = [server.run() for _ in range(args.runs)]
        finally:
            server.close()
        report["llama_server"] = {"tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
                                  "ttft_s": statistics.median(r["ttft_s"] for r in runs)}
        report["ratio_tokens_per_s_api_vs_llama_server"] = (report["api_1_client"]["tokens_per_s"]
                                                           / report["llama_server"]["tokens_per_s"])
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "api.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
