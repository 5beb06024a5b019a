"""How the tabs show a service's refusal: a `WorkbenchError` becomes a `gr.Error` toast.

The sentence may reach a remote user, so absolute server paths in it are shown as names inside
the workbench's folders (`paths.public_text`).

`shows_errors` wraps a handler (plain or generator) once, so no tab writes
`except WorkbenchError: raise gr.Error(...)` itself. Gradio still sees the handler's own
signature (gr.Request and gr.Progress parameters keep working).
"""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from ..errors import WorkbenchError
from ..paths import Paths, public_text


def user_error(e: WorkbenchError) -> gr.Error:
    """The toast for `e`: its sentence, with server paths shown as names."""
    return gr.Error(public_text(str(e), Paths.default().root))


def shows_errors(handler):
    """`handler`, with a WorkbenchError turned into a gr.Error carrying its one sentence."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def stream(*args, **kwargs):
            try:
                yield from handler(*args, **kwargs)
            except WorkbenchError as e:
                raise user_error(e) from None
        return stream

    @functools.wraps(handler)
    def call(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except WorkbenchError as e:
            raise user_error(e) from None
    return call
