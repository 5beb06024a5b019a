"""Generation speed: the workbench against the raw engine libraries, in one run.

For each backend, the same greedy chat prompt runs
  - raw: the library used directly, at the workbench's settings (same threads, context, dtype);
  - raw_defaults: the library with its own defaults, as a user of it would call it;
  - workbench: ModelService + worker process (the path the UI, API and CLI take).
For GGUF it also drives llama.cpp's own `llama-server` when a binary is given
(--llama-server PATH, built by ../shared/bench/build-llama-server.sh).
Each raw measurement runs in a fresh subprocess so its peak RSS is its own.
Prints JSON (and writes bench/results/generate.json).

    .venv/bin/python bench/bench_generate.py [--tokens 200] [--runs 3] [--backends gguf,transformers,gptq]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Write a long story about a dragon who learns to fly."}]


def decode_rate(n_tokens: int, t_start: float, t_first: float, t_end: float) -> dict:
    return {"tokens": n_tokens, "ttft_s": t_first - t_start, "total_s": t_end - t_start,
            "tokens_per_s": (n_tokens - 1) / (t_end - t_first) if t_end > t_first else 0.0}


# --- raw libraries (each runs inside its own subprocess) ---------------------------------
def raw_llama(path: str, tokens: int, runs: int, defaults: bool) -> dict:
    from llama_cpp import Llama, llama_vocab_is_eog

    from workbench.backends.base import physical_cores
    from workbench.chat_template import render_chat
    from workbench.detect import detect

    t0 = time.perf_counter()
    if defaults:
        llm = Llama(path, n_ctx=4096, verbose=False)
    else:
        llm = Llama(path, n_ctx=4096, n_batch=512, n_threads=physical_cores(), n_threads_batch=physical_cores(),
                    verbose=False)
    load_s = time.perf_counter() - t0
    results = []
    for _ in range(runs + 1):  # the first run warms up
        llm.reset()
        start = time.perf_counter()
        first, n = None, 0
        if defaults:  # what most llama-cpp-python users call: the OpenAI-style streaming chat
            for chunk in llm.create_chat_completion(MESSAGES, temperature=0, max_tokens=tokens, stream=True):
                if chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    n += 1
        else:  # the plain token loop, greedy
            prompt = llm.tokenize(render_chat(MESSAGES, detect(path).chat_template).encode(), add_bos=False,
                                  special=True)
            vocab = llm._model.vocab
            for tok in llm.generate(prompt, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
                if llama_vocab_is_eog(vocab, tok):
                    break
                llm.detokenize([tok])
                first = first or time.perf_counter()
                n += 1
                if n >= tokens:
                    break
        results.append(decode_rate(n, start, first, time.perf_counter()))
    return {"load_s": load_s, "runs": results[1:]}


def raw_torch(path: str, tokens: int, runs: int, defaults: bool, gptq: bool) -> dict:
    import torch
    from transformers import AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    from workbench.backends.base import physical_cores
    from workbench.chat_template import render_chat

    t0 = time.perf_counter()
    if gptq:
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count()))
        if not defaults:
            torch._dynamo.config.disable = True
        from gptqmodel import BACKEND, GPTQModel

        kwargs = {} if defaults else {"backend": BACKEND.TORCH, "dtype": torch.bfloat16, "device": "cpu"}
        qmodel = GPTQModel.load(path, **kwargs)
        model, tokenizer = qmodel.model, qmodel.tokenizer
    else:
        from transformers import AutoModelForCausalLM

        if not defaults:
            torch.set_num_threads(physical_cores())
        kwargs = {} if defaults else {"dtype": torch.bfloat16}
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    load_s = time.perf_counter() - t0
    text = render_chat(MESSAGES, tokenizer.chat_template)
    input_ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    results = []
    for _ in range(runs + 1):
        clock = Clock()
        start = time.perf_counter()
        out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=tokens,
                             do_sample=False, streamer=clock, pad_token_id=tokenizer.eos_token_id)
        end = time.perf_counter()
        n = out.shape[1] - input_ids.shape[1]
        # put() is called once with the prompt, then once per new token
        results.append(decode_rate(n, start, clock.times[1] if len(clock.times) > 1 else end, end))
    return {"load_s": load_s, "runs": results[1:]}


def raw_child(args) -> None:
    fn = {"gguf": lambda d: raw_llama(args.path, args.tokens, args.runs, d),
          "transformers": lambda d: raw_torch(args.path, args.tokens, args.runs, d, gptq=False),
          "gptq": lambda d: raw_torch(args.path, args.tokens, args.runs, d, gptq=True)}[args.raw]
    from workbench.engine_logging import quiet_engines

    quiet_engines()
    result = fn(args.defaults)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_raw(kind: str, path: str, tokens: int, runs: int, defaults: bool) -> dict:
    cmd = [sys.executable, __file__, "--raw", kind, "--path", path, "--tokens", str(tokens), "--runs", str(runs)]
    if defaults:
        cmd.append("--defaults")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"raw {kind} failed:\n{out.stderr[-2000:]}")


# --- the workbench ---------------------------------------------------------------------
def run_workbench(path: str, tokens: int, runs: int, options=None) -> dict:
    from workbench.options import GenerationRequest, GenParams, LoadOptions
    from workbench.paths import Paths
    from workbench.services.model_service import ModelService

    service = ModelService(Paths(ROOT))
    try:
        info = service.load(path, options=options or LoadOptions())
        results = []
        for _ in range(runs + 1):
            r = service.complete(GenerationRequest(messages=MESSAGES, params=GenParams(temperature=0, max_tokens=tokens)))
            results.append({"tokens": r["completion_tokens"], "ttft_s": r["ttft_s"], "total_s": r["total_s"],
                            "tokens_per_s": r["tokens_per_s"], "cached_tokens": r["cached_tokens"]})
            # A different prompt in between, so the next run computes its prompt again like the raw runs do.
            service.complete(GenerationRequest(prompt="Hello", params=GenParams(temperature=0, max_tokens=1)))
        memory = service.worker_memory()
    finally:
        service.close()
    return {"load_s": info["load_s"], "runs": results[1:], "peak_rss_mb": memory["peak_rss_bytes"] / 2**20}


def run_llama_server(binary: str, path: str, tokens: int, runs: int) -> dict:
    import socket
    import urllib.request

    from workbench.backends.base import physical_cores

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LD_LIBRARY_PATH": os.path.dirname(binary)}
    proc = subprocess.Popen([binary, "-m", path, "--port", str(port), "--host", "127.0.0.1", "-c", "4096",
                             "-t", str(physical_cores()), "-np", "1", "--no-webui"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        results = []
        for _ in range(runs + 1):
            body = json.dumps({"messages": MESSAGES, "max_tokens": tokens, "temperature": 0, "stream": True,
                               "cache_prompt": False}).encode()
            req = urllib.request.Request(url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
            start = time.perf_counter()
            first, n = None, 0
            with urllib.request.urlopen(req) as resp:
                for raw in resp:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    if delta.get("content"):
                        first = first or time.perf_counter()
                        n += 1
            results.append(decode_rate(n, start, first, time.perf_counter()))
        return {"runs": results[1:]}
    finally:
        proc.terminate()
        proc.wait(10)


def median(result: dict, key: str) -> float:
    return statistics.median(r[key] for r in result["runs"])


def summarize(result: dict) -> dict:
    out = {k: v for k, v in result.items() if k != "runs"}
    out["tokens_per_s"] = median(result, "tokens_per_s")
    out["ttft_s"] = median(result, "ttft_s")
    out["tokens"] = result["runs"][0]["tokens"]
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--backends", default="gguf,transformers,gptq")
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    p.add_argument("--raw"), p.add_argument("--path"), p.add_argument("--defaults", action="store_true")
    args = p.parse_args()
    if args.raw:
        raw_child(args)
        return 0
    sys.path.insert(0, ROOT)
    from tests.conftest import SAMPLE_GGUF, _derive

    paths = {"gguf": SAMPLE_GGUF}
    report = {"prompt": MESSAGES[-1]["content"], "max_tokens": args.tokens, "runs": args.runs, "backends": {}}
    for kind in args.backends.split(","):
        path = paths.get(kind) or _derive(kind)
        entry = {"path": path}
        entry["raw"] = summarize(run_raw(kind, path, args.tokens, args.runs, defaults=False))
        entry["raw_defaults"] = summarize(run_raw(kind, path, args.tokens, args.runs, defaults=True))
        entry["workbench"] = summarize(run_workbench(path, args.tokens, args.runs))
        w, r, d = entry["workbench"], entry["raw"], entry["raw_defaults"]
        entry["ratio_tokens_per_s_vs_raw"] = w["tokens_per_s"] / r["tokens_per_s"]
        entry["ratio_tokens_per_s_vs_raw_defaults"] = w["tokens_per_s"] / d["tokens_per_s"]
        entry["added_ttft_ms_vs_raw"] = (w["ttft_s"] - r["ttft_s"]) * 1000
        if kind == "gguf" and args.llama_server and os.path.exists(args.llama_server):
            entry["llama_server"] = summarize(run_llama_server(args.llama_server, path, args.tokens, args.runs))
            entry["ratio_tokens_per_s_vs_llama_server"] = w["tokens_per_s"] / entry["llama_server"]["tokens_per_s"]
        report["backends"][kind] = entry
        print(json.dumps({kind: entry}, indent=2), file=sys.stderr)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "generate.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
