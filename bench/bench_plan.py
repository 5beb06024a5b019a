"""The memory planner against measured memory, per backend and context, as JSON.

For each form of the sample model and each context size it makes the plan, loads the
model in its worker, fills the context with a prompt (so KV cache and compute buffers
are really touched), and reads the worker's peak RSS. Error = (planned - measured) / measured.

    .venv/bin/python bench/bench_plan.py [--contexts 512,2048,8192] [--backends gguf,transformers,gptq]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(path: str, n_ctx: int) -> dict:
    from workbench.options import GenerationRequest, GenParams, LoadOptions
    from workbench.paths import Paths
    from workbench.services.model_service import ModelService

    service = ModelService(Paths(ROOT))
    try:
        options = LoadOptions(n_ctx=n_ctx)
        plan = service.plan(path, None, options)
        loaded = service.load(path, options=options)
        after_load = service.worker_memory().rss_bytes
        # a prompt that fills the context but for a few tokens
        target = n_ctx - 8
        per_word = max(len(service.tokenize(" word" * 100)) / 100, 0.5)
        prompt = "word" + " word" * int(target / per_word - 1)
        while len(service.tokenize(prompt)) >= target:
            prompt = prompt[: int(len(prompt) * 0.98)]
        result = service.complete(GenerationRequest(prompt=prompt, params=GenParams(temperature=0, max_tokens=4))).stats
        memory = service.worker_memory()
    finally:
        service.close()
    planned = plan.ram_total()
    return {
        "backend": loaded.backend, "n_ctx": n_ctx, "prompt_tokens": result.prompt_tokens,
        "planned_mib": planned / 2**20, "measured_peak_rss_mib": memory.peak_rss_bytes / 2**20,
        "measured_after_load_mib": after_load / 2**20,
        "error": (planned - memory.peak_rss_bytes) / memory.peak_rss_bytes,
        "plan": {d.device: {"weights": d.weights, "kv_cache": d.kv_cache, "compute": d.compute, "runtime": d.runtime}
                 for d in plan.devices},
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--contexts", default="512,2048,8192")
    p.add_argument("--backends", default="gguf,transformers,gptq")
    args = p.parse_args()
    from tests.conftest import SAMPLE_GGUF, _derive

    rows = []
    for kind in args.backends.split(","):
        path = SAMPLE_GGUF if kind == "gguf" else _derive(kind)
        for n_ctx in (int(c) for c in args.contexts.split(",")):
            row = measure(path, n_ctx)
            rows.append(row)
            print(f"{row['backend']:12} ctx {n_ctx:5}: planned {row['planned_mib']:7.1f} MiB, measured "
                  f"{row['measured_peak_rss_mib']:7.1f} MiB, error {row['error'] * 100:+.1f}%", file=sys.stderr)
    report = {"rows": rows, "max_abs_error": max(abs(r["error"]) for r in rows)}
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "plan.json"), "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
