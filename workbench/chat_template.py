"""Renders chat messages into a prompt with a model's Jinja chat template, sandboxed and bounded.

Templates come from model files (GGUF metadata, tokenizer_config.json), which are
untrusted: they render in Jinja's ImmutableSandboxedEnvironment, so a template that
reaches for Python internals gets a clear error instead of running code. Every way a
template can make a big value is bounded *before* the value is built: operators (`*`,
`**`, `+`, `-`, `%`, `~`), the filters and string methods that grow text (center, format,
indent, tojson, replace, join, batch, ...), `range` and `lipsum`; and one render may make
at most MAX_WORK characters and items in all, run MAX_TEMPLATE_LINES lines and output
MAX_RENDERED_CHARS. So a hostile template fails in well under a second with a clear error
and never holds the GIL or the memory for long. Models without a template fall back to
ChatML. Tokenizing the result is the backend's job.
"""

from __future__ import annotations

import json
import math
import re
import string
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
# Characters and list items one render may make in all (each operator and filter charges what it makes).
MAX_WORK = 60_000_000
# range() steps one render may take in all: real templates loop over the messages, not over millions.
MAX_RANGE_STEPS = 1_000_000
# Exponents above this are no chat template's business (and 10**10**9 would hang the worker).
MAX_EXPONENT = 1024
# Integers a template may make: big-integer arithmetic runs in C holding the GIL.
MAX_INT_BITS = 4096
# Items in one list a template makes by repetition, batch or slice (sorting millions takes seconds).
MAX_LIST_ITEMS = 100_000
# Widths and indents (center, indent, format fields, tojson indent): a prompt is not laid out wider.
MAX_WIDTH = 10_000
MAX_JSON_INDENT = 16
MAX_LIPSUM_PARAGRAPHS = 20
# Template lines one render may run in all. A real template runs some tens per message; loops
# nested over long strings (which range() bounds do not see) run billions.
MAX_TEMPLATE_LINES = 2_000_000
VALID_ROLES = ("system", "user", "assistant", "tool")
BUDGET = "_workbench_render_budget"  # the render variable that holds the budget (templates cannot call it)


class TemplateError(WorkbenchError):
    """A chat template failed to render or tried something the sandbox forbids."""


def _raise_exception(message):
    raise TemplateError(f"The chat template refused the conversation: {message}")


def _refuse(why: str):
    from jinja2.exceptions import SecurityError

    raise SecurityError(why)


class _Budget:
    """What one render may still make; only Python code here can charge it (no public attributes)."""

    def __init__(self, work: int = MAX_WORK):
        self._left = work

    def _charge(self, units: int, what: str = "values") -> None:
        self._left -= max(0, int(units))
        if self._left < 0:
            _refuse(f"the template made more than {MAX_WORK:,} characters of {what}")


def _budget(context) -> _Budget:
    found = context.parent.get(BUDGET)
    return found if isinstance(found, _Budget) else _Budget()


def weight(value, limit: int = MAX_RENDERED_CHARS) -> int:
    """About how many characters `value` becomes as text; stops counting past `limit` (so it stays cheap)."""
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 2 + 2 * len(v)
            stack.extend(v) if len(v) <= limit else None
        elif isinstance(v, dict):
            total += 2 + 4 * len(v)
            if len(v) <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 1
        else:
            total += 24
    return total


def _check_text(value, what: str = "text"):
    """`value` may become text: refuse what would exceed MAX_RENDERED_CHARS."""
    if weight(value) > MAX_RENDERED_CHARS:
        _refuse(f"the {what} would exceed {MAX_RENDERED_CHARS:,} characters")
    return value


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[a-zA-Z%]")


def _check_printf(spec: str) -> None:
    for width, precision in _PRINTF.findall(spec):
        for n in (width, precision):
            if n == "*" or (n and int(n) > MAX_WIDTH):
                _refuse(f"a format width above {MAX_WIDTH:,} is not allowed")


def _check_format(spec: str) -> None:
    """str.format fields: no width or precision above MAX_WIDTH, no widths taken from arguments."""
    try:
        fields = list(string.Formatter().parse(spec))
    except ValueError:
        return  # str.format raises its own error
    for _, name, field_spec, _ in fields:
        if field_spec and ("{" in field_spec or any(int(n) > MAX_WIDTH for n in re.findall(r"\d+", field_spec))):
            _refuse(f"a format width above {MAX_WIDTH:,} is not allowed")


def _int_bits(value) -> int:
    return value.bit_length() if isinstance(value, int) and not isinstance(value, bool) else 0


def _bounded_binop(operator: str, left, right, budget: _Budget | None = None):
    """Binary operators with the results a template could use to exhaust memory or CPU refused before computing."""
    budget = budget or _Budget()
    if operator == "**":
        if isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            _refuse(f"an exponent of {right} is too large")
        if _int_bits(left) and isinstance(right, int) and right > 0 and _int_bits(left) * right > MAX_INT_BITS:
            _refuse(f"the result would have more than {MAX_INT_BITS} bits")
        return left ** right
    if operator == "*":
        if _int_bits(left) and _int_bits(right) and _int_bits(left) + _int_bits(right) > MAX_INT_BITS:
            _refuse(f"the result would have more than {MAX_INT_BITS} bits")
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and not isinstance(times, bool):
                if isinstance(seq, str) and len(seq) * times > MAX_RENDERED_CHARS:
                    _refuse("repeating a value that many times would exhaust memory")
                if not isinstance(seq, str) and len(seq) * times > MAX_LIST_ITEMS:
                    _refuse(f"a list of more than {MAX_LIST_ITEMS:,} items is not allowed")
                budget._charge(len(seq) * times)
        return left * right
    if operator in ("+", "-"):
        if max(_int_bits(left), _int_bits(right)) >= MAX_INT_BITS:
            _refuse(f"the result would have more than {MAX_INT_BITS} bits")
        if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, type(left)):
            if isinstance(left, str) and len(left) + len(right) > MAX_RENDERED_CHARS:
                _refuse(f"the text would exceed {MAX_RENDERED_CHARS:,} characters")
            if not isinstance(left, str) and len(left) + len(right) > MAX_LIST_ITEMS:
                _refuse(f"a list of more than {MAX_LIST_ITEMS:,} items is not allowed")
            budget._charge(len(left) + len(right))
        return left + right if operator == "+" else left - right
    if operator == "%":
        if isinstance(left, str):
            _check_printf(left)
            _check_text(right)
            budget._charge(len(left) + weight(right))
        return left % right
    raise AssertionError(operator)


def _concat(context, values) -> str:
    """The `~` operator: every part becomes text, within the budget."""
    budget = _budget(context)
    parts = []
    for value in values:
        budget._charge(weight(_check_text(value)))
        parts.append(value if isinstance(value, str) else str(value))
    return "".join(parts)


def _bounded_output(context, value):
    """Each `{{ ... }}` output: refuse one that would be a runaway text (nested lists printed, for instance)."""
    if not isinstance(value, str):
        _budget(context)._charge(weight(_check_text(value, "output")))
    return value


def _output_concat(chunks) -> str:
    """The rendered text: refuse it once it passes MAX_RENDERED_CHARS, before joining."""
    parts, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > MAX_RENDERED_CHARS:
            _refuse(f"the prompt would exceed {MAX_RENDERED_CHARS:,} characters")
        parts.append(chunk)
    return "".join(parts)


def _bounded_filters(env) -> None:
    """Wrap every filter that can make a big value: arguments checked before it runs, its result charged."""
    from jinja2 import pass_context

    original = dict(env.filters)

    def _width(width):
        if isinstance(width, str):
            width = len(width)
        if isinstance(width, (int, float)) and abs(width) > MAX_WIDTH:
            _refuse(f"a width above {MAX_WIDTH:,} is not allowed")

    def _items(n, what):
        if isinstance(n, (int, float)) and abs(n) > MAX_LIST_ITEMS:
            _refuse(f"{what} above {MAX_LIST_ITEMS:,} is not allowed")

    def _before(name, value, args, kwargs):
        if name in ("center", "indent", "wordwrap", "truncate"):
            first = args[0] if args else kwargs.get("width", kwargs.get("length"))
            _width(first)
            if name == "indent" and isinstance(value, str):
                lines = value.count("\n") + 1
                indent = first if first is not None else 4
                size = len(value) + lines * (len(indent) if isinstance(indent, str) else int(indent))
                if size > MAX_RENDERED_CHARS:
                    _refuse(f"the text would exceed {MAX_RENDERED_CHARS:,} characters")
            if name == "wordwrap":
                _width(kwargs.get("wrapstring", args[2] if len(args) > 2 else ""))
        elif name == "format":
            _check_printf(str(value))
            _check_text(list(args) + list(kwargs.values()))
        elif name == "replace":
            if len(args) >= 2 and isinstance(value, str):
                old, new = str(args[0]), str(args[1])
                hits = value.count(old) if old else len(value) + 1
                if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
                    hits = min(hits, args[2])
                if len(value) + hits * max(0, len(new) - len(old)) > MAX_RENDERED_CHARS:
                    _refuse(f"the text would exceed {MAX_RENDERED_CHARS:,} characters")
        elif name in ("join", "string", "pprint", "tojson", "list", "sort", "unique", "dictsort"):
            _check_text(value)
            if name == "join":
                sep = args[0] if args else kwargs.get("d", "")
                n = len(value) if hasattr(value, "__len__") else 0
                if weight(value) + len(str(sep)) * n > MAX_RENDERED_CHARS:
                    _refuse(f"the text would exceed {MAX_RENDERED_CHARS:,} characters")
            if name == "list" and isinstance(value, str):
                _items(len(value), "a list of that many items")
            if name == "tojson":
                indent = args[0] if args else kwargs.get("indent")
                if indent is not None and (not isinstance(indent, int) or not 0 <= indent <= MAX_JSON_INDENT):
                    _refuse(f"tojson's indent must be between 0 and {MAX_JSON_INDENT}")
        elif name in ("batch", "slice"):
            _items(args[0] if args else kwargs.get("linecount", kwargs.get("slices")), f"{name} size")
        elif name == "sum":
            start = args[1] if len(args) > 1 else kwargs.get("start", 0)
            if not isinstance(start, (int, float)):
                _refuse("sum adds numbers only")

    from jinja2.utils import _PassArg

    def wrap(name, fn):
        passes = _PassArg.from_obj(fn)  # what Jinja hands the filter first (context, eval context, environment)

        @pass_context
        def bounded(context, value, *args, **kwargs):
            _before(name, value, args, kwargs)
            if passes is None:
                result = fn(value, *args, **kwargs)
            else:
                first = {_PassArg.context: context, _PassArg.eval_context: context.eval_ctx,
                         _PassArg.environment: context.environment}[passes]
                result = fn(first, value, *args, **kwargs)
            if isinstance(result, (str, list)):
                cost = len(result) * (math.ceil(math.log2(len(result) + 1)) if name in ("sort", "dictsort") else 1)
                _budget(context)._charge(cost)
            return result

        return bounded

    for name, fn in original.items():
        env.filters[name] = wrap(name, fn)
    env.filters["tojson"] = wrap("tojson", lambda value, indent=None, **_: json.dumps(value, indent=indent,
                                                                                       ensure_ascii=False))


def _lipsum(n=5, html=True, min=20, max=100):
    from jinja2.utils import generate_lorem_ipsum

    if not isinstance(n, int) or not 0 <= n <= MAX_LIPSUM_PARAGRAPHS or not isinstance(max, int) or max > 1000:
        _refuse(f"lipsum makes at most {MAX_LIPSUM_PARAGRAPHS} paragraphs of at most 1000 words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


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
    from jinja2 import TemplateSyntaxError, pass_context
    from jinja2.compiler import CodeGenerator
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedCodeGenerator(CodeGenerator):
        """Compiles `a ~ b` to a bounded join (Jinja's own joins without a check)."""

        def visit_Concat(self, node, frame):
            self.write("environment.bounded_concat(context, (")
            for arg in node.nodes:
                self.visit(arg, frame)
                self.write(", ")
            self.write("))")

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+", "-", "%"})
        code_generator_class = BoundedCodeGenerator
        concat = staticmethod(_output_concat)
        bounded_concat = staticmethod(_concat)

        def call_binop(self, context, operator, left, right):
            return _bounded_binop(operator, left, right, _budget(context))

        def wrap_str_format(self, value):
            """`'...'.format(...)`: the format string's widths checked before Jinja's sandboxed formatter runs."""
            owner = getattr(value, "__self__", None)
            if isinstance(owner, str) and getattr(value, "__name__", "") in ("format", "format_map"):
                _check_format(owner)
            return super().wrap_str_format(value)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
            # String methods that grow text: their arguments checked before they run.
            owner = getattr(__obj, "__self__", None)
            name = getattr(__obj, "__name__", "")
            if isinstance(owner, str):
                if name in ("center", "ljust", "rjust", "zfill") and args:
                    if isinstance(args[0], int) and args[0] > MAX_WIDTH:
                        _refuse(f"a width above {MAX_WIDTH:,} is not allowed")
                elif name == "expandtabs":
                    size = args[0] if args else kwargs.get("tabsize", 8)
                    if isinstance(size, int) and size > MAX_WIDTH:
                        _refuse(f"a width above {MAX_WIDTH:,} is not allowed")
                elif name in ("format", "format_map"):
                    _check_format(owner)
                    _check_text(list(args) + list(kwargs.values()))
                elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
                    hits = owner.count(args[0]) if args[0] else len(owner) + 1
                    if len(owner) + hits * max(0, len(args[1]) - len(args[0])) > MAX_RENDERED_CHARS:
                        _refuse(f"the text would exceed {MAX_RENDERED_CHARS:,} characters")
                elif name == "join" and args:
                    _check_text(args[0])
                    n = len(args[0]) if hasattr(args[0], "__len__") else 0
                    if weight(args[0]) + len(owner) * n > MAX_RENDERED_CHARS:
                        _refuse(f"the text would exceed {MAX_RENDERED_CHARS:,} characters")
            result = super().call(__context, __obj, *args, **kwargs)
            if isinstance(result, (str, list)):
                _budget(__context)._charge(len(result))
            return result

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"],
                             finalize=pass_context(_bounded_output))
    _bounded_filters(env)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.globals["lipsum"] = _lipsum
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"The model's chat template has a syntax error (line {e.lineno}: {e.message}).") from e


def check_messages(messages: list[dict]) -> list[dict]:
    """Validate chat messages; return them as plain dicts: role and content, plus an assistant's
    `tool_calls` ([{"id", "type", "function": {"name", "arguments": dict}}]) and a tool result's
    `tool_call_id` / `name` when present (an assistant message with tool calls may have no content)."""
    if not isinstance(messages, list) or not messages:
        raise WorkbenchError("A chat needs at least one message.")
    clean = []
    for i, m in enumerate(messages):
        calls = m.get("tool_calls") if isinstance(m, dict) and m.get("role") == "assistant" else None
        content = m.get("content") if isinstance(m, dict) else None
        if calls and content is None:
            content = ""
        if not isinstance(m, dict) or m.get("role") not in VALID_ROLES or not isinstance(content, str):
            raise WorkbenchError(
                f"Message {i + 1} must have a role ({', '.join(VALID_ROLES)}) and text content."
            )
        message = {"role": m["role"], "content": content}
        if calls:
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      for c in calls):
                raise WorkbenchError(f"Message {i + 1}'s tool_calls must be a list of function calls.")
            message["tool_calls"] = calls
        for key in ("tool_call_id", "name"):
            if m["role"] == "tool" and isinstance(m.get(key), str):
                message[key] = m[key]
        clean.append(message)
    return clean


def _without_tool_syntax(messages: list[dict], tools: list[dict] | None, template: str) -> list[dict]:
    """For a template that does not render tools or tool calls itself: the tools described in the system
    message (tool_calls.tool_preamble) and each assistant's calls written into its content, Hermes style."""
    from .tool_calls import tool_preamble

    out = []
    for m in messages:
        if m.get("tool_calls") and "tool_calls" not in template:
            calls = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"].get("name"),
                                                              "arguments": c["function"].get("arguments")},
                                                             ensure_ascii=False) + "\n</tool_call>"
                              for c in m["tool_calls"])
            m = {"role": m["role"], "content": (m["content"] + "\n" if m["content"] else "") + calls}
        out.append(m)
    if tools and "tools" not in template:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + tool_preamble(tools)}
        else:
            out.insert(0, {"role": "system", "content": tool_preamble(tools)})
    return out


def render_chat(
    messages: list[dict],
    template: str | None,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
) -> str:
    """Render `messages` with `template` (ChatML when None) in the sandbox.

    `tools` (OpenAI function tools) go to the template as its `tools` variable; a template that
    never mentions them gets them as a system-prompt section instead (see _without_tool_syntax).
    """
    from jinja2.exceptions import SecurityError, TemplateError as JinjaTemplateError

    compiled = _compile(template or CHATML_TEMPLATE)
    try:
        with _line_budget(MAX_TEMPLATE_LINES):
            text = compiled.render(
                messages=_without_tool_syntax(check_messages(messages), tools, template or CHATML_TEMPLATE),
                add_generation_prompt=add_generation_prompt,
                **({"tools": tools} if tools else {}),
                bos_token=bos_token,
                eos_token=eos_token,
                range=_budgeted_range(),
                **{BUDGET: _Budget()},
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
        head = render_chat(request.messages[:-1], template, bos_token, eos_token,
                           tools=request.tools) if len(request.messages) > 1 else ""
        return head + request.messages[-1]["content"]
    return render_chat(request.messages, template, bos_token, eos_token, tools=request.tools)
