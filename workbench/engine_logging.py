"""Keeps the engines' import and load chatter out of the user's terminal.

torchao, torch and transformers log warnings and progress bars on import and load that
say nothing a workbench user can act on; the workbench reports progress itself. Called
at the start of a worker process and of a conversion. Errors still get through.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_engines() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are local files; never reach for a hub
    for name in ("torchao", "torch._dynamo", "torch.utils._pytree", "transformers", "accelerate", "gptqmodel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def import_quietly(module: str):
    """Import `module` with its import-time banners (gptqmodel's, pulled in by peft) kept off the log."""
    import contextlib
    import importlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return importlib.import_module(module)
