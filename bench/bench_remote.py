"""Remote backend speed: a second workbench called directly against the same server through a
remote entry, in one run.

Starts `webui.py --api-only` serving the sample GGUF on a free loopback port with a key, then
alternates rounds, same prompts, greedy, --tokens each:
  (a) direct: the official `openai` client streaming from that server;
  (b) remote: ModelService with a models/NAME.remote.json entry for it (the worker process,
      its HTTP stream, the pipe back);
  (c) proxy: this workbench's own API (build_api over that ModelService) called with `openai`.
Then 4 requests at once each way. Tokens are what the server reports (usage). Prints JSON with
tokens/s of each and the ratios, and writes bench/results/remote.json.

    .venv/bin/python bench/bench_remote.py [--tokens 128] [--rounds 6]
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
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SAMPLE = "SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "bench-remote-key"
PROMPTS = [
    "Write a long story about a lighthouse keeper and the sea.",
    "Explain in detail how bread is made, step by step.",
    "Describe a walk through a busy city market in the morning.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def messages(prompt: str) -> list[dict]:
    return [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": prompt}]


def start_server(root: str) -> tuple[subprocess.Popen, str]:
    for sub in ("models", "presets", "user_data"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    os.symlink(os.path.join(ROOT, "models", SAMPLE), os.path.join(root, "models", SAMPLE))
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "webui.py"), "--api-only", "--model", SAMPLE,
                             "--api-port", str(port), "--api-key", KEY], cwd=ROOT,
                            stdout=open(os.path.join(root, "server.log"), "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "WORKBENCH_ROOT": root})
    for _ in range(400):
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers={"Authorization": f"Bearer {KEY}"})
            if b'"model_loaded":true' in urllib.request.urlopen(req, timeout=2).read():
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the second workbench did not start; see its server.log")


def openai_stream(client, model: str, prompt: str, tokens: int) -> dict:
    """One streamed chat with an `openai` client: tokens (usage), wall time, first-token time, text."""
    start = time.perf_counter()
    first, n, text = None, 0, []
    stream = client.chat.completions.create(model=model, messages=messages(prompt), max_tokens=tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.usage:
            n = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
            text.append(chunk.choices[0].delta.content)
    wall = time.perf_counter() - start
    return {"tokens": n, "wall_s": wall, "ttft_s": (first or start) - start, "text": "".join(text)}


def service_stream(service, prompt: str, tokens: int) -> dict:
    from workbench.options import GenerationRequest, GenParams

    start = time.perf_counter()
    first, text, stats = None, [], None
    request = GenerationRequest(messages=messages(prompt), params=GenParams(temperature=0, max_tokens=tokens))
    for kind, value in service.generate(request):
        if kind == "token":
            first = first or time.perf_counter()
            text.append(value)
        else:
            stats = value
    wall = time.perf_counter() - start
    return {"tokens": stats.completion_tokens, "wall_s": wall, "ttft_s": (first or start) - start,
            "text": "".join(text)}


def serve_api(service) -> tuple[object, str]:
    import uvicorn

    from workbench.api.server import build_api

    server = uvicorn.Server(uvicorn.Config(build_api(service), host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"


def summary(runs: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    return {"requests": len(runs), "tokens": tokens, "tok_s": round(tokens / wall, 2),
            "median_ttft_ms": round(1000 * statistics.median(r["ttft_s"] for r in runs), 1),
            "walls_s": [round(r["wall_s"], 3) for r in runs]}


def concurrent(fn, n: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(fn, [PROMPTS[i % len(PROMPTS)] for i in range(n)]))
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in runs)
    return {"requests": n, "tokens": tokens, "aggregate_tok_s": round(tokens / wall, 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()

    from workbench.backends.remote_backend import save_entry
    from workbench.options import LoadOptions
    from workbench.paths import Paths
    from workbench.services.model_service import ModelService

    tmp = tempfile.mkdtemp(prefix="bench-remote-")
    proc, base = start_server(os.path.join(tmp, "server"))
    local = os.path.join(tmp, "local")
    for sub in ("models", "presets", "user_data"):
        os.makedirs(os.path.join(local, sub))
    service = ModelService(Paths(local))
    try:
        service.load(save_entry(os.path.join(local, "models"), "second", base, SAMPLE, api_key=KEY),
                     options=LoadOptions(parallel=4))
        api, proxy = serve_api(service)
        from openai import OpenAI

        # One client each way, as the remote entry keeps its connections (max_retries 0: a failure shows).
        direct_client = OpenAI(base_url=base, api_key=KEY, max_retries=0)
        proxy_client = OpenAI(base_url=proxy, api_key="unused", max_retries=0)
        ways = {
            "direct": lambda prompt: openai_stream(direct_client, SAMPLE, prompt, args.tokens),
            "remote": lambda prompt: service_stream(service, prompt, args.tokens),
            "proxy": lambda prompt: openai_stream(proxy_client, "second.remote.json", prompt, args.tokens),
        }
        for fn in ways.values():  # warm-up: imports, connections, the server's prompt cache
            fn(PROMPTS[0])
        runs = {name: [] for name in ways}
        same = True
        for r in range(args.rounds):
            prompt = PROMPTS[r % len(PROMPTS)]
            order = list(ways) if r % 2 == 0 else list(reversed(ways))
            texts = {}
            for name in order:
                run = ways[name](prompt)
                print(f"round {r} {name}: {run['tokens']} tokens in {run['wall_s']:.2f} s", file=sys.stderr, flush=True)
                runs[name].append(run)
                texts[name] = run["text"]
            same = same and len(set(texts.values())) == 1
        result = {name: summary(rs) for name, rs in runs.items()}
        result["ratio_remote_vs_direct"] = round(result["remote"]["tok_s"] / result["direct"]["tok_s"], 3)
        result["ratio_proxy_vs_direct"] = round(result["proxy"]["tok_s"] / result["direct"]["tok_s"], 3)
        result["same_text_every_way"] = same
        result["concurrent_4"] = {}
        for name, fn in ways.items():
            result["concurrent_4"][name] = concurrent(fn, 4)
            print(f"4 at once {name}: {result['concurrent_4'][name]}", file=sys.stderr, flush=True)
        result["settings"] = {"tokens": args.tokens, "rounds": args.rounds, "model": SAMPLE, "greedy": True,
                              "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
        api.should_exit = True
    finally:
        service.close()
        proc.terminate()
        proc.wait(15)
    print(json.dumps(result, indent=2))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "remote.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
