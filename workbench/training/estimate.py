"""Memory a training run will need, shown before it starts (the planner's view of training).

Parts, in bytes of CPU RAM (or GPU memory when the run is on a GPU):
- runtime: Python, torch, transformers and the Trainer (peft adds gptqmodel's import);
- weights: every parameter in float32, plus the half-precision copy read from disk while loading;
- optimizer: gradients and AdamW's two moments for each trained parameter (3 x 4 bytes);
- activations: kept for the backward pass, per token of the batch and layer;
- logits: the vocabulary-wide scores of every token, their softmax and gradient.
A run on several processes holds all of that in each of this machine's processes (each with
its share of the batch) plus torch.distributed's own (gloo, and DistributedDataParallel's first
broadcast of the weights in buckets of up to 250 MiB), so the total is one process's parts
times `processes`, plus the launcher (torchrun). Measured on the sample model, 2 processes on
CPU: rank 0 peaked at 1.99-2.06 GiB against 1.39 GiB for one process at the same global batch.
The constants were measured on this machine's runs of the sample model (see bench/bench_train.py,
which prints the estimate beside the measured peak).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import LORA, TrainConfig

MiB = 1024 * 1024
TRAIN_PROCESS = 450 * MiB      # python + torch + transformers + Trainer
PEFT_IMPORTS = 150 * MiB       # peft, which imports gptqmodel and optimum when they are installed
ACT_BYTES = 70                 # per (token x hidden unit x layer) kept for backward (attention + MLP), float32
DIST_RUNTIME = 300 * MiB       # per process on several: torch.distributed, gloo and its buffers
DDP_BROADCAST = 250 * MiB      # per process: DistributedDataParallel's broadcast bucket (capped by the weights)
LAUNCHER = 230 * MiB           # the launcher process (torchrun in workbench.training.launch)
LOGIT_COPIES = 5               # logits, their float copy, log-softmax, its gradient and the loss buffer


@dataclass
class TrainEstimate:
    runtime: int
    weights: int
    optimizer: int
    activations: int
    logits: int
    total_parameters: int
    trained_parameters: int
    processes: int = 1          # training processes on this machine; each holds all the parts above
    launcher: int = 0           # the launcher of a several-process run (once)

    @property
    def per_process(self) -> int:
        return self.runtime + self.weights + self.optimizer + self.activations + self.logits

    @property
    def total(self) -> int:
        return self.per_process * self.processes + self.launcher

    def to_dict(self) -> dict:
        return {**asdict(self), "per_process": self.per_process, "total": self.total}

    def summary(self) -> str:
        gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
        each = f" ({self.processes} processes of {gib(self.per_process)} each)" if self.processes > 1 else ""
        return (f"about {gib(self.total)}{each}: weights {gib(self.weights)}, optimizer {gib(self.optimizer)}, "
                f"activations {gib(self.activations + self.logits)}, runtime {gib(self.runtime)} "
                f"({self.trained_parameters:,} of {self.total_parameters:,} parameters trained)")


def lora_parameters(hidden: int, n_layers: int, n_targets: int, rank: int, intermediate: int | None = None) -> int:
    """Trained parameters of a LoRA on `n_targets` square-ish projections per layer (A: r x in, B: out x r)."""
    return n_layers * n_targets * rank * 2 * hidden


def estimate(config: TrainConfig, total_parameters: int, hidden: int, n_layers: int, vocab: int,
             stored_bytes_per_parameter: float = 2.0) -> TrainEstimate:
    """The estimate for `config` on a model of the given geometry."""
    batch = config.per_process_batch()[0] if config.world_size > 1 else config.batch_size
    tokens = batch * config.cutoff_len
    if config.method == LORA:
        trained = lora_parameters(hidden, n_layers, len(config.target_modules), config.lora_rank)
        runtime = TRAIN_PROCESS + PEFT_IMPORTS
        load_copy = int(total_parameters * stored_bytes_per_parameter)
    else:
        trained = total_parameters
        runtime = TRAIN_PROCESS
        load_copy = 0
    if config.world_size > 1:
        runtime += DIST_RUNTIME + min(DDP_BROADCAST, total_parameters * 4)
    return TrainEstimate(
        runtime=runtime,
        weights=total_parameters * 4 + load_copy,
        optimizer=trained * 12,
        activations=tokens * hidden * n_layers * ACT_BYTES,
        logits=tokens * vocab * 4 * LOGIT_COPIES,
        total_parameters=total_parameters,
        trained_parameters=trained,
        processes=config.processes,
        launcher=LAUNCHER if config.world_size > 1 else 0,
    )


def scratch_parameters(config: TrainConfig, vocab: int) -> int:
    """Parameters of the Llama-layout model model_setup.build_model makes (tied embeddings)."""
    h = config.n_embd
    inter = h * 8 // 3 // 8 * 8 or 8
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    return vocab * h + config.n_layer * per_layer + h
