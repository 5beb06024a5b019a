"""Several sequences through one Transformers model: a batched forward pass per decode step.

Owns the batch engine the worker's scheduler drives for the Transformers and GPTQ
backends (same interface as llama_batch.py). Each slot keeps its own KV cache (a
DynamicCache of one row) and the token ids it holds, so a new request takes the free
slot whose cache shares the longest prefix with its prompt and computes only the rest
(prefilled on its own, in chunks of n_batch tokens). A decode step left-pads the active
slots' caches into one batch, runs the model once for one new token per row (attention
masked over the padding, each row at its own position) and hands each slot its row back.
Each slot samples with its own parameters; with a JSON schema its logits are masked by
llguidance first (torch_grammar.py), and with logprobs each token is scored on the raw logits.

Why not transformers' own continuous batching (`generate_batch` / `init_continuous_batching`):
measured on this 2-core CPU with the sample model it gave 6.8 tok/s for one stream and 24
for four (its paged cache and scheduler are built for GPUs), below what this simple
engine does for one stream alone; it also has one sampling configuration and seed per
manager, where every request here keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..options import GenParams
from .decode_loop import best_free_slot, common_prefix


@dataclass
class TorchSlot:
    seq: int
    ids: list[int] = field(default_factory=list)  # token ids whose KV this slot's cache holds
    layers: list | None = None                    # per layer (keys, values), each [1, heads, len, dim]
    params: GenParams | None = None
    generator: object | None = None
    seen: list[int] = field(default_factory=list)  # context for the repetition penalty
    last: int | None = None
    busy: bool = False
    constraint: object | None = None              # torch_grammar.JsonConstraint when the reply must be JSON
    scored: list = field(default_factory=list)    # (token, logprob, alternatives) per sampled token, not yet taken
    draft_n: int = 0                              # prompt-lookup draft length (0 = off)
    drafted: int = 0                              # draft tokens proposed / accepted, for the stats
    accepted: int = 0


class TorchBatchEngine:
    def __init__(self, model, tokenizer, n_slots: int, n_ctx: int, n_batch: int, eos: set[int], device):
        self.model, self.tokenizer, self.n_ctx, self.n_batch = model, tokenizer, n_ctx, n_batch
        self.eos, self.device = eos, device
        self.slots = [TorchSlot(i) for i in range(n_slots)]
        self.vocab = model.get_output_embeddings().weight.shape[0]
        self.grammar_tokenizer = None  # torch_grammar.GrammarTokenizer, built on the first JSON request

    # --- slots ---------------------------------------------------------------------
    def free_slot(self, prompt: list[int]) -> int | None:
        return best_free_slot(self.slots, prompt)

    def start(self, seq: int, prompt: list[int], params: GenParams, seed: int, draft_n: int = 0) -> tuple[int, int]:
        """Prefill `prompt` into slot `seq` (reusing its cached prefix); sample and return the first token."""
        import torch

        slot = self.slots[seq]
        slot.busy, slot.params, slot.seen, slot.scored = True, params, list(prompt), []
        slot.constraint, slot.draft_n, slot.drafted, slot.accepted = None, draft_n, 0, 0
        if params.json_schema is not None:
            from .torch_grammar import GrammarTokenizer, JsonConstraint

            if self.grammar_tokenizer is None:
                self.grammar_tokenizer = GrammarTokenizer(self.tokenizer, self.vocab, self.eos)
            slot.constraint = JsonConstraint(self.grammar_tokenizer, params.json_schema)
        keep = min(common_prefix(slot.ids, prompt), len(prompt) - 1)
        cache = self._cache_of(slot, keep)
        slot.ids = slot.ids[:keep]
        logits = None
        with torch.inference_mode():
            pending = prompt[keep:]
            for i in range(0, len(pending), self.n_batch):
                chunk = pending[i:i + self.n_batch]
                out = self.model(input_ids=torch.tensor([chunk], device=self.device), past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                slot.ids.extend(chunk)
                logits = out.logits[0, -1].float().cpu()
        slot.layers = [(layer.keys, layer.values) for layer in cache.layers]
        slot.generator = None
        if params.temperature > 0:
            slot.generator = torch.Generator()
            slot.generator.manual_seed(seed)
        token = self._sample(slot, logits)
        return token, keep

    def step(self, seqs: list[int]) -> dict[int, list[int]]:
        """One forward pass for every slot in `seqs`: each slot's last token in, its next token out
        (a stream alone with drafting on also checks its drafted tokens in that pass)."""
        import torch
        from transformers import DynamicCache

        if len(seqs) == 1 and self.slots[seqs[0]].draft_n:
            return self._drafted_step(self.slots[seqs[0]])
        slots = [self.slots[s] for s in seqs]
        longest = max(len(s.ids) for s in slots)
        cache = DynamicCache()
        for i in range(len(slots[0].layers)):
            if len(slots) == 1:  # one stream: its own cache as it is, no copy
                keys, values = slots[0].layers[i]
            else:
                keys = torch.cat([self._left_pad(s.layers[i][0], longest) for s in slots])
                values = torch.cat([self._left_pad(s.layers[i][1], longest) for s in slots])
            cache.update(keys, values, i)
        mask = torch.zeros((len(slots), longest + 1), dtype=torch.long, device=self.device)
        for row, s in enumerate(slots):
            mask[row, longest - len(s.ids):] = 1
        positions = torch.tensor([[len(s.ids)] for s in slots], device=self.device)
        tokens = torch.tensor([[s.last] for s in slots], device=self.device)
        with torch.inference_mode():
            out = self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1].float().cpu()
        made = {}
        for row, s in enumerate(slots):
            pad = longest - len(s.ids)
            s.layers = [(layer.keys[row:row + 1, :, pad:], layer.values[row:row + 1, :, pad:])
                        for layer in cache.layers]
            s.ids.append(s.last)
            made[s.seq] = [self._sample(s, logits[row])]
        return made

    def release(self, seq: int) -> None:
        slot = self.slots[seq]
        slot.busy, slot.generator, slot.params, slot.last, slot.constraint = False, None, None, None, None

    def take_scores(self, seq: int) -> list:
        """(token, logprob, top alternatives) for each token sampled since the last call (empty when off)."""
        slot = self.slots[seq]
        scored, slot.scored = slot.scored, []
        return scored

    def token_bytes(self, token: int) -> bytes:
        return self.tokenizer.decode([token]).encode()

    def forget(self) -> None:
        for slot in self.slots:
            slot.ids, slot.layers = [], None

    def is_end(self, token: int) -> bool:
        return token in self.eos

    def detokenizer(self):
        from .transformers_backend import IncrementalDetokenizer

        return IncrementalDetokenizer(self.tokenizer)

    def _drafted_step(self, slot: TorchSlot) -> dict[int, list[int]]:
        """Prompt-lookup speculative decoding for one stream: feed its last token and the tokens that
        followed the same three tokens earlier, score them all in one forward pass, and sample at each
        position in order while the samples match the draft. The text is what it would be without
        drafting (the sampler sees the same logits in the same order); the cache keeps only what was
        accepted."""
        import torch
        from transformers import DynamicCache

        from .llama_batch import lookup_draft

        draft = lookup_draft(slot.ids + [slot.last], slot.draft_n)[:max(0, self.n_ctx - len(slot.ids) - 2)]
        feed = [slot.last, *draft]
        cache = DynamicCache()
        for i, (keys, values) in enumerate(slot.layers):
            cache.update(keys, values, i)
        positions = torch.arange(len(slot.ids), len(slot.ids) + len(feed), device=self.device).unsqueeze(0)
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([feed], device=self.device), position_ids=positions,
                             past_key_values=cache, use_cache=True, logits_to_keep=len(feed))
        logits = out.logits[0].float().cpu()
        made = []
        for j in range(len(feed)):
            token = self._sample(slot, logits[j])
            made.append(token)
            if j + 1 < len(feed) and token != feed[j + 1]:
                break  # the draft went wrong here: `token` is the right next one
        slot.drafted += len(feed) - 1
        slot.accepted += len(made) - 1
        keep = len(slot.ids) + len(made)  # the fed tokens up to the last accepted one
        slot.layers = [(layer.keys[:, :, :keep], layer.values[:, :, :keep]) for layer in cache.layers]
        slot.ids.extend(feed[:len(made)])
        slot.last = made[-1]
        return {slot.seq: made}

    # --- helpers -------------------------------------------------------------------
    def _cache_of(self, slot: TorchSlot, keep: int):
        """A DynamicCache holding the first `keep` tokens of the slot's cache (empty when none)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        if keep and slot.layers:
            for i, (k, v) in enumerate(slot.layers):
                cache.update(k[:, :, :keep].contiguous(), v[:, :, :keep].contiguous(), i)
        return cache

    @staticmethod
    def _left_pad(t, length: int):
        import torch

        missing = length - t.shape[2]
        if not missing:
            return t
        return torch.cat([t.new_zeros((*t.shape[:2], missing, t.shape[3])), t], dim=2)

    def _sample(self, slot: TorchSlot, logits) -> int:
        import torch

        from .torch_sampling import needs_history, sample_next

        p = slot.params
        history = torch.tensor(slot.seen) if needs_history(p) else torch.empty(0, dtype=torch.long)
        raw = logits
        if slot.constraint is not None:
            logits = slot.constraint.mask(logits)
        token = sample_next(logits, p, history, slot.generator)
        if slot.constraint is not None:
            slot.constraint.accept(token)
        if p.logprobs is not None:
            from .logprobs import scores_of

            slot.scored.append(scores_of(raw.numpy(), token, p.logprobs))
        slot.seen.append(token)
        slot.last = token
        return token
