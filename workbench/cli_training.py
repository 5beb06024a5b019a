"""Command line for training and evaluation: `train`, `runs`, `eval` and `export`.

    python -m workbench train --config run.yaml [--name N] [--max-steps 20 ...]
    python -m workbench train --resume NAME
    python -m workbench train --config run.yaml --processes 2       # data parallel on this machine
    python -m workbench train ... --processes 2 --nnodes 2 --rdzv 10.0.0.5:29500   # prints machine 1's command
    python -m workbench runs [--json]
    python -m workbench eval PATH --text FILE [--window 512] [--adapter RUN] [--json]
    python -m workbench export RUN|PATH --to transformers|gptq|gguf OUT

`train` starts the run's own process and follows it, printing each logged step; Ctrl-C
asks the run to save a checkpoint and stop (resume it with --resume). Paths typed here
are the user's own and are trusted; names are looked up in models/ and datasets/.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, fields

from .training.config import TrainConfig, TrainConfigError


def _config_from_args(args) -> TrainConfig:
    data: dict = {}
    lines: dict = {}
    if args.config:
        from .preset_store import PresetError, load_mapping

        with open(args.config, encoding="utf-8") as f:
            text = f.read()
        try:
            data, lines = load_mapping(text, args.config)
        except PresetError as e:
            raise TrainConfigError(str(e)) from e
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            data[f.name] = value
    return TrainConfig.from_dict(data, args.config or "command line", lines)


def _follow(service, name: str, as_json: bool) -> int:
    """Print new metric rows until the run ends; Ctrl-C cancels it (checkpoint kept)."""
    seen = 0
    try:
        while True:
            rows = service.metrics(name)
            for row in rows[seen:]:
                if as_json:
                    print(json.dumps(row), flush=True)
                elif "loss" in row:
                    print(f"step {row['step']}/{row['max_steps']}  loss {row['loss']:.4f}", flush=True)
                elif "eval_loss" in row:
                    print(f"step {row['step']}  validation loss {row['eval_loss']:.4f} "
                          f"(perplexity {row['eval_perplexity']:.2f})", flush=True)
            seen = len(rows)
            status = service.status(name)
            if status.status != "running":
                break
            time.sleep(1)
    except KeyboardInterrupt:
        print("cancelling: the run saves a checkpoint and stops (resume with --resume)", file=sys.stderr)
        service.cancel(name)
        status = service.wait(name, 300)
    summary = asdict(status)
    if as_json:
        print(json.dumps({"run": summary}))
    else:
        print(f"run {name}: {status.status}" + (f" - {status.error}" if status.error else ""))
        if status.perplexity_before is not None and status.perplexity_after is not None:
            print(f"validation perplexity {status.perplexity_before:.3f} -> {status.perplexity_after:.3f}")
        if status.output:
            print(f"result: {status.output}")
    return 0 if status.status in ("completed", "cancelled") else 1


def cmd_train(args, paths) -> int:
    from .services.training_service import TrainingService

    service = TrainingService(paths)
    if args.resume:
        service.resume(args.resume)
        return _follow(service, args.resume, args.json)
    config = _config_from_args(args)
    service.start(config, trusted_paths=True)
    print(f"run {config.name} started: {service.run_files(config.name).folder}", file=sys.stderr)
    commands = service.node_commands(config.name)
    if commands:
        print(f"start the other machines (each needs this project and {service.run_files(config.name).config} "
              f"at the same path, the model and dataset too; the rendezvous port {config.rdzv} has no "
              "authentication: use a private network or an SSH tunnel):", file=sys.stderr)
        for command in commands:
            print(f"  {command}", file=sys.stderr)
    if args.detach:
        return 0
    return _follow(service, config.name, args.json)


def cmd_runs(args, paths) -> int:
    from .services.training_service import TrainingService

    service = TrainingService(paths)
    rows = [asdict(service.status(n)) for n in service.names()]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            loss = f"loss {r['loss']:.4f}" if r["loss"] is not None else ""
            print(f"{r['name']:24} {r['method']:8} {r['status']:12} step {r['step']}/{r['max_steps']} {loss}")
    return 0


def cmd_eval(args, paths) -> int:
    from dataclasses import replace

    from .load_flags import load_options_from_args
    from .services.model_service import ModelService
    from .services.training_service import TrainingService
    from .training.dataset import read_text

    text, _ = read_text(args.text)
    options = load_options_from_args(args, paths)
    path = args.path
    if args.adapter:
        path, adapter = TrainingService(paths).adapter_of(args.adapter)
        options = replace(options, adapter=adapter)
    service = ModelService(paths)
    try:
        service.load(service.locate(path), args.loader, options)

        def progress(done, total):
            if not args.json:
                print(f"\rwindow {done}/{total}", end="", file=sys.stderr, flush=True)

        result = service.perplexity(text, args.window, progress)
    finally:
        service.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"\nperplexity {result['perplexity']:.4f} over {result['tokens']} tokens "
              f"({result['windows']} windows of {result['window']}, {result['backend']})")
    return 0


def cmd_export(args, paths) -> int:
    from .jobs import JobSpec, run_in_terminal
    from .services.model_service import ModelService
    from .services.training_service import TrainingService

    service, adapter, source = TrainingService(paths), None, args.source
    if source in service.names():
        source, adapter = service.adapter_of(source)
    else:
        source = os.path.abspath(ModelService(paths).locate(source))
    options = {"outtype": args.gguf_type, "bits": args.bits, "group_size": 128,
               "calibration": args.calibration and os.path.abspath(args.calibration)}
    return run_in_terminal(JobSpec("export", {"kind": args.to, "source": source, "out": os.path.abspath(args.out),
                                      "adapter": adapter, **options}), paths)


def add_training_commands(sub) -> None:
    from .load_flags import add_load_flags

    t = sub.add_parser("train", help="train a LoRA adapter or a small GPT from scratch")
    t.add_argument("--config", help="run.yaml with TrainConfig keys (flags override it)")
    t.add_argument("--resume", metavar="RUN", help="resume an interrupted or cancelled run from its last checkpoint")
    t.add_argument("--detach", action="store_true", help="start the run and return (follow it with `runs`)")
    t.add_argument("--json", action="store_true", help="print metric rows and the outcome as JSON lines")
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float}.get(f.type, str)
        t.add_argument(flag, dest=f.name, type=kind, default=None)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("runs", help="list training runs and their state")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_runs)

    e = sub.add_parser("eval", help="perplexity of a model over a text file")
    e.add_argument("path", help="model in models/ or a path (ignored with --adapter)")
    e.add_argument("--text", required=True, help="UTF-8 text file")
    e.add_argument("--window", type=int, help="tokens per window (default: min(context, 512))")
    e.add_argument("--adapter", metavar="RUN", help="evaluate a LoRA run's base model with its adapter")
    e.add_argument("--json", action="store_true")
    add_load_flags(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="export a LoRA run (merged) or a model folder")
    x.add_argument("source", help="a run name (its base model + adapter) or a Transformers folder")
    x.add_argument("--to", choices=("transformers", "gptq", "gguf"), required=True)
    x.add_argument("out", help="output folder (transformers, gptq) or .gguf file")
    x.add_argument("--gguf-type", default="q8_0", choices=("f16", "bf16", "q8_0", "f32"))
    x.add_argument("--bits", type=int, default=4, help="GPTQ bits")
    x.add_argument("--calibration", help="GPTQ calibration text file")
    x.set_defaults(func=cmd_export)
