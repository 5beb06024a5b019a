"""Imported by the plan's runtime probe for the torch backends (runtime_probe.py): a few tiny tensor
operations of the kinds a worker's first prompt runs (bf16 and float32 matrix products, attention),
so the math libraries torch loads and sets up on first use (oneDNN, BLAS kernels picked for this
CPU) count in the probe's measured size, as they do in a worker's. Importing it has no other effect."""

from __future__ import annotations

import torch

with torch.inference_mode():
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.ones((16, 256), dtype=dtype)
        w = torch.ones((256, 256), dtype=dtype)
        torch.nn.functional.linear(x, w)
        q = torch.ones((1, 4, 16, 64), dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
