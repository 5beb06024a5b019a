"""Constrained decoding's per-token cost: JSON-schema replies against plain replies, per engine.

For the GGUF (llama.cpp's grammar, checked per drawn token) and the Transformers form
(llguidance's token mask), in alternated rounds: the decode rate (tokens/s after the first
token, from the reply's stats) of a plain sampled reply and of a reply constrained to a
JSON schema with nested objects, an enum and an array, both through the worker's
scheduler, one stream. Prints JSON and writes bench/results/structured.json.

    .venv/bin/python bench/bench_structured.py [--rounds 3] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string"},
    "genre": {"enum": ["fantasy", "mystery", "science fiction"]},
    "hero": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
             "required": ["name", "age"]},
    "chapters": {"type": "array", "items": {"type": "object", "properties": {"title": {"type": "string"},
                                                                                "summary": {"type": "string"}},
                                               "required": ["title", "summary"]}, "minItems": 6},
}, "required": ["title", "genre", "hero", "chapters"]}
ASK = [{"role": "user", "content": "Plan a long novel about a dragon: title, genre, hero and chapter summaries."}]


def rate(models, tokens: int, seed: int, schema) -> tuple[float, int]:
    from workbench.options import GenerationRequest, GenParams

    done = models.complete(GenerationRequest(messages=ASK, params=GenParams(
        temperature=0.7, seed=seed, max_tokens=tokens, json_schema=schema)))
    if schema is not None:
        json.loads(done.text) if done.stats.finish_reason == "stop" else None
    return done.stats.tokens_per_s, done.stats.completion_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--engines", default="llama.cpp,transformers")
    args = parser.parse_args()
    from tests.conftest import SAMPLE_GGUF, _derive
    from workbench.options import LoadOptions
    from workbench.paths import Paths
    from workbench.services.model_service import ModelService

    results = {}
    for name, path in (("llama.cpp", SAMPLE_GGUF), ("transformers", None)):
        if name not in args.engines.split(","):
            continue
        path = path or _derive("transformers")
        models = ModelService(Paths(tempfile.mkdtemp()))
        models.load(path, options=LoadOptions(n_ctx=1024, parallel=1))
        rate(models, 8, 0, SCHEMA)  # warm-up (llguidance builds its tokenizer view once)
        plain, constrained, counts = [], [], []
        for r in range(args.rounds):
            plain.append(rate(models, args.tokens, r, None)[0])
            tps, n = rate(models, args.tokens, r, SCHEMA)
            constrained.append(tps)
            counts.append(n)
        models.close()
        p, c = statistics.median(plain), statistics.median(constrained)
        results[name] = {"plain_tok_s": round(p, 2), "json_schema_tok_s": round(c, 2),
                         "slower_pct": round(100 * (p / c - 1), 1), "json_tokens": counts}
    print(json.dumps(results, indent=2))
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "structured.json"), "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
