"""Picks the next token from logits for the torch-based backends (Transformers, GPTQ).

Same parameters and order as llama.cpp's sampler chain (repetition, presence and frequency
penalties over the last 64 tokens, logit bias, top-k, top-p, min-p, temperature), so a
preset or an API request means the same thing on every backend.
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


PENALTY_LAST_N = 64  # as llama.cpp's penalties sampler (llama_batch.py)


def apply_penalties(logits: torch.Tensor, previous: torch.Tensor, params: GenParams) -> torch.Tensor:
    """OpenAI's presence and frequency penalties over the last PENALTY_LAST_N tokens, then the logit bias."""
    if (params.presence_penalty or params.frequency_penalty) and previous.numel():
        ids, counts = torch.unique(previous[-PENALTY_LAST_N:], return_counts=True)
        penalty = params.frequency_penalty * counts.float() + params.presence_penalty
        logits = logits.scatter(-1, ids, logits.gather(-1, ids) - penalty)
    if params.logit_bias:
        vocab = logits.shape[-1]
        ids = torch.tensor([t for t in params.logit_bias if t < vocab], dtype=torch.long)
        bias = torch.tensor([params.logit_bias[int(t)] for t in ids], dtype=logits.dtype)
        logits = logits.index_add(-1, ids, bias)
    return logits


def needs_history(params: GenParams) -> bool:
    """Whether sampling looks at the context's token ids (any penalty on)."""
    return params.repetition_penalty != 1.0 or bool(params.presence_penalty or params.frequency_penalty)


def sample_next(
    logits: torch.Tensor, params: GenParams, previous: torch.Tensor, generator: torch.Generator | None
) -> int:
    """Choose the next token id from 1-D `logits`; `previous` holds the context's token ids."""
    penalised = apply_repetition_penalty(logits.float(), previous, params.repetition_penalty)
    logits = apply_penalties(penalised, previous, params)
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
