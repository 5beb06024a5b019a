"""A GGUF -> Transformers copy is checked against its source: a faithful copy agrees with llama.cpp on
the next token, a broken one (what transformers' GGUF loader makes of some mixture-of-experts models) is
refused with a sentence that stands on its own."""

from __future__ import annotations

import pytest

from workbench.convert import MIN_AGREEMENT, check_copy
from workbench.errors import ConversionError


@pytest.fixture(scope="module")
def copy(sample_transformers):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sample_transformers, dtype=torch.bfloat16)
    return model, AutoTokenizer.from_pretrained(sample_transformers)


def test_a_faithful_copy_passes(sample_gguf, copy):
    said = []
    check_copy(sample_gguf, *copy, progress=said.append)
    agreement = int(said[-1].split(" at ")[1].split("%")[0])
    assert agreement / 100 >= max(MIN_AGREEMENT, 0.85)


def test_a_broken_copy_is_refused(sample_gguf, copy):
    import torch

    model, tokenizer = copy
    saved = {name: p.detach().clone() for name, p in model.named_parameters() if "mlp" in name}
    try:
        with torch.no_grad():  # what a wrong expert layout does: the feed-forward weights are scrambled
            for name, p in model.named_parameters():
                if "mlp" in name:
                    p.copy_(p.flatten()[torch.randperm(p.numel())].view_as(p))
        with pytest.raises(ConversionError) as e:
            check_copy(sample_gguf, model, tokenizer, progress=lambda _: None)
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in saved:
                    p.copy_(saved[name])
    message = str(e.value)
    assert "does not match it" in message and "not saved" in message and "llama.cpp" in message
    assert "\n" not in message
