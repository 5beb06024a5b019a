"""The memory plan of a large model against its measured peak: a 1.1B-parameter Llama (the layout of
Llama 3.2 1B with the sample's tokenizer, random bf16 weights, 2.1 GB on disk), as Transformers and as
a llama.cpp Q8_0 GGUF, each loaded and run on a prompt that fills most of the context. JSON out.

The constants of the plan were calibrated on 20-135M-parameter models; this row checks that they do
not drift with size (issue 15: "a bench row for a large model's plan checked against its real parts").

    .venv/bin/python bench/bench_plan_large.py [--n-ctx 2048] [--out bench/results/plan_large.json]

The model is built once into ~/.cache/model-workbench/bench-models/llama-1b (about 3.5 GB with its GGUF).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "model-workbench", "bench-models", "llama-1b")
CONFIG = dict(vocab_size=49_152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
              num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
              tie_word_embeddings=True, rope_theta=500_000.0)
CONVERTER = os.path.join(ROOT, ".venv", "share", "llama.cpp-convert", "convert_hf_to_gguf.py")


def build(tokenizer_from: str) -> tuple[str, str]:
    folder, gguf = os.path.join(CACHE, "transformers"), os.path.join(CACHE, "llama-1b-q8_0.gguf")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        import torch
        import transformers

        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(transformers.LlamaConfig(**CONFIG), dtype=torch.bfloat16)
        tmp = folder + ".partial"
        model.save_pretrained(tmp)
        for f in os.listdir(tokenizer_from):
            if f.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(os.path.join(tokenizer_from, f), tmp)
        os.replace(tmp, folder)
        del model
    if not os.path.isfile(gguf):
        subprocess.run([sys.executable, CONVERTER, folder, "--outfile", gguf + ".partial", "--outtype", "q8_0"],
                       check=True, capture_output=True)
        os.replace(gguf + ".partial", gguf)
    return folder, gguf


def measure(path: str, n_ctx: int) -> dict:
    from workbench.options import GenerationRequest, GenParams, LoadOptions
    from workbench.paths import Paths
    from workbench.services.model_service import ModelService

    service = ModelService(Paths(tempfile.mkdtemp()))
    try:
        options = LoadOptions(n_ctx=n_ctx, parallel=1)
        plan = service.plan(path, None, options)
        service.load(path, options=options)
        service.complete(GenerationRequest(prompt="word " * int(n_ctx * 0.75),
                                           params=GenParams(temperature=0, max_tokens=4)))
        peak = service.worker_memory().peak_rss_bytes
    finally:
        service.close()
    cpu = plan.device("cpu")
    return {"planned_mib": round(plan.ram_total() / 2**20), "measured_peak_mib": round(peak / 2**20),
            "error": round((plan.ram_total() - peak) / peak, 3),
            "parts_mib": {"weights": round(cpu.weights / 2**20), "kv_cache": round(cpu.kv_cache / 2**20),
                          "compute": round(cpu.compute / 2**20), "runtime": round(cpu.runtime / 2**20)}}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "plan_large.json"))
    args = p.parse_args()
    tokenizer_from = glob.glob(os.path.join(os.path.expanduser("~"), ".cache", "model-workbench", "test-models",
                                            "*", "transformers"))[0]
    folder, gguf = build(tokenizer_from)
    from workbench.detect import detect

    result = {"model": {"parameters": detect(folder).parameter_count, **CONFIG}, "n_ctx": args.n_ctx,
              "transformers_bf16": measure(folder, args.n_ctx), "gguf_q8_0": measure(gguf, args.n_ctx)}
    text = json.dumps(result, indent=1)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
