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
from .load_flags import add_load_flags, load_options_from_args, profile_store
from .options import GenerationRequest, GenParams


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

    entries = ModelService(paths).list_models()
    if args.json:
        _print_json([e.to_dict() for e in entries])
        return 0
    if not entries:
        print(f"No models in {paths.models}; run ./start.sh to fetch the sample model.")
    for e in entries:
        if e.error:
            print(f"{e.name}: unreadable: {e.error}")
        else:
            d = e.detection
            params = f"{d.parameter_count / 1e6:.0f}M params" if d.parameter_count else ""
            print(f"{e.name}  {d.format}  backend={e.backend}  {_human_size(d.size_bytes)}  "
                  f"{d.quantization or ''}  {params}")
    return 0


def cmd_inspect(args, paths) -> int:
    from .backends.registry import default_registry

    registry = default_registry()
    d = registry.detect(args.path, trust_pickle=args.trust_pickle)
    info = {**d.to_dict(), "backend": registry.default_for(d.format).name}
    if args.json:
        _print_json(info)
    else:
        for k, v in info.items():
            print(f"{k}: {v}")
    return 0


def read_json_schema(path: str) -> dict:
    """The JSON Schema in file `path`, checked as the API checks response_format."""
    from .api.structured import check_json_schema

    try:
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
    except OSError as e:
        raise WorkbenchError(f"Cannot read the JSON schema file {path} ({e.strerror}).") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkbenchError(f"The JSON schema file {path} is not valid JSON ({e}).") from e
    return check_json_schema(schema, "--json-schema")


def cmd_generate(args, paths) -> int:
    from dataclasses import replace

    from .services.model_service import ModelService

    params = GenParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                       top_k=args.top_k, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                       seed=args.seed, stop=args.stop or [],
                       json_schema=read_json_schema(args.json_schema) if args.json_schema else None).validate()
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

        path, adapter = TrainingService(paths).adapter_of(args.adapter)
        options = replace(options, adapter=adapter)
    try:
        loaded = service.load(service.locate(path), args.loader, options)
        pieces, stats = [], None
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
            "tokens": stats.completion_tokens,
            "prompt_tokens": stats.prompt_tokens,
            "finish_reason": stats.finish_reason,
            "ttft_s": stats.ttft_s,
            "tokens_per_s": stats.tokens_per_s,
            "load_s": loaded.load_s,
            "peak_rss_mb": memory.peak_rss_bytes / 2**20,
            "backend": loaded.backend,
            "device": loaded.device,
        })
    else:
        sys.stdout.write("\n")
        print(f"[{stats.completion_tokens} tokens, {stats.tokens_per_s:.1f} tok/s, "
              f"first token {stats.ttft_s * 1000:.0f} ms, {loaded.backend}]", file=sys.stderr)
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
        print(plan_table(plan))
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
    return 0 if plan.fits else 1


def cmd_convert(args, paths) -> int:
    from .jobs import JobSpec, run_in_terminal

    src, out = os.path.abspath(args.src), os.path.abspath(args.out)
    if args.to == "transformers":
        spec = JobSpec("convert_to_transformers", {"src": src, "out": out, "dtype": args.dtype or "bfloat16"})
    else:
        spec = JobSpec("convert_to_gptq", {"src": src, "out": out, "bits": args.bits, "group_size": args.group_size,
                                           "calibration_file": args.calibration and os.path.abspath(args.calibration)})
    return run_in_terminal(spec, paths)


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
    g.add_argument("--json-schema", metavar="FILE", help="constrain the reply to JSON matching the JSON Schema in FILE")
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

    add_training_commands(sub)

    from .cli_remote import add_remote_command

    add_remote_command(sub)

    from .downloads.cli import add_download_command

    add_download_command(sub)

    from .cli_rpc import add_rpc_command

    add_rpc_command(sub)
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

