"""Plans each form of a remote repo before any weight is fetched: headers over HTTP Range requests.

A GGUF header is fetched in growing prefixes until it parses, written into a sparse temp file of
the real size (so the file reads as complete to `gguf_reader` while using only the header's bytes
on disk), detected with `detect.detect` and planned. A safetensors form is planned the same way
from config.json and each weight file's header. `plan_load` is the one call into the planner.
It owns no download and writes nothing in models/.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import tempfile

from ..detect import Detection, detect
from ..errors import WorkbenchError
from ..hardware import GPU, Hardware
from ..options import LoadOptions
from .errors import DownloadError, NoMatchingFile
from .forms import group_forms, parse_config
from .hub import Hub
from .types import AWQ_FORM, GGUF_FORM, Form, FormPlan, RepoListing, RepoSnapshot

GiB = 2**30
FIRST_PREFIX = 1 << 20           # most GGUF headers are 1-10 MiB (the token list dominates)
MAX_HEADER = 512 << 20           # a header larger than this is not a real header
_FOLDER_SMALL_FILES = ("config.json", "quantize_config.json", "model.safetensors.index.json")


def plan_load(detection: Detection, options: LoadOptions, hw: Hardware):
    """The memory plan for `detection` with its default backend: the one place this package calls the planner."""
    from ..backends import registry
    from ..plan import make_plan

    if hasattr(registry, "default_registry"):  # the registry as an object (session 2)
        backend = registry.default_registry().default_for(detection.format)
    else:
        backend = registry.default_backend(detection.format)
    return make_plan(detection, backend, options, hw)


def profile_hardware(ram_gib: float | None, vram_gib: float | None, base: Hardware) -> Hardware:
    """The machine a hardware profile assumes: its RAM as free memory and one GPU with its VRAM."""
    gpus = (GPU(0, "profile GPU", int(vram_gib * GiB), int(vram_gib * GiB)),) if vram_gib else ()
    ram = int(ram_gib * GiB) if ram_gib else base.ram_available_bytes
    return dataclasses.replace(base, ram_total_bytes=ram, ram_available_bytes=ram, gpus=gpus)


def _sparse(path: str, head: bytes, size: int) -> None:
    """A file of `size` bytes whose first bytes are `head` and the rest a hole (no disk used)."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(max(size, len(head)))


def fetch_gguf_header(hub: Hub, repo_id: str, url: str, size: int, path: str, first: int = FIRST_PREFIX) -> int:
    """Write the GGUF header of the remote file into the sparse file `path`; return the bytes fetched."""
    from ..gguf_reader import read_gguf_header

    head = b""
    want = min(first, size)
    while True:
        head += hub.read_range(repo_id, url, len(head), want - 1)
        _sparse(path, head, size)
        try:
            header = read_gguf_header(path)
            # The parser read bytes up to data_offset at most; all of them real means the header is whole.
            if header.data_offset <= len(head) or len(head) >= size:
                return len(head)
        except WorkbenchError:
            if len(head) >= size or len(head) < want:  # the whole file, or the server had no more: it is broken
                raise
        if want >= min(size, MAX_HEADER):
            raise WorkbenchError(f"The GGUF header of {os.path.basename(url)} is larger than "
                                 f"{MAX_HEADER >> 20} MiB, so it is not a model header.")
        want = min(want * 2, size, MAX_HEADER)


def _safetensors_header(hub: Hub, repo_id: str, url: str, size: int, path: str) -> int:
    first = hub.read_range(repo_id, url, 0, 7)
    if len(first) < 8:
        raise WorkbenchError(f"{os.path.basename(path)} on the hub is too small to be a safetensors file.")
    (n,) = struct.unpack("<Q", first)
    if n > 100 << 20 or n + 8 > size:
        raise WorkbenchError(f"{os.path.basename(path)} on the hub has a malformed safetensors header.")
    header = hub.read_range(repo_id, url, 8, 8 + n - 1) if n else b""
    _sparse(path, first + header, size)
    return 8 + len(header)


def probe_form(hub: Hub, snapshot: RepoSnapshot, form: Form, folder: str,
               first_prefix: int = FIRST_PREFIX) -> tuple[str, int]:
    """Lay the form's headers out in `folder` as detection expects them; (path to detect, bytes fetched)."""
    fetched = 0
    if form.kind == GGUF_FORM:
        first = form.weights[0]
        path = os.path.join(folder, os.path.basename(first.name))
        url = hub.url(snapshot.repo_id, snapshot.commit, first.name)
        return path, fetch_gguf_header(hub, snapshot.repo_id, url, first.size or 0, path, first_prefix)
    names = {f.name for f in form.files}
    for small in _FOLDER_SMALL_FILES:
        if small in names:
            raw = hub.read_small(snapshot.repo_id, snapshot.commit, small)
            fetched += len(raw)
            with open(os.path.join(folder, small), "wb") as f:
                f.write(raw)
    for w in form.weights:
        url = hub.url(snapshot.repo_id, snapshot.commit, w.name)
        fetched += _safetensors_header(hub, snapshot.repo_id, url, w.size or 0, os.path.join(folder, w.name))
    return folder, fetched


def _verdict(detection: Detection, options: LoadOptions, hw: Hardware) -> dict:
    from ..plan import gib, refusal

    plan = plan_load(detection, options, hw)
    main = next((d for d in plan.devices if d.device != "disk" and d.layers), plan.devices[0])
    needs = sum(d.model_bytes for d in plan.devices)
    where = "RAM" if main.device == "cpu" else main.device
    if plan.fits:
        offload = " with layers on disk" if plan.device("disk") else ""
        text = f"fits at context {plan.n_ctx} ({gib(needs)} {where}{offload})"
    else:
        text = f"does not fit at context {plan.n_ctx}: {refusal(plan)[len('This load '):].rstrip('.')}"
    return {"fits": plan.fits, "n_ctx": plan.n_ctx, "needs_bytes": needs, "max_n_ctx": plan.max_n_ctx,
            "quantization": detection.quantization, "verdict": text}


def plan_form(hub: Hub, snapshot: RepoSnapshot, form: Form, options: LoadOptions, hw: Hardware,
              first_prefix: int = FIRST_PREFIX) -> FormPlan:
    """The form with its memory verdict, from its headers alone."""
    if form.kind == AWQ_FORM:
        return FormPlan(form, None, verdict="cannot plan: AWQ models do not load in the workbench; "
                                            "pick a GGUF or GPTQ form")
    if form.kind == GGUF_FORM and len(form.weights) > 1:
        return FormPlan(form, None, verdict=f"cannot plan: split GGUF in {len(form.weights)} parts")
    with tempfile.TemporaryDirectory(prefix="workbench-plan-") as folder:
        try:
            path, fetched = probe_form(hub, snapshot, form, folder, first_prefix)
            return FormPlan(form, header_bytes=fetched, **_verdict(detect(path), options, hw))
        except WorkbenchError as e:
            if isinstance(e, DownloadError) and not isinstance(e, NoMatchingFile):
                raise  # the hub failed: that is the answer, not a per-form note
            return FormPlan(form, None, verdict=f"cannot plan: {e}")


def list_repo(hub: Hub, repo_id: str, options: LoadOptions, hw: Hardware, target: str,
              only: str | None = None, revision: str | None = None) -> RepoListing:
    """The repo's forms, each planned from headers; `only` plans just the form it names."""
    from .forms import pick

    snapshot = hub.snapshot(repo_id, revision)
    names = {f.name for f in snapshot.files}
    fetched = 0
    config = None
    if "config.json" in names:
        raw = hub.read_small(snapshot.repo_id, snapshot.commit, "config.json")
        fetched += len(raw)
        config = parse_config(raw)
    forms, others = group_forms(snapshot, config, "quantize_config.json" in names)
    if not forms:
        raise WorkbenchError(f"{snapshot.repo_id} has no GGUF file and no safetensors model folder, so there is "
                             "nothing the workbench can load in it.")
    chosen = [pick(forms, only, snapshot.repo_id)] if only else forms
    plans, prefix = [], FIRST_PREFIX
    for form in forms:
        if form not in chosen:
            plans.append(FormPlan(form, None, verdict="not planned"))
            continue
        p = plan_form(hub, snapshot, form, options, hw, prefix)
        if form.kind == GGUF_FORM and p.header_bytes:
            prefix = p.header_bytes  # the quants of one repo have headers of about one size
        fetched += p.header_bytes
        plans.append(p)
    fitting = [p for p in plans if p.fits]
    ggufs = [p for p in fitting if p.form.kind == GGUF_FORM]
    best = max(ggufs or fitting, key=lambda p: p.form.size, default=None)
    return RepoListing(snapshot.repo_id, snapshot.commit, target, tuple(plans), best.form.label if best else None,
                       fetched, tuple(others))
