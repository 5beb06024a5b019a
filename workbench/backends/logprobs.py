"""Scores a sampled token for the API's logprobs: its log-probability and the most likely alternatives.

Owns the arithmetic only (log-softmax of the model's raw logits, before any sampling
parameter, bias or grammar, as OpenAI reports them), for numpy and torch logits alike.
The scheduler turns the ids into text; engines call `scores_of` only when a request asks.
"""

from __future__ import annotations

Scored = tuple  # (token id, logprob, [(alternative id, logprob), ...] most likely first)


def scores_of(logits, token: int, top: int) -> Scored:
    """(token, its logprob, the `top` most likely tokens with theirs) from one row of raw logits."""
    import numpy as np

    row = np.asarray(logits, dtype=np.float64)
    shifted = row - row.max()
    logz = np.log(np.exp(shifted).sum())
    alternatives = []
    if top:
        best = np.argpartition(-shifted, top - 1)[:top] if top < len(row) else np.arange(len(row))
        best = best[np.argsort(-shifted[best], kind="stable")]
        alternatives = [(int(i), float(shifted[i] - logz)) for i in best]
    return int(token), float(shifted[token] - logz), alternatives
