"""Headless command line: `python -m workbench models|inspect|generate|plan|convert ...`.

Training, evaluation and export commands live in `cli_training.py`.

Parses flags, builds the services, calls them, prints. Bad input gives one line on
stderr and exit code 2; nothing here knows about engines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import WorkbenchError
from .options import DTYPES, KV_CACHE_TYPES, GenerationRequest, GenParams, LoadOptions

LOADERS = ("auto", "llama.cpp", "transformers", "gptq")


def add_load_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for every LoadOptions field (shared with webui.py)."""
    g = parser.add_argument_group("load options")
    g.add_argument("--profile", help="hardware profile from presets/hardware/ (flags override it)")
    g.add_argument("--loader", choices=LOADERS, default="auto", help="backend to use (default: detected from the files)")
    g.add_argument("--n-ctx", type=int, help="context size in tokens (0 = the largest that fits)")
    g.add_argument("--n-gpu-layers", type=int, help="llama.cpp layers on the GPU (-1 = all)")
    g.add_argument("--n-batch", type=int, help="llama.cpp prompt batch size")
    g.add_argument("--threads", type=int, help="CPU threads (default: physical cores)")
    g.add_argument("--no-mmap", action="store_true", help="llama.cpp: read the file instead of mapping it")
    g.add_argument("--mlock", action="store_true", help="llama.cpp: lock the weights in RAM")
    g.add_argument("--flash-attn", action=argparse.BooleanOptionalAction, default=None,
                   help="llama.cpp flash attention (default on: faster and smaller on CPU)")
    g.add_argument("--cache-type", choices=KV_CACHE_TYPES, help="llama.cpp KV cache type")
    g.add_argument("--dtype", choices=DTYPES, help="Transformers weights dtype")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), help="Transformers/GPTQ device")
    g.add_argument("--max-vram", type=float, metavar="GIB", help="VRAM cap in GiB (Transformers/GPTQ)")
    g.add_argument("--max-ram", type=float, metavar="GIB", help="RAM cap in GiB; the rest is offloaded to disk")
    g.add_argument("--offload-folder", help="where offloaded weights go (default user_data/offload)")
    g.add_argument("--trust-pickle", action="store_true", help="allow pickle weights (loaded with weights_only)")


def load_options_from_args(args: argparse.Namespace, paths=None) -> LoadOptions:
    """LoadOptions from --profile (if given) with the explicit flags on top."""
    opts = LoadOptions()
    if getattr(args, "profile", None):
        opts = profile_store(paths).get(args.profile).options()
    pairs = {
        "n_ctx": args.n_ctx, "n_gpu_layers": args.n_gpu_layers, "n_batch": args.n_batch,
        "n_threads": args.threads, "cache_type": args.cache_type, "dtype": args.dtype,
        "device": args.device, "max_vram_gib": args.max_vram, "max_ram_gib": args.max_ram,
        "offload_folder": args.offload_folder,
    }
    for field_name, value in pairs.items():
        if value is not None:
            setattr(opts, field_name, value)
    for flag, field_name, value in (("no_mmap", "use_mmap", False), ("mlock", "use_mlock", True),
                                    ("trust_pickle", "trust_pickle", True)):
        if getattr(args, flag):
            setattr(opts, field_name, value)
    if args.flash_attn is not None:
        opts.flash_attn = args.flash_attn
    return opts.validate()


def profile_store(paths=None):
    from .paths import Paths
    from .profiles import ProfileStore

    paths = paths or Paths.default()
    return ProfileStore(os.path.join(paths.presets, "hardware"), os.path.join(paths.user_data, "model_settings.json"))


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_models(args, paths) -> int:
    from .services.model_service import ModelService

    rows = ModelService(paths).list_models()
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print(f"No models in {paths.models}; run ./start.sh to fetch the sample model.")
    for r in rows:
        if "error" in r:
            print(f"{r['name']}: unreadable: {r['error']}")
        else:
            params = f"{r['parameter_count'] / 1e6:.0f}M params" if r.get("parameter_count") else ""
            print(f"{r['name']}  {r['format']}  backend={r['backend']}  {_human_size(r['size_bytes'])}  "
                  f"{r.get('quantization') or ''}  {params}")
    return 0


def cmd_inspect(args, paths) -> int:
    from .detect import detect

    d = detect(args.path, trust_pickle=args.trust_pickle)
    info = d.to_dict()
    from .backends.registry import default_backend

    info["backend"] = default_backend(d.format)
    if args.json:
        _print_json(info)
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def cmd_generate(args, paths) -> int:
    from .services.model_service import ModelService

    params = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                       top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                       seed=args.seed, stop=args.stop or []).validate()
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}]
        request = GenerationRequest(messages=messages, params=params)
    else:
        request = GenerationRequest(prompt=args.prompt, params=params)
    service = ModelService(paths)
    options, path = load_options_from_args(args, paths), args.path
    if args.adapter:
        from .services.training_service import TrainingService

        path, options.adapter = TrainingService(paths).adapter_of(args.adapter)
    try:
        info = service.load(service.locate(path), args.loader, options)
        pieces, stats = [], {}
        for kind, value in service.generate(request):
            if kind == "token":
                pieces.append(value)
                if not args.json:
                    sys.stdout.write(value)
                    sys.stdout.flush()
            else:
                stats = value
        memory = service.worker_memory()
    finally:
        service.close()
    if args.json:
        _print_json({
            "text": "".join(pieces),
            "tokens": stats.get("completion_tokens"),
            "prompt_tokens": stats.get("prompt_tokens"),
            "finish_reason": stats.get("finish_reason"),
            "ttft_s": stats.get("ttft_s"),
            "tokens_per_s": stats.get("tokens_per_s"),
            "load_s": info.get("load_s"),
            "peak_rss_mb": memory["peak_rss_bytes"] / 2**20,
            "backend": info.get("backend"),
            "device": info.get("device"),
        })
    else:
        sys.stdout.write("\n")
        print(f"[{stats.get('completion_tokens')} tokens, {stats.get('tokens_per_s', 0):.1f} tok/s, "
              f"first token {stats.get('ttft_s', 0) * 1000:.0f} ms, {info.get('backend')}]", file=sys.stderr)
    return 0


def cmd_plan(args, paths) -> int:
    from .plan import plan_table, refusal
    from .services.model_service import ModelService

    service = ModelService(paths)
    options = load_options_from_args(args, paths)
    plan = service.plan(service.locate(args.path), args.loader, options)
    warning = profile_store(paths).get(args.profile).warning(service.hardware()) if args.profile else None
    if args.json:
        out = plan.to_dict()
        out["warning"] = warning
        out["refusal"] = None if plan.fits else refusal(plan)
        _print_json(out)
    else:
        print(plan_table(plan.to_dict()))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return 0 if plan.fits else 1


def cmd_convert(args, paths) -> int:
    from . import convert

    def progress(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.to == "transformers":
        out = convert.gguf_to_transformers(args.src, args.out, dtype=args.dtype or "bfloat16", progress=progress)
    else:
        out = convert.transformers_to_gptq(args.src, args.out, bits=args.bits, group_size=args.group_size,
                                           calibration_file=args.calibration, progress=progress)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workbench", description="Model Workbench, headless.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list what is in models/")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    i = sub.add_parser("inspect", help="show what detection finds at PATH")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.add_argument("--trust-pickle", action="store_true")
    i.set_defaults(func=cmd_inspect)

    g = sub.add_parser("generate", help="load PATH and generate from a prompt")
    g.add_argument("path")
    g.add_argument("-p", "--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--system", help="system prompt (with --chat)")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--top-k", type=int, default=40)
    g.add_argument("--min-p", type=float, default=0.05)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stop", action="append", help="stop string (repeatable)")
    g.add_argument("--json", action="store_true", help="print one JSON object with text and timings")
    g.add_argument("--adapter", metavar="RUN", help="a finished LoRA run: its base model with its adapter (PATH is ignored)")
    add_load_flags(g)
    g.set_defaults(func=cmd_generate)

    pl = sub.add_parser("plan", help="show the memory plan for loading PATH (exit 1 if it does not fit)")
    pl.add_argument("path")
    pl.add_argument("--json", action="store_true")
    add_load_flags(pl)
    pl.set_defaults(func=cmd_plan)

    c = sub.add_parser("convert", help="convert a model: GGUF -> transformers, transformers -> gptq")
    c.add_argument("src")
    c.add_argument("--to", choices=("transformers", "gptq"), required=True)
    c.add_argument("out")
    c.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="--to transformers: saved dtype")
    c.add_argument("--bits", type=int, default=4, help="--to gptq: bits per weight")
    c.add_argument("--group-size", type=int, default=128, help="--to gptq: quantization group size")
    c.add_argument("--calibration", help="--to gptq: calibration text file (default: built-in sample)")
    c.set_defaults(func=cmd_convert)

    from .cli_training import add_training_commands

    add_training_commands(sub, add_load_flags)
    return p


def main(argv: list[str] | None = None) -> int:
    from .paths import Paths

    args = build_parser().parse_args(argv)
    try:
        return args.func(args, Paths.default())
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"error: {e.strerror or e}: {getattr(e, 'filename', '') or ''}".rstrip(": "), file=sys.stderr)
        return 2

