"""Generation speed: the workbench against the raw engine libraries, in one run.

For each backend, the same greedy chat prompt runs through
  - raw: the library used directly, at the workbench's settings (same threads, context, dtype);
  - raw_defaults: the library with its own defaults, as a user of it would call it;
  - workbench: ModelService + worker process (the path the UI, API and CLI take);
  - llama_server (GGUF only, with --llama-server PATH): llama.cpp's own server, streaming.
All contenders are loaded at once and run in interleaved rounds, in a shuffled order with a
pause between them, so the drift of a shared machine hits each of them alike; the first
round warms up and is dropped; medians are reported. Peak RSS of the raw library is measured in a
separate subprocess so it is its own. Prints JSON (and writes bench/results/generate.json).

    .venv/bin/python bench/bench_generate.py [--tokens 200] [--runs 5] [--backends gguf,transformers,gptq]
"""

from __future__ import annotations

import argparse
import json
import os
import random
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


# --- raw libraries -------------------------------------------------------------------------
class RawLlama:
    def __init__(self, path: str, tokens: int, defaults: bool):
        from llama_cpp import Llama

        from workbench.backends.base import physical_cores
        from workbench.chat_template import render_chat
        from workbench.detect import detect

        self.tokens, self.defaults = tokens, defaults
        t0 = time.perf_counter()
        if defaults:
            self.llm = Llama(path, n_ctx=4096, verbose=False)
        else:
            cores = physical_cores()  # the workbench's defaults: physical cores, flash attention
            self.llm = Llama(path, n_ctx=4096, n_batch=512, n_threads=cores, n_threads_batch=cores, flash_attn=True,
                             verbose=False)
        self.load_s = time.perf_counter() - t0
        self.prompt = self.llm.tokenize(render_chat(MESSAGES, detect(path).chat_template).encode(), add_bos=False,
                                        special=True)

    def run(self) -> dict:
        from llama_cpp import llama_vocab_is_eog

        llm = self.llm
        llm.reset()
        start = time.perf_counter()
        first, n = None, 0
        if self.defaults:  # what most llama-cpp-python users call: the OpenAI-style streaming chat
            for chunk in llm.create_chat_completion(MESSAGES, temperature=0, max_tokens=self.tokens, stream=True):
                if chunk["choices"][0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    n += 1
        else:  # the plain token loop, greedy
            vocab = llm._model.vocab
            for tok in llm.generate(self.prompt, temp=0, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.0):
                if llama_vocab_is_eog(vocab, tok):
                    break
                llm.detokenize([tok])
                first = first or time.perf_counter()
                n += 1
                if n >= self.tokens:
                    break
        return decode_rate(n, start, first, time.perf_counter())


class RawTorch:
    def __init__(self, path: str, tokens: int, defaults: bool, gptq: bool):
        import torch
        from transformers import AutoTokenizer

        from workbench.backends.base import physical_cores
        from workbench.chat_template import render_chat

        self.tokens = tokens
        t0 = time.perf_counter()
        if gptq:
            os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count()))
            if not defaults:
                torch._dynamo.config.disable = True
            from gptqmodel import BACKEND, GPTQModel

            kwargs = {} if defaults else {"backend": BACKEND.TORCH, "dtype": torch.bfloat16, "device": "cpu"}
            qmodel = GPTQModel.load(path, **kwargs)
            self.model, tokenizer = qmodel.model, qmodel.tokenizer
        else:
            from transformers import AutoModelForCausalLM

            if not defaults:
                torch.set_num_threads(physical_cores())
            self.model = AutoModelForCausalLM.from_pretrained(path, **({} if defaults else {"dtype": torch.bfloat16}))
            tokenizer = AutoTokenizer.from_pretrained(path)
        self.load_s = time.perf_counter() - t0
        self.pad = tokenizer.eos_token_id
        text = render_chat(MESSAGES, tokenizer.chat_template)
        self.input_ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])

    def run(self) -> dict:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self):
                self.times = []

            def put(self, value):
                self.times.append(time.perf_counter())

            def end(self):
                pass

        clock = Clock()
        start = time.perf_counter()
        out = self.model.generate(input_ids=self.input_ids, attention_mask=torch.ones_like(self.input_ids),
                                  max_new_tokens=self.tokens, do_sample=False, streamer=clock, pad_token_id=self.pad)
        end = time.perf_counter()
        n = out.shape[1] - self.input_ids.shape[1]
        # put() is called once with the prompt, then once per new token
        return decode_rate(n, start, clock.times[1] if len(clock.times) > 1 else end, end)


def make_raw(kind: str, path: str, tokens: int, defaults: bool):
    if kind == "gguf":
        return RawLlama(path, tokens, defaults)
    return RawTorch(path, tokens, defaults, gptq=kind == "gptq")


def raw_peak_rss_mb(kind: str, path: str, tokens: int) -> float:
    """Peak RSS of the raw library loading and generating once, in a subprocess of its own."""
    out = subprocess.run([sys.executable, __file__, "--raw-rss", kind, "--path", path, "--tokens", str(tokens)],
                         capture_output=True, text=True, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("RSS "):
            return float(line[4:])
    raise RuntimeError(f"raw {kind} failed:\n{out.stderr[-2000:]}")


# --- the workbench and llama-server -------------------------------------------------------
class Workbench:
    def __init__(self, path: str, tokens: int):
        from workbench.options import LoadOptions
        from workbench.paths import Paths
        from workbench.services.model_service import ModelService

        self.tokens = tokens
        self.service = ModelService(Paths(ROOT), slot="bench")
        self.load_s = self.service.load(path, options=LoadOptions()).load_s

    def run(self) -> dict:
        from workbench.options import GenerationRequest, GenParams

        # A different prompt first, so this run computes its prompt again like the raw runs do.
        self.service.complete(GenerationRequest(prompt="Hello", params=GenParams(temperature=0, max_tokens=1)))
        r = self.service.complete(GenerationRequest(messages=MESSAGES, params=GenParams(temperature=0,
                                                                                        max_tokens=self.tokens))).stats
        return {"tokens": r.completion_tokens, "ttft_s": r.ttft_s, "total_s": r.total_s,
                "tokens_per_s": r.tokens_per_s}

    def close(self) -> float:
        peak = self.service.worker_memory().peak_rss_bytes / 2**20
        self.service.close()
        return peak


class LlamaServer:
    def __init__(self, binary: str, path: str, tokens: int):
        import socket
        import urllib.request

        from workbench.backends.base import physical_cores

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.tokens, self.url = tokens, f"http://127.0.0.1:{port}"
        env = {**os.environ, "LD_LIBRARY_PATH": os.path.dirname(binary)}
        self.proc = subprocess.Popen([binary, "-m", path, "--port", str(port), "--host", "127.0.0.1", "-c", "4096",
                                      "-t", str(physical_cores()), "-np", "1", "--no-webui"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        for _ in range(300):
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.1)

    def run(self) -> dict:
        import urllib.request

        body = json.dumps({"messages": MESSAGES, "max_tokens": self.tokens, "temperature": 0, "stream": True,
                           "cache_prompt": False}).encode()
        req = urllib.request.Request(self.url + "/v1/chat/completions", body, {"Content-Type": "application/json"})
        start = time.perf_counter()
        first, n = None, 0
        with urllib.request.urlopen(req) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or []
                if choices and choices[0]["delta"].get("content"):
                    first = first or time.perf_counter()
                    n += 1
        return decode_rate(n, start, first, time.perf_counter())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def summarize(runs: list[dict]) -> dict:
    return {"tokens": runs[0]["tokens"],
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in runs),
            "ttft_s": statistics.median(r["ttft_s"] for r in runs),
            "tokens_per_s_runs": [round(r["tokens_per_s"], 2) for r in runs]}


def bench_backend(kind: str, path: str, tokens: int, runs: int, llama_server: str | None) -> dict:
    contenders = {"raw": make_raw(kind, path, tokens, False), "workbench": Workbench(path, tokens)}
    failed = {}
    try:
        contenders["raw_defaults"] = make_raw(kind, path, tokens, True)
        contenders["raw_defaults"].run()
    except Exception as e:  # e.g. GPTQModel's default CPU kernel cannot run every model
        failed["raw_defaults"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        contenders.pop("raw_defaults", None)
    if kind == "gguf" and llama_server and os.path.exists(llama_server):
        contenders["llama_server"] = LlamaServer(llama_server, path, tokens)
    results: dict[str, list] = {name: [] for name in contenders}
    try:
        order = list(contenders)
        for round_no in range(runs + 1):
            random.Random(round_no).shuffle(order)  # no contender always follows the same one
            for name in order:
                time.sleep(0.5)  # let the previous engine's spinning threads go to sleep
                r = contenders[name].run()
                if round_no:  # round 0 warms up
                    results[name].append(r)
    finally:
        workbench_peak = contenders["workbench"].close()
        if "llama_server" in contenders:
            contenders["llama_server"].close()
    entry = {name: summarize(rs) for name, rs in results.items()}
    entry.update(failed)
    for name in ("raw", "raw_defaults", "workbench"):
        if name in contenders:
            entry[name]["load_s"] = contenders[name].load_s
    entry["workbench"]["peak_rss_mb"] = workbench_peak
    entry["raw"]["peak_rss_mb"] = raw_peak_rss_mb(kind, path, tokens)
    w = entry["workbench"]
    entry["ratio_tokens_per_s_vs_raw"] = w["tokens_per_s"] / entry["raw"]["tokens_per_s"]
    if "raw_defaults" in contenders:
        entry["ratio_tokens_per_s_vs_raw_defaults"] = w["tokens_per_s"] / entry["raw_defaults"]["tokens_per_s"]
    entry["added_ttft_ms_vs_raw"] = (w["ttft_s"] - entry["raw"]["ttft_s"]) * 1000
    if "llama_server" in entry:
        entry["ratio_tokens_per_s_vs_llama_server"] = w["tokens_per_s"] / entry["llama_server"]["tokens_per_s"]
    return entry


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backends", default="gguf,transformers,gptq")
    p.add_argument("--llama-server", default=os.environ.get("LLAMA_SERVER"))
    p.add_argument("--raw-rss"), p.add_argument("--path")
    args = p.parse_args()
    from workbench.engine_logging import quiet_engines

    quiet_engines()
    if args.raw_rss:  # child: load, generate once, report peak RSS
        make_raw(args.raw_rss, args.path, args.tokens, False).run()
        print(f"RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")
        return 0
    from tests.conftest import SAMPLE_GGUF, _derive

    report = {"prompt": MESSAGES[-1]["content"], "max_tokens": args.tokens, "runs": args.runs, "backends": {}}
    for kind in args.backends.split(","):
        path = SAMPLE_GGUF if kind == "gguf" else _derive(kind)
        report["backends"][kind] = entry = bench_backend(kind, path, args.tokens, args.runs, args.llama_server)
        print(json.dumps({kind: entry}, indent=2), file=sys.stderr)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "generate.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
