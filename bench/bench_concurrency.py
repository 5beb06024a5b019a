"""Many clients at once: the workbench API against llama.cpp's own llama-server, in one run.

For 1, 4 and 8 concurrent streamed chat completions of up to 128 tokens (greedy, each
client its own prompt), per server: aggregate tokens/s (all clients' tokens over the
wall time) and time to first token (median, max), in alternated rounds. The workbench
runs with `--parallel N`, llama-server with `-np N` and the same context per slot. Also:
the Transformers form through the workbench (1 and 4 streams), and speculative decoding
(prompt lookup) on a repetitive prompt, with and without, checking the greedy text is
identical. Prints JSON and writes bench/results/concurrency.json.

    .venv/bin/python bench/bench_concurrency.py [--llama-server PATH] [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_api import KEY, free_port, stream_chat  # noqa: E402

TOPICS = ["a dragon who learns to fly", "a lighthouse keeper and a storm", "a robot who plants a garden",
          "two friends crossing a desert", "a cat who runs a bakery", "a ship lost in the ice",
          "a village that forgets its name", "a clockmaker's last clock"]
CODE = ("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n    return a * b\n\n"
        "def div(a, b):\n    return a / b\n")
CTX = 2048


def prompt(i: int) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]


def wait_health(base: str, proc: subprocess.Popen, headers: dict) -> None:
    for _ in range(900):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(urllib.request.Request(base + "/health", headers=headers), timeout=1)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("the server did not start")


class Server:
    def __init__(self, kind: str, model: str, parallel: int, llama_server: str | None = None, draft: int = 0):
        port = free_port()
        self.base, self.kind = f"http://127.0.0.1:{port}", kind
        if kind == "llama-server":
            from workbench.backends.base import physical_cores

            cmd = [llama_server, "-m", model, "--port", str(port), "--host", "127.0.0.1", "-c", str(CTX * parallel),
                   "-np", str(parallel), "-t", str(physical_cores()), "--no-webui"]
            env = {**os.environ, "LD_LIBRARY_PATH": os.path.dirname(llama_server)}
            self.key = None
        else:
            cmd = [sys.executable, "webui.py", "--api-only", "--api-port", str(port), "--api-key", KEY, "--model",
                   model, "--n-ctx", str(CTX), "--parallel", str(parallel), "--draft-tokens", str(draft)]
            env, self.key = os.environ, KEY
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_health(self.base, self.proc, {"Authorization": f"Bearer {KEY}"} if self.key else {})

    def clients(self, n: int, tokens: int) -> dict:
        stream_chat(self.base, prompt(99), 2, self.key)  # warm
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: stream_chat(self.base, prompt(i), tokens, self.key), range(n)))
        wall = time.perf_counter() - start
        ttfts = [r["ttft_s"] for r in results]
        return {"aggregate_tokens_per_s": sum(r["tokens"] for r in results) / wall,
                "tokens": sum(r["tokens"] for r in results), "ttft_median_s": statistics.median(ttfts),
                "ttft_max_s": max(ttfts), "texts": [r["text"] for r in results]}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def median_of(rounds: list[dict]) -> dict:
    keys = ("aggregate_tokens_per_s", "ttft_median_s", "ttft_max_s")
    return {k: round(statistics.median(r[k] for r in rounds), 3) for k in keys} | {"rounds": len(rounds)}


def concurrency(model: str, kinds: list[str], counts: list[int], tokens: int, rounds: int, binary) -> dict:
    out = {}
    for n in counts:
        runs: dict[str, list] = {k: [] for k in kinds}
        servers = {k: Server(k, model, n, binary) for k in kinds}
        try:
            for _ in range(rounds):
                for k in kinds:  # alternated
                    runs[k].append(servers[k].clients(n, tokens))
        finally:
            for s in servers.values():
                s.close()
        out[str(n)] = {k: median_of(v) for k, v in runs.items()}
        if "workbench" in runs:
            out[str(n)]["workbench"]["same_text_every_round"] = all(
                r["texts"] == runs["workbench"][0]["texts"] for r in runs["workbench"])
    return out


def speculative(model: str, rounds: int) -> dict:
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Repeat this code exactly, then once more:\n\n{CODE}"}]
    result: dict[str, list] = {"off": [], "draft 8": []}
    texts = {}
    servers = {"off": Server("workbench", model, 1), "draft 8": Server("workbench", model, 1, draft=8)}
    try:
        for _ in range(rounds):
            for name, server in servers.items():
                r = stream_chat(server.base, messages, 128, KEY)
                result[name].append(r["tokens_per_s"])
                texts.setdefault(name, r["text"])
    finally:
        for s in servers.values():
            s.close()
    off, on = statistics.median(result["off"]), statistics.median(result["draft 8"])
    return {"tokens_per_s_off": round(off, 1), "tokens_per_s_draft": round(on, 1), "speedup": round(on / off, 3),
            "identical_greedy_text": texts["off"] == texts["draft 8"], "tokens": len(texts["off"])}


def requantized(src: str, ftype: int, out: str) -> str:
    """A copy of the GGUF `src` in another quantization (llama.cpp's own quantizer), made once."""
    import ctypes

    import llama_cpp

    if not os.path.exists(out):
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = ftype, True, 2
        if llama_cpp.llama_model_quantize(src.encode(), (out + ".tmp").encode(), ctypes.byref(params)) != 0:
            raise RuntimeError("quantizing failed")
        os.replace(out + ".tmp", out)
    return out


def gguf_report(model: str, kinds: list[str], tokens: int, rounds: int, binary) -> dict:
    report = concurrency(model, kinds, [1, 4, 8], tokens, rounds, binary)
    for n in ("4", "8"):
        for k in kinds:
            report[n][k]["vs_1_stream"] = round(report[n][k]["aggregate_tokens_per_s"]
                                                / report["1"][k]["aggregate_tokens_per_s"], 2)
    report["speculative"] = speculative(model, rounds)
    return report


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--formats", default="q4_1,q4_0", help="GGUF rows to run: q4_1 (the sample), q4_0 (requantized)")
    args = p.parse_args()
    formats = set(args.formats.split(","))
    from tests.conftest import SAMPLE_GGUF, _derive

    kinds = ["workbench"] + (["llama-server"] if args.llama_server else [])
    patches = os.path.join(sys.prefix, ".llama-cpp-patches")
    report = {"workbench_llama_cpp_patches": [line.split("./")[-1] for line in open(patches).read().splitlines()]
              if os.path.exists(patches) else [],
              "llama_server": "unpatched llama.cpp from the same source package" if args.llama_server else None}
    if "q4_1" in formats:
        report["gguf_q4_1 (the sample)"] = gguf_report(SAMPLE_GGUF, kinds, args.tokens, args.rounds, args.llama_server)
    # llama.cpp itself has no batched CPU kernel for Q4_1 (llama-server computes a batch of two as two
    # single steps); the workbench compiles one (scripts/llama-cpp-patches). Q4_0 has one in both; the
    # same model requantized shows batching and drafting where both engines have the kernel.
    if "q4_0" in formats:
        q4_0 = requantized(SAMPLE_GGUF, 2, os.path.join(os.path.dirname(_derive("transformers")), "sample-q4_0.gguf"))
        report["gguf_q4_0 (requantized)"] = gguf_report(q4_0, kinds, args.tokens, args.rounds, args.llama_server)
    if not args.skip_transformers:
        tf = concurrency(_derive("transformers"), ["workbench"], [1, 4], args.tokens, max(1, args.rounds - 1), None)
        tf["4"]["workbench"]["vs_1_stream"] = round(tf["4"]["workbench"]["aggregate_tokens_per_s"]
                                                    / tf["1"]["workbench"]["aggregate_tokens_per_s"], 2)
        report["transformers"] = tf
    text = json.dumps(report, indent=2)
    print(text)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", f"concurrency-{'-'.join(sorted(formats))}.json"), "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
