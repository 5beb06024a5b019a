"""The error types every service raises.

Each message is one sentence a user can act on: what is wrong and what to do.
The UI turns them into `gr.Error`, the CLI into one line on stderr and exit 2.
"""


class WorkbenchError(Exception):
    """Base class: a problem the user can fix; the message says how."""


class DetectionError(WorkbenchError):
    """A path is not a model the workbench can read (missing, corrupt, unknown format)."""


class PickleRefused(DetectionError):
    """A model ships only pickle weights and the user has not opted in."""


class PathOutsideModels(WorkbenchError):
    """A name from a client resolves outside the folder it must stay in."""


class BackendUnavailable(WorkbenchError):
    """The engine for a format is not installed or cannot handle this model."""


class LoadError(WorkbenchError):
    """The engine failed to load a model that detection accepted."""


class NoModelLoaded(WorkbenchError):
    """A generation was asked for while no model is loaded."""


class WorkerDied(WorkbenchError):
    """The model's worker process ended unexpectedly."""


class GenerationError(WorkbenchError):
    """The engine failed while generating."""


class ContextLengthExceeded(GenerationError):
    """A prompt does not fit the loaded model's context."""


class RemoteError(WorkbenchError):
    """A remote OpenAI-compatible server (the remote backend) failed or refused a request."""


class RemoteUnreachable(RemoteError):
    """The remote server cannot be reached (connection refused, unknown host, timeout)."""


class RemoteAuthFailed(RemoteError):
    """The remote server refused the API key (401/403)."""


class RemoteModelNotFound(RemoteError):
    """The remote server does not serve the model the entry names (404)."""


class ConversionError(WorkbenchError):
    """Converting a model from one format to another failed."""


def brief(e: BaseException, limit: int = 300) -> str:
    """The first line of an engine's exception, capped: engines often raise whole paragraphs."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def raise_by_name(name: str, message: str, default: type[WorkbenchError] = GenerationError):
    """Raise the error class called `name` (from another process) with `message`; `default` for unknown names."""
    cls = globals().get(name)
    if not (isinstance(cls, type) and issubclass(cls, WorkbenchError)):
        cls = default
    raise cls(message)
