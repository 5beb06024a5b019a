"""Perplexity of a text under a loaded model: the same windows and arithmetic on every backend.

The text is tokenized once and cut into consecutive windows of at most `window` tokens
(no overlap); each window is evaluated from an empty context and every token after its
first is scored. Perplexity = exp(total negative log-likelihood / tokens scored). Using
identical windows on llama.cpp, Transformers and GPTQ makes the numbers comparable, which
is how a user measures what a quantized format loses. Engines only provide
`score_window(ids) -> summed NLL of ids[1:]`.
"""

from __future__ import annotations

import math
from typing import Callable

from ..errors import WorkbenchError

MAX_SCORED_TOKENS = 200_000


def windows(n_tokens: int, window: int) -> list[tuple[int, int]]:
    """(start, end) of consecutive windows; a last window shorter than 2 tokens is dropped."""
    spans = [(s, min(s + window, n_tokens)) for s in range(0, n_tokens, window)]
    return [(s, e) for s, e in spans if e - s >= 2]


def log_softmax_nll(logits, targets) -> float:
    """Summed negative log-likelihood of `targets` under rows of `logits` (numpy, float64 math)."""
    import numpy as np

    rows = np.asarray(logits, dtype=np.float64)
    top = rows.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
    picked = rows[np.arange(len(targets)), np.asarray(targets)]
    return float((log_norm - picked).sum())


def perplexity(
    ids: list[int],
    window: int,
    score_window: Callable[[list[int]], float],
    progress: Callable[[int, int], None] = lambda done, total: None,
    cancelled: Callable[[], bool] = lambda: False,
) -> dict:
    """Score `ids` window by window; return {"perplexity", "nll", "tokens", "windows", "window"}."""
    if window < 2:
        raise WorkbenchError("The perplexity window must be at least 2 tokens.")
    if len(ids) > MAX_SCORED_TOKENS:
        raise WorkbenchError(f"The text has {len(ids):,} tokens; perplexity is limited to {MAX_SCORED_TOKENS:,}, "
                             "use a shorter file.")
    spans = windows(len(ids), window)
    if not spans:
        raise WorkbenchError("The text is too short to measure perplexity; give at least two tokens.")
    total_nll, scored = 0.0, 0
    for i, (start, end) in enumerate(spans):
        if cancelled():
            raise WorkbenchError("Perplexity evaluation was cancelled.")
        total_nll += score_window(ids[start:end])
        scored += end - start - 1
        progress(i + 1, len(spans))
    return {"perplexity": math.exp(total_nll / scored), "nll": total_nll, "tokens": scored,
            "windows": len(spans), "window": window}
