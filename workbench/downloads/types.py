"""The values that travel between the download modules, the CLI and the UI: plain frozen dataclasses.

A repo's files (`RepoFile`), the forms they make (`Form`), a form's memory verdict (`FormPlan`),
a repo's listing (`RepoListing`), a job's progress (`Progress`) and how hard to retry (`RetryPolicy`).
It owns no behaviour beyond small derived properties.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

GGUF_FORM, TRANSFORMERS_FORM, GPTQ_FORM, AWQ_FORM, SAFETENSORS_FORM = "gguf", "transformers", "gptq", "awq", "safetensors"
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


@dataclass(frozen=True)
class RepoFile:
    name: str                    # path inside the repo ("model.Q4_1.gguf", "sub/model.safetensors")
    size: int | None = None      # bytes (the real file, not an LFS pointer)
    sha256: str | None = None    # the LFS oid, for files kept in LFS
    blob_id: str | None = None   # the git blob sha1, for small files kept in git


@dataclass(frozen=True)
class RepoSnapshot:
    repo_id: str
    commit: str                  # the commit every file is fetched at, so a resume gets the same bytes
    files: tuple[RepoFile, ...]
    gated: bool = False


@dataclass(frozen=True)
class Form:
    """One way the model is offered: a GGUF quant, or the safetensors folder (plain, GPTQ or AWQ)."""

    label: str                   # "Q4_1", "transformers", "gptq", "awq"
    kind: str                    # GGUF_FORM, TRANSFORMERS_FORM, GPTQ_FORM, AWQ_FORM or SAFETENSORS_FORM
    files: tuple[RepoFile, ...]  # everything to download for this form
    weights: tuple[RepoFile, ...]  # the weight files among them (headers are read from these)
    default_name: str            # the entry it becomes in models/

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)


@dataclass(frozen=True)
class FormPlan:
    """A form with what the memory planner says about loading it, decided before any weight is fetched."""

    form: Form
    fits: bool | None            # None: could not be planned (the note says why)
    n_ctx: int | None = None     # the context the verdict is for
    needs_bytes: int | None = None  # memory the model needs on its main device
    max_n_ctx: int | None = None    # the largest context that fits, when n_ctx does not
    quantization: str | None = None  # from the header ("Q4_1", "gptq 4-bit g128", "bfloat16")
    verdict: str = ""            # "fits at context 4096 (0.37 GiB)" / "does not fit ..." / "cannot plan: ..."
    header_bytes: int = 0        # bytes fetched to make this plan

    @property
    def fit_text(self) -> str:
        return {True: "fits", False: "does not fit", None: "unknown"}[self.fits]


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    commit: str
    target: str                  # what the plans are for: "this machine" or "profile cpu-8gb"
    plans: tuple[FormPlan, ...]
    recommended: str | None      # label of the largest form that fits
    bytes_fetched: int = 0       # all bytes read from the hub to plan (headers, config.json)
    other_files: tuple[str, ...] = field(default_factory=tuple)  # files no form takes (pickles, onnx, ...)

    def plan(self, label: str) -> FormPlan | None:
        return next((p for p in self.plans if p.form.label.lower() == label.lower()), None)


@dataclass(frozen=True)
class RetryPolicy:
    stall_timeout_s: float = 30.0   # no byte for this long = a stall: reconnect and resume
    max_tries: int = 8              # consecutive failed tries (no new byte between them) before giving up
    backoff_s: float = 1.0          # first wait; doubles each failed try
    max_backoff_s: float = 30.0


@dataclass(frozen=True)
class Progress:
    """A snapshot of one download job, for the CLI line and the UI table."""

    job_id: str
    repo_id: str
    label: str
    name: str                    # the entry in models/ it becomes
    state: str = QUEUED          # QUEUED, RUNNING, DONE, FAILED, CANCELLED
    done_bytes: int = 0          # bytes of the model on disk (kept from before a resume included)
    total_bytes: int = 0
    speed_bps: float = 0.0       # over the last few seconds
    eta_s: float | None = None
    current_file: str = ""
    retries: int = 0             # reconnects after a drop or stall
    resumed_bytes: int = 0       # bytes that were already on disk when this run started
    message: str = ""            # the outcome sentence, or what it is doing now

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fraction"] = self.fraction
        return d
