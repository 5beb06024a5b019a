"""What a training run is asked to do: the TrainConfig dataclass, its checks, and its YAML form.

A run's `config.yaml` is written once when the run starts and read again to resume it, so
the same options come back after a crash or a restart. Unknown keys and wrong types are
refused with the key and its line, like presets.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields

from ..errors import WorkbenchError
from ..preset_store import KeyChecker, PresetError, load_mapping

LORA, SCRATCH = "lora", "scratch"
METHODS = (LORA, SCRATCH)
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
BYTE_TOKENIZER = "byte"
RDZV = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252}):([1-9][0-9]{0,4})$")
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class TrainConfigError(WorkbenchError):
    """A training option is out of range or unknown."""


@dataclass
class TrainConfig:
    name: str = "run"                         # run folder name under user_data/runs/
    method: str = LORA                        # lora: adapter on a model; scratch: a new small GPT
    base_model: str = ""                      # lora: the Transformers model (entry of models/ or a path from the CLI)
    dataset: str = ""                         # training file: .txt, .json or .jsonl
    validation_file: str = ""                 # optional separate validation file
    validation_fraction: float = 0.1          # held out from the dataset when there is no validation file
    cutoff_len: int = 256                     # tokens per example (longer ones are cut)
    overlap: int = 32                         # raw text: tokens shared by consecutive chunks
    # LoRA
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # from scratch
    tokenizer: str = BYTE_TOKENIZER           # "byte" or a model whose tokenizer to reuse
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    output_model: str = ""                    # scratch: folder name in models/ (default: the run name)
    # optimisation
    learning_rate: float = 2e-4
    scheduler: str = "cosine"
    warmup_steps: int = 0
    epochs: float = 3.0
    max_steps: int = 0                        # > 0 overrides epochs
    batch_size: int = 4
    grad_accum: int = 1
    eval_every: int = 0                       # steps between validation passes; 0 = once per epoch
    save_every: int = 50                      # steps between checkpoints
    early_stopping_patience: int = 0          # validation passes without improvement before stopping; 0 = off
    seed: int = 42
    threads: int = 0                          # CPU threads; 0 = physical cores (shared among the processes)
    # data parallel (torch.distributed): the global batch is batch_size x grad_accum, whatever the count
    processes: int = 1                        # training processes on this machine (> 1: launched with torchrun)
    nnodes: int = 1                           # machines taking part (> 1: start the others with the printed command)
    node_rank: int = 0                        # this machine's number among them (0 writes the run's files)
    rdzv: str = ""                            # host:port of machine 0 (several machines); one machine: 127.0.0.1

    def validate(self) -> "TrainConfig":
        def bad(msg):
            raise TrainConfigError(msg)

        if not isinstance(self.name, str) or not RUN_NAME.match(self.name):
            bad(f"Run name {self.name!r} is not allowed; use letters, digits, '-', '_' or '.' (up to 64).")
        if self.method not in METHODS:
            bad(f"Method {self.method!r} is unknown; use lora or scratch.")
        if self.method == LORA and not self.base_model:
            bad("LoRA training needs a base model; pick a Transformers model (convert a GGUF one first).")
        if not self.dataset:
            bad("No dataset was given; pick a text, JSON or JSONL file.")
        if not 0 <= self.validation_fraction < 0.9:
            bad("The validation fraction must be between 0 and 0.9.")
        if not 8 <= self.cutoff_len <= 32768:
            bad(f"Cutoff length {self.cutoff_len} must be between 8 and 32768 tokens.")
        if not 0 <= self.overlap < self.cutoff_len:
            bad("Overlap must be at least 0 and smaller than the cutoff length.")
        if not 1 <= self.lora_rank <= 1024 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            bad("LoRA rank must be 1-1024, alpha above 0 and dropout between 0 and 1.")
        if self.method == LORA and not self.target_modules:
            bad("Name at least one target module for LoRA (for example q_proj, v_proj).")
        if self.method == SCRATCH:
            if not (1 <= self.n_layer <= 64 and 1 <= self.n_head <= 64 and 8 <= self.n_embd <= 8192):
                bad("A scratch model needs 1-64 layers, 1-64 heads and a width of 8-8192.")
            if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
                bad(f"The width {self.n_embd} must divide into {self.n_head} heads of an even size.")
        if not 0 < self.learning_rate < 1:
            bad("The learning rate must be between 0 and 1 (2e-4 is a good start for LoRA).")
        if self.scheduler not in SCHEDULERS:
            bad(f"Scheduler {self.scheduler!r} is unknown; use one of {', '.join(SCHEDULERS)}.")
        if self.epochs <= 0 and self.max_steps <= 0:
            bad("Train for some epochs or set max steps.")
        for key in ("warmup_steps", "max_steps", "eval_every", "early_stopping_patience", "threads"):
            if getattr(self, key) < 0:
                bad(f"{key} cannot be negative.")
        if not 1 <= self.batch_size <= 1024 or not 1 <= self.grad_accum <= 1024:
            bad("Batch size and gradient accumulation must be between 1 and 1024.")
        if self.save_every < 1:
            bad("Save every must be at least 1 step.")
        if not 1 <= self.processes <= 256 or not 1 <= self.nnodes <= 1024:
            bad("Processes must be between 1 and 256 and machines between 1 and 1024.")
        if not 0 <= self.node_rank < self.nnodes:
            bad(f"The machine number (node rank) {self.node_rank} must be between 0 and {self.nnodes - 1}.")
        if self.nnodes > 1 and not RDZV.match(self.rdzv or ""):
            bad("Training on several machines needs the rendezvous address of machine 0 as host:port "
                "(for example 10.0.0.5:29500).")
        if self.rdzv and (not RDZV.match(self.rdzv) or int(self.rdzv.rsplit(":", 1)[1]) > 65535):
            bad(f"The rendezvous address {self.rdzv!r} must be host:port (for example 10.0.0.5:29500).")
        world = self.world_size
        if (self.batch_size * self.grad_accum) % world:
            bad(f"The global batch (batch size {self.batch_size} x accumulation {self.grad_accum}) must divide "
                f"evenly among the {world} processes; make it a multiple of {world}.")
        return self

    @property
    def world_size(self) -> int:
        """Training processes on all machines together."""
        return self.processes * self.nnodes

    def per_process_batch(self) -> tuple[int, int]:
        """(batch per process, accumulation steps) that keep the global batch batch_size x grad_accum.

        Each process takes global / world examples per optimizer step: in micro-batches as large as
        possible without exceeding batch_size, so memory per process never grows."""
        share = self.batch_size * self.grad_accum // self.world_size
        micro = math.gcd(share, self.batch_size)
        return micro, share // micro

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    @classmethod
    def from_dict(cls, data: dict, where: str = "training options", lines: dict | None = None) -> "TrainConfig":
        check = KeyChecker(where, lines or {})
        types = {f.name: _allowed_types(f.type) for f in fields(cls)}
        try:
            check.only(data, set(types))
        except PresetError as e:
            raise TrainConfigError(str(e)) from e
        clean = dict(data)
        if isinstance(clean.get("target_modules"), str):
            clean["target_modules"] = [m.strip() for m in clean["target_modules"].split(",") if m.strip()]
        for key in ("validation_file", "base_model", "output_model", "rdzv"):
            if clean.get(key) is None:
                clean[key] = ""
        try:
            check.typed(clean, types)
        except PresetError as e:
            raise TrainConfigError(str(e)) from e
        if not all(isinstance(m, str) for m in clean.get("target_modules", [])):
            raise TrainConfigError(f"{where}: target_modules must be a list of module names.")
        return cls(**clean).validate()

    @classmethod
    def from_yaml(cls, text: str, where: str) -> "TrainConfig":
        try:
            data, lines = load_mapping(text, where)
        except PresetError as e:
            raise TrainConfigError(str(e)) from e
        return cls.from_dict(data, where, lines)


def _allowed_types(annotation: str) -> tuple:
    return {"str": (str,), "int": (int,), "float": (int, float), "list[str]": (list,)}[annotation]
