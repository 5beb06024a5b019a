"""The `download` subcommand: `python -m workbench download REPO[:QUANT|:FILE]`.

Without a quant it lists the repo's forms with sizes and the memory verdict of each (planned
from headers only) and names the recommended one; with one it downloads that form through
DownloadService, showing bytes, speed and ETA. Ctrl-C cancels and keeps the bytes; the same
command resumes. Bad input raises WorkbenchError (the main CLI prints it, exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from .forms import pick, split_spec
from .types import CANCELLED, DONE, RepoListing

MiB, GiB = 2**20, 2**30


def add_download_command(subparsers) -> None:
    d = subparsers.add_parser(
        "download", help="get a model from the Hugging Face Hub (or the mirror in HF_ENDPOINT) into models/",
        description="List a repo's forms with whether each fits this machine, or download one into models/. "
                    "HF_ENDPOINT picks a mirror, HF_TOKEN a token for gated repos.")
    d.add_argument("spec", nargs="?", metavar="REPO[:QUANT|:FILE]",
                   help="org/name, optionally :Q4_K_M (a quant), :transformers/:gptq (the safetensors folder) "
                        "or :FILE; leave it out to list unfinished downloads")
    d.add_argument("--name", help="the name in models/ (default: the GGUF file name, or the repo name)")
    d.add_argument("--list", action="store_true", help="only list the forms and their memory verdicts")
    d.add_argument("--profile", help="plan for this hardware profile (presets/hardware/) instead of this machine")
    d.add_argument("--n-ctx", type=int, default=4096, help="context the fit verdicts are for (0 = largest that fits)")
    d.add_argument("--discard", action="store_true", help="delete the kept bytes of the unfinished download --name")
    d.add_argument("--json", action="store_true", help="the listing as JSON; progress as JSON lines")
    d.set_defaults(func=cmd_download)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def print_listing(listing: RepoListing, out=sys.stdout) -> None:
    print(f"{listing.repo_id} at {listing.commit[:10]}; fit for {listing.target}", file=out)
    print(f"{'form':24} {'kind':12} {'size':>10}  {'quantization':16} fit", file=out)
    for p in listing.plans:
        mark = " *" if p.form.label == listing.recommended else ""
        print(f"{p.form.label + mark:24} {p.form.kind:12} {_size(p.form.size):>10}  {p.quantization or '':16} "
              f"{p.verdict}", file=out)
    total = sum(p.form.size for p in listing.plans if p.header_bytes)
    print(f"planned from {_size(listing.bytes_fetched)} of headers (the planned forms weigh {_size(total)})",
          file=out)
    if listing.other_files:
        shown = ", ".join(listing.other_files[:6]) + (" ..." if len(listing.other_files) > 6 else "")
        print(f"not offered (no form the workbench loads): {shown}", file=out)
    if listing.recommended:
        print(f"* recommended: the largest that fits; get it with: python -m workbench download "
              f"{listing.repo_id}:{listing.recommended}", file=out)
    elif any(p.fits is False for p in listing.plans):
        print("No form fits at this context; try --n-ctx 0, a smaller context or another profile.", file=out)
    else:
        print("No form here could be planned (see the fit column); you can still download one.", file=out)


def _progress_line(p) -> str:
    pct = f"{p.fraction * 100:5.1f}%"
    speed = f"{p.speed_bps / MiB:6.1f} MiB/s" if p.speed_bps else "      - MiB/s"
    eta = f"ETA {p.eta_s:4.0f} s" if p.eta_s is not None else "ETA    - s"
    extra = f"  resumed from {_size(p.resumed_bytes)}" if p.resumed_bytes else ""
    extra += f"  reconnects {p.retries}" if p.retries else ""
    return f"{pct} {_size(p.done_bytes)} of {_size(p.total_bytes)}  {speed}  {eta}{extra}"


def _services(paths):
    from ..profiles import ProfileStore
    from .service import DownloadService

    profiles = ProfileStore(os.path.join(paths.presets, "hardware"), os.path.join(paths.user_data,
                                                                                  "model_settings.json"))
    return DownloadService(paths, profiles)


def cmd_download(args: argparse.Namespace, paths) -> int:
    service = _services(paths)
    if args.discard:
        service.discard(args.name or "")
        print(f"Deleted the unfinished download {args.name}.")
        return 0
    if not args.spec:
        rows = service.unfinished()
        for r in rows:
            print(f"{r['name']}: {r['repo_id']}:{r['label']}, {_size(r['done_bytes'])} of {_size(r['total_bytes'])} "
                  f"kept; resume: python -m workbench download {r['repo_id']}:{r['label']} --name {r['name']}")
        if not rows:
            print("No unfinished downloads. Give a repo: python -m workbench download org/name[:QUANT]")
        return 0
    listing = service.find(args.spec, args.profile, args.n_ctx)
    choice = split_spec(args.spec)[1]
    chosen = None
    if choice:
        form = pick([p.form for p in listing.plans], choice, listing.repo_id)
        chosen = next(p for p in listing.plans if p.form == form)
    if args.json and (args.list or chosen is None):
        print(json.dumps(_listing_dict(listing), indent=2))
        return 0
    if args.list or chosen is None:
        print_listing(listing)
        return 0
    print(f"{listing.repo_id}:{chosen.form.label} ({_size(chosen.form.size)}): {chosen.verdict}", file=sys.stderr)
    if chosen.fits is False:
        print("warning: it does not fit as planned; it downloads anyway (a smaller context may fit)", file=sys.stderr)
    job = service.enqueue(listing, chosen.form.label, args.name)
    return _follow(service, job, args.json)


def _follow(service, job: str, as_json: bool) -> int:
    tty = sys.stderr.isatty() and not as_json
    last = 0.0
    try:
        while True:
            p = service.wait(job, 0.5)
            ended = p.state not in ("queued", "running")
            if as_json and (ended or time.monotonic() - last >= 1.0):
                print(json.dumps(p.to_dict()), flush=True)
                last = time.monotonic()
            elif not ended and time.monotonic() - last >= (0.5 if tty else 2.0):
                print(("\r" if tty else "") + _progress_line(p).ljust(79 if tty else 0), end="" if tty else "\n",
                      file=sys.stderr, flush=True)
                last = time.monotonic()
            if ended:
                break
    except KeyboardInterrupt:
        service.cancel(job)
        p = service.wait(job, 30)
    if tty:
        print(file=sys.stderr)
    if p.state == DONE:
        if not as_json:
            print(p.message, file=sys.stderr)
        print(os.path.join(service.paths.models, p.name))
        return 0
    print(("" if p.state == CANCELLED else "error: ") + p.message, file=sys.stderr)
    return 130 if p.state == CANCELLED else 2


def _listing_dict(listing: RepoListing) -> dict:
    return {"repo_id": listing.repo_id, "commit": listing.commit, "target": listing.target,
            "recommended": listing.recommended, "bytes_fetched": listing.bytes_fetched,
            "other_files": list(listing.other_files),
            "forms": [{"label": p.form.label, "kind": p.form.kind, "size": p.form.size, "name": p.form.default_name,
                       "files": [f.name for f in p.form.files], "fits": p.fits, "n_ctx": p.n_ctx,
                       "needs_bytes": p.needs_bytes, "max_n_ctx": p.max_n_ctx, "quantization": p.quantization,
                       "verdict": p.verdict, "header_bytes": p.header_bytes} for p in listing.plans]}


def main(argv: list[str] | None = None) -> int:
    """`python -m workbench.downloads.cli ...`: the subcommand on its own, with the main CLI's error handling."""
    from ..errors import WorkbenchError
    from ..paths import Paths

    parser = argparse.ArgumentParser(prog="python -m workbench")
    add_download_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["download", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args, Paths.default())
    except WorkbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
