"""Whether transformers' reading of a GGUF is the model llama.cpp runs from it.

transformers' GGUF loader builds wrong models for some architectures without a word (mixtures of
experts: the next-token choices agree with llama.cpp's 0-2% of the time) and fails on others with an
error that points at a report printed elsewhere. This module owns the check both the Transformers
copy (convert.py) and a GGUF loaded with the Transformers loader go through: next-token choices over
a short text compared with llama.cpp's, and turning transformers' errors into words that stand alone.
"""

from __future__ import annotations

import os

from .errors import brief

CHECK_TEXT = ("The capital of France is Paris. Water boils at 100 degrees Celsius at sea level. "
              "User: What is the largest planet in our solar system?\nAssistant: Jupiter is the largest planet.")
MIN_AGREEMENT = 0.75  # a faithful copy agrees at 90% or more (bf16 vs the quantized kernels); a broken one at 0-10%


def next_token_agreement(gguf_path: str, model, token_ids: list[int]) -> float | None:
    """Share of positions where `model` and llama.cpp running `gguf_path` (on the CPU) pick the same next
    token (None when llama-cpp-python is not installed, so the check cannot run)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import numpy as np
    import torch

    llm = Llama(gguf_path, n_ctx=max(64, len(token_ids) + 8), logits_all=True, verbose=False, n_gpu_layers=0,
                n_threads=os.cpu_count() or 1)
    try:
        llm.eval(token_ids)
        reference = np.asarray(llm.scores[: len(token_ids)])
    finally:
        llm.close()
    with torch.no_grad():
        logits = model(torch.tensor([token_ids], device=model.device)).logits[0].float().cpu().numpy()
    vocab = min(reference.shape[-1], logits.shape[-1])
    return float((reference[:, :vocab].argmax(-1) == logits[:, :vocab].argmax(-1)).mean())


def gguf_agreement(gguf_path: str, model, tokenizer) -> tuple[float, int] | None:
    """(share of agreeing next tokens, positions compared) for `model` read from `gguf_path`, or None
    when llama.cpp is not there to compare with."""
    ids = tokenizer(CHECK_TEXT)["input_ids"][:64]
    agreement = next_token_agreement(gguf_path, model, ids)
    return None if agreement is None else (agreement, len(ids))


def standalone_detail(error: BaseException, architecture: str | None) -> str:
    """transformers' error in words that stand alone (some point at a report printed to a log the user
    does not see: "For details look at the above report!")."""
    detail = brief(error)
    if "above report" in detail or "see the log" in detail.lower():
        return f"transformers cannot read {architecture or 'this'} GGUF models: their weights do not fit the model it builds"
    return detail
