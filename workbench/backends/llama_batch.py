"""Several sequences in one llama.cpp context: slots, their samplers and KV cache, one decode per step.

Owns llama.cpp's multi-sequence batch API as the worker's scheduler uses it (see
`BatchEngine` in base.py): each slot is a llama.cpp sequence id with its own KV cells,
its own sampler chain (penalties, top-k, top-p, min-p, temperature, then a seeded draw or
greedy) and the token ids its cache holds, so a new request takes the free slot whose
cache shares the longest prefix with its prompt and computes only the rest. One
`llama_decode` advances every active sequence by a token (continuous batching, as
llama.cpp's own server does). Optional prompt-lookup drafting (speculative decoding): a
slot proposes the tokens that followed the last n-gram the last time it occurred, they
are checked in the same decode, and the accepted ones cost no extra step. With a JSON schema
llama.cpp's grammar sampler judges each drawn token and, when it refuses it, the draw is
redone over the tokens it allows among the 256 likeliest (llama.cpp's own common sampler
checks the drawn token first too: judging one token is far cheaper than masking the whole
vocabulary every step); with logprobs each token's raw distribution is scored before the draw. The sampler
draws at each position in order, so the text is the same with and without drafting.
It does not own stop strings, budgets, cancel or timing: the scheduler does.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from ..errors import GenerationError, brief
from ..options import GenParams
from .decode_loop import best_free_slot, common_prefix

PENALTY_LAST_N = 64  # tokens the repetition penalty looks back over (llama-cpp-python's default)
# When the grammar refuses the drawn token, the redraw considers the allowed ones among this many likeliest
# tokens (all of them only when none is allowed there): top-k, top-p and min-p keep far fewer anyway.
GRAMMAR_SHORTLIST = 256


@dataclass
class Slot:
    seq: int                                   # llama.cpp sequence id
    ids: list[int] = field(default_factory=list)  # token ids whose KV this sequence holds
    sampler: object | None = None              # llama_cpp._internals.LlamaSampler while busy
    grammar: object | None = None              # its JSON grammar sampler, when the reply must be JSON
    last: int | None = None                    # sampled, not yet in the KV cache
    busy: bool = False
    draft_n: int = 0                           # prompt-lookup draft length (0 = off)
    drafted: int = 0                           # draft tokens proposed / accepted, for the stats
    accepted: int = 0
    logprobs: int | None = None                # alternatives to report per token (None = off)
    scored: list = field(default_factory=list)  # (token, logprob, [(id, logprob)]) per sampled token, not yet taken


def lookup_draft(ids: list[int], n: int, ngram: int = 3) -> list[int]:
    """Up to `n` tokens that followed the latest earlier occurrence of the last `ngram` tokens of `ids`."""
    if n <= 0 or len(ids) <= ngram:
        return []
    tail = ids[-ngram:]
    for start in range(len(ids) - ngram - 1, -1, -1):
        if ids[start:start + ngram] == tail:
            follow = ids[start + ngram:start + ngram + n]
            return follow
    return []


class Utf8Pieces:
    """One sequence's tokens as text: bytes per token, characters once complete."""

    def __init__(self, llm):
        import codecs

        self.llm = llm
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self.decoder.decode(self.llm.detokenize([token]))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def json_grammar(schema: dict):
    """llama.cpp's grammar for JSON matching `schema` (an empty schema: any JSON value)."""
    import json

    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if not schema:
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    try:
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions for schemas it cannot handle
        raise GenerationError(f"llama.cpp cannot turn this JSON schema into a grammar ({brief(e)}); "
                              "simplify the schema.") from e


class LlamaBatchEngine:
    """`n_slots` sequences of up to `n_ctx` tokens each in one llama.cpp context."""

    def __init__(self, llm, n_slots: int, n_ctx: int, n_batch: int):
        import llama_cpp

        self.llm, self.n_ctx, self.n_batch = llm, n_ctx, n_batch
        self.ctx = llm._ctx.ctx
        self.vocab = llm._model.vocab
        self.n_vocab = llm.n_vocab()
        self.mem = llama_cpp.llama_get_memory(self.ctx)
        self.slots = [Slot(i) for i in range(n_slots)]
        self.capacity = max(n_batch, n_slots * 8)
        self.batch = llama_cpp.llama_batch_init(self.capacity, 0, 1)

    # --- slots ---------------------------------------------------------------------
    def free_slot(self, prompt: list[int]) -> int | None:
        return best_free_slot(self.slots, prompt)

    def start(self, seq: int, prompt: list[int], params: GenParams, seed: int, draft_n: int = 0) -> tuple[int, int]:
        """Prefill `prompt` into slot `seq` (reusing its cached prefix) and sample the first token.

        Returns (the first token, prompt tokens reused from the cache).
        """
        import llama_cpp

        slot = self.slots[seq]
        slot.busy, slot.draft_n, slot.drafted, slot.accepted = True, draft_n, 0, 0
        # Keep at least the last prompt token to compute, so its logits exist.
        keep = min(common_prefix(slot.ids, prompt), len(prompt) - 1)
        if not llama_cpp.llama_memory_seq_rm(self.mem, seq, keep, -1):
            llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)
            keep = 0
        slot.ids = slot.ids[:keep]
        slot.sampler = self._sampler(params, seed, prompt)
        slot.grammar = self._grammar(params)
        slot.logprobs, slot.scored = params.logprobs, []
        pending = prompt[keep:]
        for i in range(0, len(pending), self.n_batch):
            chunk = pending[i:i + self.n_batch]
            self._fill([(seq, len(slot.ids) + j, t, j == len(chunk) - 1 and i + len(chunk) == len(pending))
                        for j, t in enumerate(chunk)])
            self._decode()
            slot.ids.extend(chunk)
        token = self._draw(slot, self.batch.n_tokens - 1)
        slot.last = token
        return token, keep

    def step(self, seqs: list[int]) -> dict[int, list[int]]:
        """Feed each slot's last token (and its draft), decode once; the new tokens of each slot, in order."""
        rows, plans = [], {}
        # In sequence order: with a KV cache per sequence llama.cpp puts only consecutive, increasing
        # sequence ids into one micro-batch, so rows in arrival order split a step into several passes
        # over the weights (behind the API four streams then ran at single-stream speed).
        for seq in sorted(seqs):
            slot = self.slots[seq]
            draft = lookup_draft(slot.ids + [slot.last], slot.draft_n)
            draft = draft[:max(0, self.n_ctx - len(slot.ids) - 2)]
            start = len(rows)
            feed = [slot.last, *draft]
            rows += [(seq, len(slot.ids) + j, t, True) for j, t in enumerate(feed)]
            plans[seq] = (start, feed)
        self._fill(rows)
        self._decode()
        out = {}
        for seq, (start, feed) in plans.items():
            slot = self.slots[seq]
            made = []
            for j, fed in enumerate(feed):
                token = self._draw(slot, start + j)
                made.append(token)
                if j + 1 < len(feed) and token != feed[j + 1]:
                    break  # the draft went wrong here: `token` is the correct next one
            slot.drafted += len(feed) - 1
            slot.accepted += len(made) - 1
            # In the cache now: the fed tokens up to the last accepted one.
            slot.ids.extend(feed[:len(made)])
            if len(made) < len(feed):
                import llama_cpp

                llama_cpp.llama_memory_seq_rm(self.mem, seq, len(slot.ids), -1)
            slot.last = made[-1]
            out[seq] = made
        return out

    def take_scores(self, seq: int) -> list:
        """(token, logprob, top alternatives) for each token sampled since the last call (empty when off)."""
        slot = self.slots[seq]
        scored, slot.scored = slot.scored, []
        return scored

    def token_bytes(self, token: int) -> bytes:
        return self.llm.detokenize([token])

    def release(self, seq: int) -> None:
        """The sequence ended; its KV stays for the next request with the same prefix."""
        slot = self.slots[seq]
        for sampler in (slot.sampler, slot.grammar):
            if sampler is not None:
                sampler.close()
        slot.sampler, slot.grammar, slot.last, slot.busy = None, None, None, False

    def forget(self) -> None:
        """Drop every slot's cache (the context's KV was used for something else)."""
        for slot in self.slots:
            slot.ids = []

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def detokenizer(self) -> "Utf8Pieces":
        return Utf8Pieces(self.llm)

    # --- llama.cpp ---------------------------------------------------------------------
    def _draw(self, slot: Slot, index: int) -> int:
        """Sample the token at batch row `index` (scored first when the request wants logprobs)."""
        if slot.logprobs is None and slot.grammar is None:
            return slot.sampler.sample(self.llm._ctx, index)
        import llama_cpp
        import numpy as np

        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        if slot.grammar is None:
            scored_logits = logits.copy()  # sampling may reuse this buffer
            token = slot.sampler.sample(self.llm._ctx, index)
        else:
            scored_logits = logits
            token = self._draw_constrained(slot, logits)
        if slot.logprobs is not None:
            from .logprobs import scores_of

            slot.scored.append(scores_of(scored_logits, token, slot.logprobs))
        return token

    def _draw_constrained(self, slot: Slot, logits) -> int:
        """Draw with the chain, keep the token if the grammar allows it, else draw again from the allowed ones.

        As llama.cpp's own common sampler does: the grammar judges one token instead of the
        whole vocabulary on most steps, which is what keeps constrained decoding cheap.
        """
        import llama_cpp

        token = self._apply(slot.sampler.sampler, self._candidates(logits))
        one = self._candidates(logits, [token])
        llama_cpp.llama_sampler_apply(slot.grammar.sampler, ctypes.byref(one[1]))
        if one[0][0].logit == float("-inf"):
            token = self._apply(slot.sampler.sampler, self._allowed(slot, logits))
        llama_cpp.llama_sampler_accept(slot.sampler.sampler, token)
        llama_cpp.llama_sampler_accept(slot.grammar.sampler, token)
        return token

    def _allowed(self, slot: Slot, logits):
        """Candidates with the grammar applied: the GRAMMAR_SHORTLIST likeliest tokens when any of them is
        allowed (the grammar then judges hundreds of tokens, not the whole vocabulary), else all of them."""
        import llama_cpp
        import numpy as np

        if self.n_vocab > GRAMMAR_SHORTLIST:
            shortlist = np.argpartition(-logits, GRAMMAR_SHORTLIST)[:GRAMMAR_SHORTLIST]
            candidates = self._candidates(logits, shortlist)
            llama_cpp.llama_sampler_apply(slot.grammar.sampler, ctypes.byref(candidates[1]))
            data, array = candidates
            if any(data[i].logit != float("-inf") for i in range(array.size)):
                return candidates
        candidates = self._candidates(logits)
        llama_cpp.llama_sampler_apply(slot.grammar.sampler, ctypes.byref(candidates[1]))
        return candidates

    def _candidates(self, logits, ids: list[int] | None = None):
        """A llama_token_data_array over `ids` (default: the whole vocabulary) with their logits."""
        import llama_cpp
        import numpy as np

        n = self.n_vocab if ids is None else len(ids)
        data = (llama_cpp.llama_token_data * n)()
        view = np.frombuffer(data, dtype=np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        view["id"] = np.arange(n) if ids is None else ids
        view["logit"] = logits if ids is None else logits[ids]
        array = llama_cpp.llama_token_data_array(data=ctypes.cast(data, llama_cpp.llama_token_data_p), size=n,
                                                 selected=-1, sorted=False)
        return data, array

    @staticmethod
    def _apply(chain, candidates) -> int:
        import llama_cpp

        data, array = candidates
        llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
        return int(data[array.selected].id)

    def _sampler(self, p: GenParams, seed: int, prompt: list[int]):
        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        s = LlamaSampler()
        s.add_penalties(self.n_vocab, PENALTY_LAST_N, p.repetition_penalty, p.frequency_penalty, p.presence_penalty)
        penalties = llama_cpp.llama_sampler_chain_get(s.sampler, 0)
        for token in prompt[-PENALTY_LAST_N:]:
            llama_cpp.llama_sampler_accept(penalties, token)  # the penalties look back over the prompt too
        if p.logit_bias:
            s.add_logit_bias(self.n_vocab, {t: b for t, b in p.logit_bias.items() if t < self.n_vocab})
        if p.temperature <= 0:
            s.add_greedy()
        else:
            s.add_top_k(p.top_k)
            s.add_top_p(p.top_p, 1)
            s.add_min_p(p.min_p, 1)
            s.add_temp(p.temperature)
            s.add_dist(seed)
        return s

    def _grammar(self, p: GenParams):
        """The request's grammar sampler (its own chain, see _draw_constrained), or None."""
        if p.json_schema is None:
            return None
        from llama_cpp._internals import LlamaSampler

        g = LlamaSampler()
        g.add_grammar(self.llm._model, json_grammar(p.json_schema))
        return g

    def _fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        if len(rows) > self.capacity:
            raise GenerationError(f"A batch of {len(rows)} tokens is larger than the engine's {self.capacity}.")
        b = self.batch
        b.n_tokens = len(rows)
        for i, (seq, pos, token, logits) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
            b.seq_id[i][0] = seq

    def _decode(self) -> None:
        import llama_cpp

        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise GenerationError(f"llama.cpp could not decode the batch (code {rc}); the context may be full: "
                                  "lower the number of parallel slots or the context size.")

    def close(self) -> None:
        import llama_cpp

        for slot in self.slots:
            for sampler in (slot.sampler, slot.grammar):
                if sampler is not None:
                    sampler.close()
        llama_cpp.llama_batch_free(self.batch)


