"""JSON-schema-constrained decoding for the torch backends (Transformers, GPTQ) with llguidance.

Owns one request's constraint: a matcher compiled from the JSON schema, the mask it puts on
each step's logits (tokens the schema cannot continue with get -inf) and the token it
then consumes. llguidance was chosen over xgrammar and outlines-core: it installs from
PyPI as one CPU wheel with no compiler, reads the Hugging Face tokenizer directly, and
computes each mask lazily in Rust (tens of microseconds a token), so it needs no
per-schema precomputation over the vocabulary. The tokenizer wrapper it needs costs about
a second to build, so the engine builds it once (`GrammarTokenizer`) and reuses it.
"""

from __future__ import annotations

from ..errors import GenerationError


class GrammarTokenizer:
    """llguidance's view of a Hugging Face tokenizer, built on first use and kept by the engine."""

    def __init__(self, tokenizer, n_vocab: int, eos: set[int]):
        self.tokenizer, self.n_vocab, self.eos = tokenizer, n_vocab, sorted(eos)
        self._ll = None

    def get(self):
        if self._ll is None:
            try:
                import llguidance.hf
            except ImportError as e:
                raise GenerationError("JSON output on this backend needs llguidance: run ./start.sh.") from e
            self._ll = llguidance.hf.from_tokenizer(self.tokenizer, n_vocab=self.n_vocab, eos_token=self.eos)
        return self._ll


class JsonConstraint:
    """One request's JSON schema as a token mask, advanced token by token."""

    def __init__(self, tokenizer: GrammarTokenizer, schema: dict):
        import llguidance
        import llguidance.torch

        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema or {"type": "object"}, defaults={"whitespace_flexible": False})
        self.matcher = llguidance.LLMatcher(tokenizer.get(), grammar, log_level=0)
        if self.matcher.is_error():
            raise GenerationError(f"This JSON schema cannot be used to constrain the reply "
                                  f"({self.matcher.get_error()[:200]}); simplify it.")
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, tokenizer.n_vocab)
        self.eos = tokenizer.eos

    def mask(self, logits):
        """`logits` (1-D) with every token the schema forbids next at -inf."""
        import llguidance.torch

        logits = logits.clone()
        if self.matcher.is_stopped():  # the JSON is complete: only an end of text may follow
            allowed = logits[self.eos].clone()
            logits.fill_(float("-inf"))
            logits[self.eos] = allowed
            return logits
        llguidance.torch.fill_next_token_bitmask(self.matcher, self.bitmask)
        llguidance.torch.apply_token_bitmask_inplace(logits, self.bitmask)
        return logits

    def accept(self, token: int) -> None:
        if not self.matcher.is_stopped():
            self.matcher.consume_token(token)
