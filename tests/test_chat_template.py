"""Chat templates as real models write them still render under the bounds (chat_template.py);
the hostile ones are in tests/robustness (HOSTILE_TEMPLATES)."""

from __future__ import annotations

import pytest

from workbench.chat_template import CHATML_TEMPLATE, TemplateError, render_chat

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Capital of France?"}]

# The constructs real templates use: namespace, loop.index0 % 2, tojson(indent=4), strftime_now,
# string '+' and '~', trim, '%' formatting of dates and numbers, raise_exception on a bad order.
REAL = {
    "chatml": (CHATML_TEMPLATE, "<|im_start|>user\nCapital of France?<|im_end|>"),
    "llama3-style": (
        "{{ bos_token }}{% set ns = namespace(sys='') %}{% if messages[0]['role'] == 'system' %}"
        "{% set ns.sys = messages[0]['content']|trim %}{% endif %}"
        "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' }}Today: {{ strftime_now('%d %b %Y') }}\\n"
        "Tools: {{ [{'name': 'f', 'parameters': {}}]|tojson(indent=4) }}{{ ns.sys }}<|eot_id|>"
        "{% for m in messages[1:] %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' ~ m['content']|trim"
        " + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
        "{% endif %}", "Capital of France?<|eot_id|>"),
    "mistral-style": (
        "{% for m in messages if m['role'] != 'system' %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Roles must alternate') }}{% endif %}{% if m['role'] == 'user' %}"
        "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}",
        "[INST] Capital of France? [/INST]"),
    "printf-and-format": (
        "{% for m in messages %}{{ '%s-%03d: ' % (m['role'], loop.index) }}{{ '{:<8}|'.format(m['role']) }}"
        "{{ m['content']|center(20)|indent(2) }}\\n{% endfor %}", "user-004: user    |"),
}


@pytest.mark.parametrize("name", list(REAL))
def test_real_templates_render(name):
    template, expected = REAL[name]
    assert expected in render_chat(MESSAGES, template, bos_token="<s>", eos_token="</s>")


def test_a_long_conversation_still_renders():
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 20_000} for i in range(101)]
    assert len(render_chat(long, CHATML_TEMPLATE)) > 10_000_000


def test_the_budget_is_per_render():
    template = "{{ ('x' * 1000000)|length }}{% for i in range(15) %}{{ 'y' * 1000000 }}{% endfor %}"
    for _ in range(5):  # each render has its own budget: the fifth is not refused for the first four's work
        assert len(render_chat(MESSAGES, template)) == 15_000_007
    with pytest.raises(TemplateError, match="made more than"):
        render_chat(MESSAGES, "{% for i in range(80) %}{% set s = 'y' * 1000000 %}{% endfor %}")
