"""Renders chat messages into a prompt with a model's Jinja chat template, sandboxed.

Templates come from model files (GGUF metadata, tokenizer_config.json), which are
untrusted: they render in Jinja's ImmutableSandboxedEnvironment, so a template that
reaches for Python internals gets a clear error instead of running code. Models
without a template fall back to ChatML. Tokenizing the result is the backend's job.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache

from .errors import WorkbenchError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# A rendered prompt longer than this is a runaway template, not a conversation.
MAX_RENDERED_CHARS = 20_000_000
# range() steps one render may take in all: real templates loop over the messages, not over millions.
MAX_RANGE_STEPS = 1_000_000
# Exponents above this are no chat template's business (and 10**10**9 would hang the worker).
MAX_EXPONENT = 1024
# Template lines one render may run in all. A real template runs some tens per message; loops
# nested over long strings (which range() bounds do not see) run billions.
MAX_TEMPLATE_LINES = 2_000_000
VALID_ROLES = ("system", "user", "assistant", "tool")


class TemplateError(WorkbenchError):
    """A chat template failed to render or tried something the sandbox forbids."""


def _raise_exception(message):
    raise TemplateError(f"The chat template refused the conversation: {message}")


def _bounded_binop(operator: str, left, right):
    """`*` and `**` with the results a template could use to exhaust memory or CPU refused."""
    from jinja2.exceptions import SecurityError

    if operator == "**":
        if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"an exponent of {right} is too large")
        return left ** right
    for seq, times in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_RENDERED_CHARS:
            raise SecurityError("repeating a value that many times would exhaust memory")
    return left * right


def _budgeted_range():
    """A `range` for one render that refuses to step more than MAX_RANGE_STEPS times in all."""
    from jinja2.exceptions import SecurityError

    left = [MAX_RANGE_STEPS]

    def bounded(*args):
        steps = range(*args)
        left[0] -= len(steps)
        if left[0] < 0:
            raise SecurityError(f"the template loops more than {MAX_RANGE_STEPS:,} times")
        return steps

    return bounded


@contextmanager
def _line_budget(limit: int):
    """Stop a render that runs more than `limit` lines of template code (traced in this thread only).

    Jinja compiles a template to Python whose code objects are named "<template>"; only those
    frames are traced line by line, so the rest of the render runs at full speed.
    """
    from jinja2.exceptions import SecurityError

    left = [limit]

    def count_lines(frame, event, arg):
        if event == "line":
            left[0] -= 1
            if left[0] < 0:
                raise SecurityError(f"the template ran more than {limit:,} steps")
        return count_lines

    def on_call(frame, event, arg):
        return count_lines if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        yield
    finally:
        sys.settrace(previous)


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            return _bounded_binop(operator, left, right)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None, **_: json.dumps(value, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"The model's chat template has a syntax error (line {e.lineno}: {e.message}).") from e


def check_messages(messages: list[dict]) -> list[dict]:
    """Validate chat messages; return them as plain {'role', 'content'} dicts."""
    if not isinstance(messages, list) or not messages:
        raise WorkbenchError("A chat needs at least one message.")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in VALID_ROLES or not isinstance(m.get("content"), str):
            raise WorkbenchError(
                f"Message {i + 1} must have a role ({', '.join(VALID_ROLES)}) and text content."
            )
        clean.append({"role": m["role"], "content": m["content"]})
    return clean


def render_chat(
    messages: list[dict],
    template: str | None,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
) -> str:
    """Render `messages` with `template` (ChatML when None) in the sandbox."""
    from jinja2.exceptions import SecurityError, TemplateError as JinjaTemplateError

    compiled = _compile(template or CHATML_TEMPLATE)
    try:
        with _line_budget(MAX_TEMPLATE_LINES):
            text = compiled.render(
                messages=check_messages(messages),
                add_generation_prompt=add_generation_prompt,
                bos_token=bos_token,
                eos_token=eos_token,
                range=_budgeted_range(),
            )
    except RecursionError:
        raise TemplateError("The model's chat template calls itself without end; use another template.") from None
    except MemoryError:
        raise TemplateError("The chat template produced a runaway prompt; use another template.") from None
    except SecurityError as e:
        raise TemplateError(f"The chat template tried an unsafe operation and was stopped ({e}); use another template.") from e
    except TemplateError:
        raise
    except (JinjaTemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as e:
        raise TemplateError(f"The model's chat template failed to render ({type(e).__name__}: {e}).") from e
    if len(text) > MAX_RENDERED_CHARS:
        raise TemplateError("The chat template produced a runaway prompt; use another template.")
    return text


def prompt_text(request, template: str | None, bos_token: str = "", eos_token: str = "") -> str:
    """The text a GenerationRequest becomes: its raw prompt, or its messages chat-templated.

    With `continue_last`, the last (assistant) message is left open so the model goes on with it.
    """
    if request.messages is None:
        return request.prompt or ""
    if request.continue_last:
        if not request.messages or request.messages[-1].get("role") != "assistant":
            raise WorkbenchError("There is no reply to continue; send a message first.")
        head = render_chat(request.messages[:-1], template, bos_token, eos_token) if len(request.messages) > 1 else ""
        return head + request.messages[-1]["content"]
    return render_chat(request.messages, template, bos_token, eos_token)
