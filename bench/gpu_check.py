"""GPU proof run: the workbench's CUDA paths against the raw engines on one NVIDIA GPU, JSON out.

Usage: python bench/gpu_check.py MODEL.gguf TRANSFORMERS_DIR OUT.json [--skip-llama]

For each case (llama.cpp with every layer on the GPU, llama.cpp with part of the layers, llama.cpp
under a VRAM cap, Transformers on cuda) it records: the memory plan's GPU total against the GPU memory
the worker really took (NVML, sampled while it answers), the greedy answer to a known question, one
stream's and four concurrent streams' tokens per second through the batching scheduler, and the raw
engine's single-stream speed in the same run (raw llama-cpp-python, raw transformers `generate`).
Cases run one after another in fresh workers; a failure in one case is recorded and the next runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from workbench.options import GenerationRequest, GenParams, LoadOptions  # noqa: E402
from workbench.paths import Paths  # noqa: E402
from workbench.services.model_service import ModelService  # noqa: E402

QUESTION = "What is the capital of France? Answer in one word."
STORIES = ["Tell me a long story about a dragon.", "Explain in detail how rain forms.",
           "Write a long poem about the sea.", "Describe a big city at night in detail."]
MAX_TOKENS = 128
MiB = 2**20


def gpu_used_bytes() -> int:
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
    finally:
        pynvml.nvmlShutdown()


class PeakSampler:
    """Samples the GPU's used memory every 20 ms in a thread; `peak` is the most seen."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        while not self._stop.is_set():
            self.peak = max(self.peak, pynvml.nvmlDeviceGetMemoryInfo(handle).used)
            time.sleep(0.02)
        pynvml.nvmlShutdown()

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def chat(question: str, max_tokens: int = MAX_TOKENS) -> GenerationRequest:
    return GenerationRequest(messages=[{"role": "user", "content": question}],
                             params=GenParams(temperature=0, max_tokens=max_tokens))


def concurrent(service: ModelService, questions: list[str]) -> dict:
    results: list = [None] * len(questions)

    def run(i: int) -> None:
        results[i] = service.complete(chat(questions[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(questions))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    wall = time.perf_counter() - start
    tokens = sum(r.stats.completion_tokens for r in results)
    return {"streams": len(questions), "tokens": tokens, "wall_s": round(wall, 3),
            "aggregate_tok_s": round(tokens / wall, 1),
            "ttft_s": [round(r.stats.ttft_s, 3) for r in results]}


def workbench_case(path: str, options: LoadOptions, tmp: str) -> dict:
    service = ModelService(Paths(tmp))
    try:
        plan = service.plan(path, None, options)
        out: dict = {"plan": {d.device: {"layers": d.layers, "total_mib": round(d.total / MiB)}
                              for d in plan.devices},
                     "plan_fits": plan.fits, "plan_problems": list(plan.problems), "plan_notes": list(plan.notes),
                     "n_gpu_layers": plan.n_gpu_layers}
        if not plan.fits:
            return out
        before = gpu_used_bytes()
        with PeakSampler() as sampler:
            loaded = service.load(path, options=options)
            out["loaded_device"] = loaded.device
            answer = service.complete(chat(QUESTION, 16))
            out["greedy_answer"] = answer.text
            one = service.complete(chat(STORIES[0]))
            out["one_stream"] = {"tokens": one.stats.completion_tokens, "tok_s": round(one.stats.tokens_per_s, 1),
                                 "ttft_s": round(one.stats.ttft_s, 3)}
            out["four_streams"] = concurrent(service, STORIES)
            out["four_streams"]["vs_one"] = round(out["four_streams"]["aggregate_tok_s"] / max(one.stats.tokens_per_s, 1e-9), 2)
        gpu_plan = sum(d.total for d in plan.devices if d.device != "cpu")
        measured = sampler.peak - before
        out["gpu_measured_mib"] = round(measured / MiB)
        out["gpu_planned_mib"] = round(gpu_plan / MiB)
        out["gpu_plan_error"] = round((gpu_plan - measured) / measured, 3) if measured > 0 else None
        out["worker_peak_rss_mib"] = round(service.worker_memory().peak_rss_bytes / MiB)
        out["plan_cpu_mib"] = round(plan.ram_total() / MiB)
        return out
    finally:
        service.close()


def raw_llama(path: str, n_gpu_layers: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(path, n_gpu_layers=n_gpu_layers, n_ctx=2048, verbose=False)
    messages = [{"role": "user", "content": STORIES[0]}]
    llm.create_chat_completion(messages, max_tokens=8, temperature=0)  # warm-up
    start = time.perf_counter()
    first = None
    tokens = 0
    for chunk in llm.create_chat_completion(messages, max_tokens=MAX_TOKENS, temperature=0, stream=True):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter()
    end = time.perf_counter()
    del llm
    return {"tokens": tokens, "tok_s": round((tokens - 1) / (end - first), 1) if first and tokens > 1 else None,
            "ttft_s": round(first - start, 3) if first else None}


def raw_transformers(path: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).to("cuda")
    ids = tok.apply_chat_template([{"role": "user", "content": STORIES[0]}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"].to("cuda")
    model.generate(ids, max_new_tokens=8, do_sample=False)
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    tokens = out.shape[1] - ids.shape[1]
    del model
    torch.cuda.empty_cache()
    return {"tokens": int(tokens), "tok_s": round(tokens / wall, 1), "note": "includes prefill"}


def guarded(results: dict, name: str, fn, *args) -> None:
    start = time.perf_counter()
    try:
        results[name] = fn(*args)
    except Exception as e:  # one failed case must not hide the others' numbers
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
    results[name + "_wall_s"] = round(time.perf_counter() - start, 1)
    print(name, json.dumps(results[name])[:600], flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("gguf")
    p.add_argument("transformers_dir")
    p.add_argument("out")
    p.add_argument("--skip-llama", action="store_true")
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    results: dict = {}
    try:
        import pynvml

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        results["gpu"] = {"name": str(pynvml.nvmlDeviceGetName(h)),
                          "total_mib": pynvml.nvmlDeviceGetMemoryInfo(h).total // MiB}
        pynvml.nvmlShutdown()
    except Exception as e:
        results["gpu"] = {"error": str(e)}
    tmp = tempfile.mkdtemp()

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    if not args.skip_transformers:
        guarded(results, "transformers_cuda", workbench_case, args.transformers_dir,
                LoadOptions(n_ctx=2048, parallel=4, device="cuda"), tmp)
        save()
        guarded(results, "raw_transformers_cuda", raw_transformers, args.transformers_dir)
        save()
    if not args.skip_llama:
        import llama_cpp

        results["llama_supports_gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        guarded(results, "llama_all_layers", workbench_case, args.gguf,
                LoadOptions(n_ctx=2048, parallel=4, n_gpu_layers=-1), tmp)
        save()
        guarded(results, "raw_llama_all_layers", raw_llama, args.gguf, -1)
        save()
        guarded(results, "llama_15_layers", workbench_case, args.gguf,
                LoadOptions(n_ctx=2048, parallel=4, n_gpu_layers=15), tmp)
        save()
        # A VRAM cap below the whole model: auto mode must put fewer layers on the GPU and stay under it.
        guarded(results, "llama_auto_under_0.15_gib_cap", workbench_case, args.gguf,
                LoadOptions(n_ctx=2048, parallel=4, max_vram_gib=0.15), tmp)
        save()
        guarded(results, "llama_all_layers_over_0.15_gib_cap", workbench_case, args.gguf,
                LoadOptions(n_ctx=2048, parallel=4, n_gpu_layers=-1, max_vram_gib=0.15), tmp)
        save()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
