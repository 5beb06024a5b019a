"""Memory a training run will need, shown before it starts (the planner's view of training).

Parts, in bytes of CPU RAM (or GPU memory when the run is on a GPU):
- runtime: Python, torch, transformers and the Trainer (peft adds gptqmodel's import);
- weights: every parameter in float32, plus the half-precision copy read from disk while loading;
- optimizer: gradients and AdamW's two moments for each trained parameter (3 x 4 bytes);
- activations: kept for the backward pass, per token of the batch and layer;
- logits: the vocabulary-wide scores of every token, their softmax and gradient.
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

    @property
    def total(self) -> int:
        return self.runtime + self.weights + self.optimizer + self.activations + self.logits

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}

    def summary(self) -> str:
        gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
        return (f"about {gib(self.total)}: weights {gib(self.weights)}, optimizer {gib(self.optimizer)}, "
                f"activations {gib(self.activations + self.logits)}, runtime {gib(self.runtime)} "
                f"({self.trained_parameters:,} of {self.total_parameters:,} parameters trained)")


def lora_parameters(hidden: int, n_layers: int, n_targets: int, rank: int, intermediate: int | None = None) -> int:
    """Trained parameters of a LoRA on `n_targets` square-ish projections per layer (A: r x in, B: out x r)."""
    return n_layers * n_targets * rank * 2 * hidden


def estimate(config: TrainConfig, total_parameters: int, hidden: int, n_layers: int, vocab: int,
             stored_bytes_per_parameter: float = 2.0) -> TrainEstimate:
    """The estimate for `config` on a model of the given geometry."""
    tokens = config.batch_size * config.cutoff_len
    if config.method == LORA:
        trained = lora_parameters(hidden, n_layers, len(config.target_modules), config.lora_rank)
        runtime = TRAIN_PROCESS + PEFT_IMPORTS
        load_copy = int(total_parameters * stored_bytes_per_parameter)
    else:
        trained = total_parameters
        runtime = TRAIN_PROCESS
        load_copy = 0
    return TrainEstimate(
        runtime=runtime,
        weights=total_parameters * 4 + load_copy,
        optimizer=trained * 12,
        activations=tokens * hidden * n_layers * ACT_BYTES,
        logits=tokens * vocab * 4 * LOGIT_COPIES,
        total_parameters=total_parameters,
        trained_parameters=trained,
    )


def scratch_parameters(config: TrainConfig, vocab: int) -> int:
    """Parameters of the Llama-layout model model_setup.build_model makes (tied embeddings)."""
    h = config.n_embd
    inter = h * 8 // 3 // 8 * 8 or 8
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    return vocab * h + config.n_layer * per_layer + h
