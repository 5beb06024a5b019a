"""The memory plan: before a load, where every byte will go, for every backend.

From detected metadata, load options and the hardware it computes, per device (each
GPU, RAM, disk): weights (which layers go where), KV cache for the context, compute
buffers and runtime overhead; whether that fits the caps; and, in auto mode, the
largest n_gpu_layers and context that fit. One plan type serves llama.cpp,
Transformers and GPTQ. The constants were calibrated against measured worker RSS of
the sample model (bench/bench_plan.py re-measures them); they are estimates, not promises.
Imports no engine.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Protocol

from .detect import GGUF, Detection
from .errors import WorkbenchError
from .hardware import Hardware
from .options import LoadOptions

KiB, MiB, GiB = 2**10, 2**20, 2**30
KV_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# Calibrated on the sample model (see module docstring). Each backend's own process size and
# kernel constants are on its PlanStrategy (backends/registry.py).
GGUF_PER_VOCAB = 166             # tokenizer tables and output buffers, bytes per vocab entry (measured
                                 # between 49k- and 152k-entry vocabularies of one tiny model)
GGUF_COMPUTE_BASE = 5 * MiB      # activations for one micro-batch, without flash attention
GGUF_KQ_BYTES = 6.4              # per (context x micro-batch x head) without flash attention
GGUF_FLASH_COMPUTE_BASE = 12.5 * MiB  # the same two with flash attention (no full KQ matrix)
GGUF_FLASH_KQ_BYTES = 0.32
CUDA_CONTEXT_BASE = 300 * MiB     # CUDA context per GPU: the driver's share grows with the card's memory;
CUDA_CONTEXT_PER_GIB = 2.9 * MiB  # measured 711 MiB on a 141 GiB H200 (llama.cpp, CUDA 13), ~300 on 8-24 GiB
TORCH_ATTN_BYTES = 1.63           # per (context x prompt chunk x head) during chunked prefill
TORCH_ACT_FACTOR = 16             # activation bytes per (prompt-chunk token x hidden unit)


@dataclass(frozen=True)
class GGUFDequantCost:
    """What transformers' GGUF loader holds while it loads, beside the loaded weights (measured on the
    sample, a 1.07B-parameter model and tiny models of five architectures, within 6% of each peak).

    It parses the file's metadata into Python objects (a cost per tokenizer string: tokens and merges),
    then holds the larger of two things: the file's pages, once every tensor has been read, or at the
    start the embedding dequantized to float32 and copied (per vocabulary x width value), before most of
    the weights exist. The constant is what the measured `load_overhead` already covers.
    """

    per_tokenizer_string: float
    per_embedding_value: float
    constant: int

    def bytes(self, detection: Detection, weights: int) -> int:
        embedding = (detection.vocab_size or 0) * (detection.embedding_size or 0)
        held = max(detection.size_bytes, int(self.per_embedding_value * embedding) - weights)
        return max(int(self.per_tokenizer_string * (detection.tokenizer_strings or 0)) + held + self.constant, 0)


@dataclass(frozen=True)
class PlanStrategy:
    """How the planner sizes one backend's loads; each BackendSpec carries one."""

    layout: str                     # "gguf": per-block sizes from the GGUF header, n_gpu_layers split;
                                    # "torch": parameters x dtype, accelerate placement under the caps;
                                    # "remote": no local weights (the model runs on another server)
    runtime: int                    # the worker process itself (python and the engine's libraries)
    weights_as_stored: bool = False  # quantized: weights take their on-disk size, not parameters x dtype
    dequant_per_param: float = 0.0   # bytes per quantized parameter the CPU kernel keeps dequantized
    load_overhead: int = 0           # "torch" layout: what loading and a first prompt add beside the weights
                                     # (allocator pools, tokenizer, buffers), measured; counted as runtime
    context_past_model: bool = False  # a context past the model's own is allowed (with a note), not capped
    unties_head: bool = False        # the loader gives a tied output head its own copy (GPTQModel keeps the
                                     # unquantized head apart from the embedding)
    gguf_dequant: GGUFDequantCost | None = None  # "torch" layout loading a GGUF: what dequantizing holds
    cuda_host_runtime: int = 0       # what the process adds in RAM once it uses a GPU (CUDA libraries, their
                                     # host buffers), measured
    probe_imports: tuple[str, ...] = ()  # modules whose import size is measured on each machine
    probe_reference: int = 0         # what that import measured where `runtime` was calibrated
                                     # (runtime_probe.py moves `runtime` by the difference)

    def calibrated(self, import_rss: int | None) -> "PlanStrategy":
        """This strategy with `runtime` moved by what the probe measured here against the reference."""
        if not import_rss or not self.probe_reference:
            return self
        return replace(self, runtime=max(self.runtime + import_rss - self.probe_reference, 0))



class PlanRefused(WorkbenchError):
    """A load that cannot fit the caps; refused before loading."""


@dataclass
class DevicePlan:
    device: str                   # "cpu", "cuda:0", "disk"
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0              # compute and output buffers, kernel copies of weights
    runtime: int = 0              # the process itself (python, engine libraries, CUDA context)
    cap: int | None = None        # bytes the model may use here (the user's cap or what is free)
    cap_source: str = ""          # "cap" (set by the user) or "free" (what the machine has)
    layers: int = 0               # transformer blocks placed here

    @property
    def model_bytes(self) -> int:
        """What the model uses here; this is what a cap limits."""
        return self.weights + self.kv_cache + self.compute

    @property
    def total(self) -> int:
        """Predicted resident memory of the worker on this device."""
        return self.model_bytes + self.runtime

    @property
    def fits(self) -> bool:
        return self.cap is None or self.model_bytes <= self.cap


@dataclass
class MemoryPlan:
    backend: str
    n_ctx: int
    n_gpu_layers: int | None      # set where the user splits layers between GPU and CPU (gguf layout)
    n_layers: int
    devices: list[DevicePlan] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    max_n_ctx: int | None = None  # the largest context that fits, when the chosen one does not
    notes: list[str] = field(default_factory=list)
    parallel: int = 1             # sequences generated at once, each with a KV cache of n_ctx tokens
    tensor_split: tuple[int, ...] | None = None  # gguf layout: layers per offload device (RPC servers, first GPU)

    @property
    def fits(self) -> bool:
        return not self.problems

    def device(self, name: str) -> DevicePlan | None:
        return next((d for d in self.devices if d.device == name), None)

    def to_dict(self) -> dict:
        """The plan for the wire and JSON files, with each device's derived totals."""
        d = asdict(self)
        for dev, src in zip(d["devices"], self.devices):
            dev["total"] = src.total
            dev["model_bytes"] = src.model_bytes
        d["fits"] = self.fits
        return d

    def ram_total(self) -> int:
        """Predicted resident memory of the worker in RAM."""
        return sum(d.total for d in self.devices if d.device == "cpu")

    def vram_total(self) -> int:
        return sum(d.total for d in self.devices if d.device.startswith("cuda"))


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n < 10 * GiB else f"{n / GiB:.1f} GiB"


def _gguf_layer_bytes(detection: Detection) -> tuple[int, int, int]:
    """(bytes per transformer block, embedding bytes, output-head bytes) from the GGUF header."""
    from .gguf_reader import read_gguf_header

    header = read_gguf_header(detection.path)
    blocks, embed, output = 0, 0, 0
    for t in header.tensors:
        size = t.n_bytes() or 0
        if t.name.startswith("blk."):
            blocks += size
        elif t.name.startswith("token_embd"):
            embed += size
        else:
            output += size
    return blocks // max(detection.n_layers or 1, 1), embed, output


def _kv_per_token_per_layer(detection: Detection, elem_bytes: float) -> float:
    kv_dim = (detection.n_kv_heads or detection.n_heads or 1) * (detection.head_dim or 64)
    return 2 * kv_dim * elem_bytes


def _geometry_check(detection: Detection) -> None:
    if not detection.n_layers or not (detection.head_dim or detection.embedding_size):
        raise WorkbenchError(
            f"{os.path.basename(detection.path)} does not say how many layers or heads it has, so no memory plan "
            "can be made; check its config.json or GGUF metadata."
        )


def cuda_context_bytes(gpu_total_bytes: int) -> int:
    """GPU memory a process's CUDA context takes on a card of this size (before any model buffer)."""
    return int(CUDA_CONTEXT_BASE + CUDA_CONTEXT_PER_GIB * gpu_total_bytes / GiB)


def _gpu_caps(options: LoadOptions, hw: Hardware) -> list[DevicePlan]:
    gpus = []
    for g in hw.gpus:
        cap, source = (int(options.max_vram_gib * GiB), "cap") if options.max_vram_gib else (g.free_bytes, "free")
        gpus.append(DevicePlan(f"cuda:{g.index}", cap=min(cap, g.total_bytes), cap_source=source,
                               runtime=cuda_context_bytes(g.total_bytes)))
    return gpus


def _ram_cap(options: LoadOptions, hw: Hardware) -> tuple[int, str]:
    if options.max_ram_gib:
        return int(options.max_ram_gib * GiB), "cap"
    return hw.ram_available_bytes, "free"


def _split_layers(n: int, weights: list[int]) -> list[int]:
    """`n` layers over devices in proportion to `weights` (their free memory), as llama.cpp's default
    tensor split does; the remainder goes to the devices with the largest fractions."""
    total = sum(weights)
    if not weights or total <= 0:
        return [n] + [0] * (len(weights) - 1) if weights else []
    exact = [n * w / total for w in weights]
    shares = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)[: n - sum(shares)]:
        shares[i] += 1
    return shares


def _plan_gguf(detection: Detection, options: LoadOptions, hw: Hardware, n_ctx: int, backend: str,
               strategy: PlanStrategy, slots: int) -> MemoryPlan:
    n_layers = detection.n_layers
    layer_bytes, embed_bytes, output_bytes = _gguf_layer_bytes(detection)
    kv_layer = _kv_per_token_per_layer(detection, KV_BYTES[options.cache_type]) * n_ctx * slots
    n_ubatch = min(options.n_batch, 512)
    base, kq = ((GGUF_FLASH_COMPUTE_BASE, GGUF_FLASH_KQ_BYTES) if options.flash_attn
                else (GGUF_COMPUTE_BASE, GGUF_KQ_BYTES))
    compute = int(base + kq * n_ctx * n_ubatch * (detection.n_heads or 1))
    cap, source = _ram_cap(options, hw)
    cpu = DevicePlan("cpu", cap=cap, cap_source=source, runtime=strategy.runtime)
    vocab_buffers = GGUF_PER_VOCAB * (detection.vocab_size or 32000)
    gpus = _gpu_caps(options, hw)[:1]  # each RPC server, then the first local GPU, take offloaded layers
    contexts = [g.runtime for g in gpus]
    rpc = [DevicePlan(f"rpc:{r.endpoint}", cap=r.free_bytes, cap_source="free") for r in hw.rpc]
    offload = rpc + gpus  # llama.cpp's device order: RPC servers first (fewer network hops), then GPUs
    plan = MemoryPlan(backend, n_ctx, 0, n_layers, devices=[cpu], parallel=slots)

    def place(n_gpu: int) -> None:
        gpu_layers = min(n_gpu, n_layers)
        plan.n_gpu_layers = n_gpu
        cpu.weights = embed_bytes + layer_bytes * (n_layers - gpu_layers) + (output_bytes if n_gpu <= n_layers else 0)
        cpu.kv_cache = int(kv_layer * (n_layers - gpu_layers))
        cpu.layers = n_layers - gpu_layers
        cpu.compute = vocab_buffers + (compute if gpu_layers < n_layers or not offload else compute // 4)
        shares = _split_layers(gpu_layers, [d.cap or 0 for d in offload])
        last = max((i for i, n in enumerate(shares) if n), default=None)  # the output head goes with the last layer
        for i, (dev, layers) in enumerate(zip(offload, shares)):
            dev.layers = layers
            dev.weights = layer_bytes * layers + (output_bytes if n_gpu > n_layers and i == last else 0)
            dev.kv_cache = int(kv_layer * layers)
            dev.compute = compute if layers else 0
        for g, context in zip(gpus, contexts):
            g.runtime = context if g.layers else 0
        cpu.runtime = strategy.runtime + (strategy.cuda_host_runtime if any(g.layers for g in gpus) else 0)

    if not offload:
        if options.n_gpu_layers not in (None, 0):
            plan.notes.append("No GPU was found, so all layers run on the CPU.")
        place(0)
    else:
        plan.devices[:0] = offload
        if options.n_gpu_layers is None:  # auto: the most layers that fit (more layers never use less)
            best, lo, hi = 0, 0, n_layers + 1
            while lo <= hi:  # a binary search: a model's claimed layer count does not set the time taken
                mid = (lo + hi) // 2
                place(mid)
                if all(d.fits for d in offload):
                    best, lo = mid, mid + 1
                else:
                    hi = mid - 1
            place(best)
            where = " and ".join(d.device for d in offload)
            plan.notes.append(f"Auto: {min(best, n_layers)} of {n_layers} layers fit on {where}.")
        else:
            place(n_layers + 1 if options.n_gpu_layers < 0 else options.n_gpu_layers)
        if rpc:
            plan.notes.append("Layers on RPC servers: " + ", ".join(f"{d.device[4:]} {d.layers}" for d in rpc)
                              + " (each server's free memory sets its share).")
        plan.tensor_split = tuple([d.layers for d in offload])
    return plan


def _torch_dtype_bytes(options: LoadOptions) -> int:
    return 4 if options.dtype == "float32" else 2


def _plan_torch(detection: Detection, options: LoadOptions, hw: Hardware, n_ctx: int, backend: str,
                strategy: PlanStrategy, slots: int) -> MemoryPlan:
    n_layers = detection.n_layers
    elem = _torch_dtype_bytes(options)
    emb = detection.embedding_size or 0
    embed_bytes = (detection.vocab_size or 0) * emb * elem
    runtime = strategy.runtime
    quantized_params = 0
    if strategy.weights_as_stored:
        weights = detection.size_bytes
        quantized_params = max((detection.parameter_count or 0) - (detection.vocab_size or 0) * emb, 0)
    else:
        weights = (detection.parameter_count or detection.size_bytes // elem) * elem
    layer_bytes = max(weights - embed_bytes, 0) // n_layers
    kv_layer = _kv_per_token_per_layer(detection, elem) * n_ctx * slots
    chunk = min(options.n_batch, n_ctx)
    compute = int(TORCH_ATTN_BYTES * (detection.n_heads or 1) * chunk * n_ctx
                  + TORCH_ACT_FACTOR * chunk * emb + 4 * (detection.vocab_size or 0) * 2)
    cap, source = _ram_cap(options, hw)
    cpu = DevicePlan("cpu", cap=cap, cap_source=source, runtime=runtime)
    gpus = _gpu_caps(options, hw)[:1] if options.device != "cpu" else []
    if gpus:
        cpu.runtime += strategy.cuda_host_runtime
    devices = gpus + [cpu]
    first = devices[0]  # runs the embedding, the head, and every offloaded layer
    first.weights, first.compute = embed_bytes, compute
    if strategy.unties_head and detection.tied_embeddings:
        first.weights += embed_bytes  # measured: a 152k-vocabulary GPTQ model was 11% short without it
    cpu.runtime += strategy.load_overhead  # the process's, whatever the model: not under the cap
    # The KV cache is reserved on the main device: offloaded layers run there too (conservative for
    # layers a GPU box keeps on the CPU).
    first.kv_cache = int(n_layers * kv_layer)
    remaining = n_layers
    for dev in devices:
        per_layer = layer_bytes
        if dev is cpu and not options.max_ram_gib:
            take = remaining
        else:
            room = max((dev.cap or 0) - dev.model_bytes, 0)
            take = min(remaining, int(room // max(per_layer, 1)))
        dev.layers = take
        dev.weights += take * layer_bytes
        if dev is cpu:
            dev.compute += int(strategy.dequant_per_param * quantized_params * take / n_layers)
        remaining -= take
    plan = MemoryPlan(backend, n_ctx, None, n_layers, devices=devices, parallel=slots)
    if detection.format == GGUF and strategy.gguf_dequant:
        load = strategy.gguf_dequant.bytes(detection, weights)
        cpu.compute += load
        plan.notes.append(f"Loading a GGUF with this backend dequantizes it: {load / MiB:.0f} MiB more while it "
                          "loads (counted in compute).")
    if remaining:
        plan.devices.append(DevicePlan("disk", weights=remaining * layer_bytes, cap=hw.disk_free_bytes,
                                       cap_source="free", layers=remaining))
        plan.notes.append(f"{remaining} of {n_layers} layers are offloaded to disk: loading works, generation is slow.")
    return plan


def _check(plan: MemoryPlan) -> None:
    for dev in plan.devices:
        if dev.fits:
            continue
        where = "RAM" if dev.device == "cpu" else ("disk" if dev.device == "disk" else f"VRAM on {dev.device}")
        limit = "cap is" if dev.cap_source == "cap" else "free is"
        # The cap limits the model (weights, KV cache, compute); the table's total adds the process runtime.
        runtime = f" (the worker's total is {gib(dev.total)} with its runtime)" if dev.runtime else ""
        plan.problems.append(f"needs {gib(dev.model_bytes)} {where} for the model, {limit} {gib(dev.cap)}{runtime}")


def _largest_fitting(build, lo: int, hi: int) -> int | None:
    """The largest context in [lo, hi] (a multiple of 256, or hi itself) whose plan fits, or None."""
    if build(hi).fits:
        return hi
    best = None
    while lo <= hi:
        mid = max((lo + hi) // 2 // 256 * 256, 256)
        if build(mid).fits:
            best, lo = mid, mid + 256
        else:
            hi = mid - 256
    return best


class PlannedBackend(Protocol):
    """What the planner needs of a backend (a BackendSpec has all of it)."""

    name: str
    planner: PlanStrategy

    def uses(self, option: str) -> bool: ...


AUTO_PARALLEL = 4  # slots the planner gives a batching backend when the user leaves it at 0 and they fit


def make_plan(detection: Detection, backend: PlannedBackend, options: LoadOptions, hw: Hardware) -> MemoryPlan:
    """The memory plan for loading `detection` with `backend` and `options` on `hw`.

    With `options.n_ctx == 0` (auto) it plans the largest context that fits, up to the model's own.
    """
    strategy = backend.planner
    if strategy.layout == "remote":
        return _plan_remote(detection, backend, options, hw)
    _geometry_check(detection)
    model_max = detection.context_length or 4096
    layout = _plan_gguf if strategy.layout == "gguf" and detection.format == GGUF else _plan_torch
    batching = backend.uses("parallel")

    def build(ctx: int, slots: int) -> MemoryPlan:
        p = layout(detection, options, hw, ctx, backend.name, strategy, slots)
        _check(p)
        return p

    slots = (options.parallel or 1) if batching else 1
    if options.n_ctx == 0:
        chosen = _largest_fitting(lambda ctx: build(ctx, slots), 256, model_max)
        n_ctx = chosen or 256
        note = f"Auto context: {n_ctx} tokens" + (" (the model's maximum)." if chosen == model_max
                                                  else ", the largest that fits.")
    else:
        n_ctx = options.n_ctx if strategy.context_past_model else min(options.n_ctx, model_max)
        note = None
    if batching and options.parallel == 0:
        slots = next((n for n in range(AUTO_PARALLEL, 1, -1) if build(n_ctx, n).fits), 1)
    plan = build(n_ctx, slots)
    if note:
        plan.notes.append(note)
    if batching and slots > 1:
        plan.notes.append(f"{slots} requests generate at once, each with a context of {n_ctx} tokens "
                          f"(the KV cache holds {slots} x {n_ctx})." + (" Auto: the most that fit, up to "
                                                                         f"{AUTO_PARALLEL}." if not options.parallel
                                                                         else ""))
    if options.n_ctx == 0:
        return plan
    if not plan.fits:
        plan.max_n_ctx = _largest_fitting(lambda ctx: build(ctx, slots), 256, n_ctx - 1)
    if n_ctx != options.n_ctx:
        plan.notes.append(f"Context capped at the model's maximum of {n_ctx} tokens.")
    elif detection.context_length and n_ctx > detection.context_length:
        plan.notes.append(f"The model was trained on a context of {detection.context_length} tokens; "
                          "past that its replies degrade.")
    return plan


REMOTE_CONTEXT = 8192   # a remote entry's context when neither the user nor its file says
REMOTE_PARALLEL = 16    # requests a remote entry sends at once when the user leaves parallel at 0


def _plan_remote(detection: Detection, backend: PlannedBackend, options: LoadOptions, hw: Hardware) -> MemoryPlan:
    """A model served by another machine: no local weights, only the worker process (the HTTP client)."""
    cap, source = _ram_cap(options, hw)
    known = detection.context_length  # the server's context, when the entry says it
    n_ctx = (min(options.n_ctx, known) if options.n_ctx else known) if known else (options.n_ctx or REMOTE_CONTEXT)
    slots = (options.parallel or REMOTE_PARALLEL) if backend.uses("parallel") else 1
    plan = MemoryPlan(backend.name, n_ctx, None, 0, parallel=slots,
                      devices=[DevicePlan("cpu", cap=cap, cap_source=source, runtime=backend.planner.runtime)])
    plan.notes.append("Remote: no local weights; the model runs on the server this entry names, "
                      f"up to {slots} requests at once.")
    _check(plan)
    return plan


def refusal(plan: MemoryPlan) -> str:
    """One sentence: what does not fit and what to change."""
    what = "; ".join(plan.problems)
    fixes = []
    if plan.max_n_ctx:
        fixes.append(f"lower context to {plan.max_n_ctx}")
    if plan.n_gpu_layers is not None and any(d.device.startswith(("cuda", "rpc")) and not d.fits for d in plan.devices):
        fixes.append("use fewer GPU layers" if any(d.device.startswith("cuda") for d in plan.devices)
                     else "put fewer layers on the RPC servers (GPU layers) or add a server")
    if plan.parallel > 1:
        fixes.append(f"lower parallel requests below {plan.parallel}")
    fixes.append("raise the cap" if any(d.cap_source == "cap" and not d.fits for d in plan.devices)
                 else "free memory or pick a smaller model")
    return f"This load {what}: {' or '.join(fixes)}."


def check_plan(plan: MemoryPlan) -> None:
    """Raise PlanRefused with the refusal sentence when the plan does not fit."""
    if not plan.fits:
        raise PlanRefused(refusal(plan))


def plan_table(plan: MemoryPlan) -> str:
    """A plan as a narrow text table: one column per device, one row per part; "model" is what a cap
    limits, "total" adds the process runtime (so the table and a refusal name the same numbers)."""
    lines = [f"{plan.backend}, context {plan.n_ctx}"
             + (f", n_gpu_layers {plan.n_gpu_layers}" if plan.n_gpu_layers is not None else "")
             + (f", {plan.parallel} parallel" if plan.parallel > 1 else "")]

    def mib(n: int | None) -> str:
        return "-" if not n else (f"{n / GiB:.1f} GiB" if n >= 10 * GiB else f"{n / MiB:.0f} MiB")

    rows = [("", [d.device for d in plan.devices]), ("layers", [str(d.layers) for d in plan.devices]),
            ("weights", [mib(d.weights) for d in plan.devices]), ("KV cache", [mib(d.kv_cache) for d in plan.devices]),
            ("compute", [mib(d.compute) for d in plan.devices]), ("model", [mib(d.model_bytes) for d in plan.devices]),
            ("cap", [mib(d.cap) + ("" if d.cap_source == "cap" or not d.cap else " free") for d in plan.devices]),
            ("runtime", [mib(d.runtime) for d in plan.devices]), ("total", [mib(d.total) for d in plan.devices])]
    widths = [max(15, len(d.device) + 2) for d in plan.devices]  # an RPC server's host:port is long
    for label, cells in rows:
        lines.append(f"{label:9}" + "".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    lines += plan.notes
    lines.append("fits" if plan.fits else "DOES NOT FIT: " + "; ".join(plan.problems))
    return "\n".join(lines)
