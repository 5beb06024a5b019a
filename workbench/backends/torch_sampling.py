"""Picks the next token from logits for the torch-based backends (Transformers, GPTQ).

Same parameters and order as llama.cpp's sampler chain (repetition penalty, top-k,
top-p, min-p, temperature), so a preset means the same thing on every backend.
Temperature 0 is greedy. A seeded `torch.Generator` makes a seed repeatable.
"""

from __future__ import annotations

import torch

from ..options import GenParams


def apply_repetition_penalty(logits: torch.Tensor, previous: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    scores = logits.gather(-1, previous)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    return logits.scatter(-1, previous, scores)


def sample_next(
    logits: torch.Tensor, params: GenParams, previous: torch.Tensor, generator: torch.Generator | None
) -> int:
    """Choose the next token id from 1-D `logits`; `previous` holds the context's token ids."""
    logits = apply_repetition_penalty(logits.float(), previous, params.repetition_penalty)
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        values, indices = torch.topk(logits, k)
    else:
        values, indices = torch.sort(logits, descending=True)
    probs = torch.softmax(values, dim=-1)
    if params.top_p < 1.0:
        cumulative = torch.cumsum(probs, dim=-1)
        keep = cumulative - probs < params.top_p  # always keeps the first token
        values, indices = values[keep], indices[keep]
        probs = probs[keep]
    if params.min_p > 0:
        keep = probs >= params.min_p * probs[0]
        values, indices = values[keep], indices[keep]
    probs = torch.softmax(values / params.temperature, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)
    return int(indices[choice])
