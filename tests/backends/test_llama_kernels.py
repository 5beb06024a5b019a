"""The llama.cpp the workbench compiles (scripts/llama-cpp-patches): installed, and exact.

Our batched Q4_1 and Q8_0 matrix products (the sample's layers and its output layer) must give,
bit for bit, what llama.cpp's one-column dot products give: a sequence's logits may not depend on whether others share its batch. One column (a
sequence decoded alone) goes through llama.cpp's dot product, several through ours, so equal
logits mean equal arithmetic. Driven through llama-cpp-python's low-level API, as the batch
engine drives it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["Tell me a story about a dragon.", "Explain how rain forms in the sky, please.", "Write a poem.",
           "Describe a city at night with its many lights and sounds."]
STEPS = 6


def test_every_patch_in_the_repository_is_compiled_into_the_installed_llama_cpp():
    compiled = Path(sys.prefix) / ".llama-cpp-patches"
    assert compiled.is_file(), f"{compiled} is missing: run ./scripts/setup.sh, which compiles llama-cpp-python"
    listed = dict(reversed(line.split("  ./")) for line in compiled.read_text().splitlines())
    for patch in sorted((ROOT / "scripts" / "llama-cpp-patches").glob("*.patch")):
        assert listed.get(patch.name) == hashlib.sha256(patch.read_bytes()).hexdigest(), (
            f"{patch.name} changed or is new since llama-cpp-python was compiled: run ./scripts/setup.sh")


class RawLlama:
    """The sample model in one llama.cpp context with a KV cache per sequence (as the batch engine has)."""

    def __init__(self, path: str, sequences: int):
        import llama_cpp as lc

        self.lc = lc
        lc.llama_backend_init()
        self.model = lc.llama_model_load_from_file(path.encode(), lc.llama_model_default_params())
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 256 * sequences, 256, 256, sequences
        params.n_threads = params.n_threads_batch = min(2, os.cpu_count() or 1)
        params.kv_unified = False
        self.ctx = lc.llama_init_from_model(self.model, params)

    def tokens(self, text: str) -> list[int]:
        out = (self.lc.llama_token * 128)()
        n = self.lc.llama_tokenize(self.vocab, text.encode(), len(text.encode()), out, 128, True, False)
        return list(out[:n])

    def decode(self, rows: list[tuple[int, int, int, bool]]) -> list[np.ndarray | None]:
        """rows of (token, position, sequence, wants logits) in one llama_decode."""
        lc = self.lc
        batch = lc.llama_batch_init(len(rows), 0, 1)
        try:
            for i, (token, pos, seq, logits) in enumerate(rows):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
                batch.seq_id[i][0] = seq
            batch.n_tokens = len(rows)
            assert lc.llama_decode(self.ctx, batch) == 0
            return [np.ctypeslib.as_array(lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,)).copy()
                    if row[3] else None for i, row in enumerate(rows)]
        finally:
            lc.llama_batch_free(batch)

    def close(self) -> None:
        self.lc.llama_free(self.ctx)
        self.lc.llama_model_free(self.model)


def greedy_logits(llama: RawLlama, prompts: list[list[int]], together: bool) -> list[list[np.ndarray]]:
    """Each sequence's logits at every prompt position and after each of STEPS greedy tokens.

    Alone, a prompt's products have as many columns as it has tokens and each step has one;
    together, the prompts' have their sum (tiles of eight columns and remainders) and each step four.
    """
    seen: list[list[np.ndarray]] = [[] for _ in prompts]
    groups = [list(range(len(prompts)))] if together else [[s] for s in range(len(prompts))]
    for group in groups:
        rows = [(t, p, s, True) for s in group for p, t in enumerate(prompts[s])]
        for row, logits in zip(rows, llama.decode(rows)):
            seen[row[2]].append(logits)
        for _ in range(STEPS):
            rows = [(int(seen[s][-1].argmax()), len(seen[s]), s, True) for s in group]
            for s, logits in zip(group, llama.decode(rows)):
                seen[s].append(logits)
    return seen


@pytest.mark.model
def test_four_sequences_in_one_batch_get_bit_identical_logits_to_each_alone(sample_gguf):
    llama = RawLlama(sample_gguf, sequences=len(PROMPTS))
    try:
        prompts = [llama.tokens(p) for p in PROMPTS]
        alone = greedy_logits(llama, prompts, together=False)
        for s in range(len(prompts)):
            llama.lc.llama_memory_seq_rm(llama.lc.llama_get_memory(llama.ctx), s, -1, -1)
        together = greedy_logits(llama, prompts, together=True)
    finally:
        llama.close()
    for s, prompt in enumerate(PROMPTS):
        for position, (a, b) in enumerate(zip(alone[s], together[s])):
            assert np.array_equal(a, b), (f"{prompt!r} position {position}: logits differ by up to "
                                          f"{float(np.abs(a - b).max()):.3g} when batched")
        assert len(alone[s]) == len(together[s]) == len(prompts[s]) + STEPS
