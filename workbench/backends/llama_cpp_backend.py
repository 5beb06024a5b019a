"""llama.cpp backend (llama-cpp-python) for GGUF files.

Runs a lean decode loop on `Llama.generate()` (token ids in, token ids out) rather
than `create_chat_completion`, which costs about 14% of throughput in its per-token
bookkeeping. The chat template comes from the GGUF metadata and renders in our
sandbox (`chat_template.py`). The KV cache of the prompt prefix that did not change
since the last request is reused, so long chats stay fast.
"""

from __future__ import annotations

import codecs
import os
import random
from typing import Callable, Iterator

from ..chat_template import prompt_text
from ..detect import Detection
from ..errors import GenerationError, LoadError, WorkbenchError, brief
from ..options import GenerationRequest, LoadOptions
from .base import Backend, Capabilities, DoneEvent, ModelInfo, TokenEvent, physical_cores
from .decode_loop import common_prefix, run_decode

# llama.cpp ggml type ids for the KV cache.
_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def gpu_offload_supported() -> bool:
    """True when this llama.cpp build can put layers on a GPU."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class _UnusedChatFormatter:
    """Stands in for llama-cpp-python's Jinja2ChatFormatter while a model loads.

    `Llama()` compiles every chat template in the GGUF with its own Jinja, and Jinja folds
    constant expressions at compile time, so a hostile template (`{{ 'x' * 10**10 }}`)
    exhausts memory before anything renders. We never use its chat handlers: templates
    render in our sandbox (`chat_template.py`), so the compile is skipped.
    """

    def __init__(self, *args, **kwargs):
        pass

    def to_chat_handler(self):
        return None


def _construct_without_chat_handlers(llama_cpp, **kwargs):
    import llama_cpp.llama_chat_format as chat_format

    original = chat_format.Jinja2ChatFormatter
    chat_format.Jinja2ChatFormatter = _UnusedChatFormatter
    try:
        return llama_cpp.Llama(**kwargs)
    finally:
        chat_format.Jinja2ChatFormatter = original


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    capabilities = Capabilities(can_stream=True, can_train=False, supports_n_gpu_layers=True, supports_memory_caps=True)

    def __init__(self):
        self.llm = None
        self.template: str | None = None
        self.bos = self.eos = ""
        self.add_bos = True

    def load(self, detection: Detection, options: LoadOptions) -> ModelInfo:
        import llama_cpp

        if options.adapter:
            raise LoadError("LoRA adapters from the Training tab load on Transformers models; load the model's "
                            "Transformers form with the adapter, or export the merged model to GGUF.")
        n_threads = options.n_threads or physical_cores()
        gpu = gpu_offload_supported()
        n_gpu_layers = options.n_gpu_layers
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu else 0
        kv_type = _KV_TYPES[options.cache_type]
        if options.cache_type != "f16" and not options.flash_attn:
            raise WorkbenchError("A quantized KV cache needs flash attention in llama.cpp; turn flash attention on or use f16.")
        try:
            self.llm = _construct_without_chat_handlers(
                llama_cpp,
                model_path=detection.path,
                n_gpu_layers=n_gpu_layers,
                n_ctx=options.n_ctx,
                n_batch=options.n_batch,
                n_ubatch=min(options.n_batch, 512),
                n_threads=n_threads,
                n_threads_batch=n_threads,
                use_mmap=options.use_mmap,
                use_mlock=options.use_mlock,
                flash_attn=options.flash_attn,
                type_k=kv_type,
                type_v=kv_type,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            raise LoadError(
                f"llama.cpp could not load {os.path.basename(detection.path)} ({brief(e)}); the file may be damaged, "
                "or the context may not fit in memory: lower the context size."
            ) from e
        self.template = detection.chat_template
        vocab = self.llm._model
        self.bos = self._piece(vocab.token_bos())
        self.eos = self._piece(vocab.token_eos())
        self.add_bos = bool(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true")
        return ModelInfo(
            backend=self.name,
            path=detection.path,
            format=detection.format,
            n_ctx=self.llm.n_ctx(),
            device="cuda" if gpu and n_gpu_layers != 0 else "cpu",
            dtype=detection.quantization or "gguf",
            n_threads=n_threads,
            chat_template=bool(self.template),
            details={"n_gpu_layers": n_gpu_layers, "gpu_offload_supported": gpu, "cache_type": options.cache_type},
        )

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """Token ids of the request's prompt, chat-templated when it has messages."""
        text = prompt_text(request, self.template, self.bos, self.eos)
        add_bos = self.add_bos and not (self.bos and text.startswith(self.bos))
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        if not tokens:
            raise WorkbenchError("The prompt is empty; type something first.")
        return tokens

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[TokenEvent | DoneEvent]:
        import llama_cpp

        p = request.params
        prompt = self.prompt_tokens(request)
        n_ctx = self.llm.n_ctx()
        if len(prompt) >= n_ctx:
            raise WorkbenchError(
                f"The prompt has {len(prompt)} tokens but the context holds {n_ctx}; "
                "shorten the conversation or load the model with a larger context."
            )
        budget = min(p.max_tokens, n_ctx - len(prompt))
        self.llm.set_seed(p.seed if p.seed is not None else random.randrange(2**31))
        vocab = self.llm._model.vocab
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            cached = self._prefill(prompt)
            tokens = self.llm.generate(prompt, top_k=p.top_k, top_p=p.top_p, min_p=p.min_p, temp=p.temperature,
                                       repeat_penalty=p.repetition_penalty)
            reason, n = yield from run_decode(
                tokens, lambda t: llama_cpp.llama_vocab_is_eog(vocab, t),
                lambda t: decoder.decode(self.llm.detokenize([t])), p.stop, budget, cancelled,
                lambda: decoder.decode(b"", final=True))
        except RuntimeError as e:
            raise GenerationError(
                f"llama.cpp failed while generating ({brief(e)}); try a shorter prompt or reload the model.") from e
        yield DoneEvent(reason, len(prompt), n, cached)

    def _prefill(self, prompt: list[int]) -> int:
        """Put all but the last prompt token in the KV cache, reusing the prefix already there.

        `Llama.generate` then evaluates the last token alone, every time, so a replayed prompt
        computes exactly the same logits (same seed, same text; greedy stays greedy) whether
        or not it was cached. Returns how many prompt tokens were reused.
        """
        llm = self.llm
        keep = common_prefix(llm.input_ids[: llm.n_tokens], prompt[:-1])
        if keep < llm.n_tokens and not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
            llm.reset()
            keep = 0
        llm.n_tokens = keep
        if len(prompt) - 1 > keep:
            llm.eval(prompt[keep:-1])
        return keep

    def score_window(self, ids: list[int]) -> float:
        """Evaluate the window batch by batch with logits for every position."""
        import llama_cpp
        import numpy as np

        from .perplexity import log_softmax_nll

        llm = self.llm
        if len(ids) > llm.n_ctx():
            raise WorkbenchError(f"The perplexity window ({len(ids)} tokens) is larger than the context ({llm.n_ctx()}).")
        llm._ctx.kv_cache_clear()
        llm.n_tokens = 0  # the next generation must not reuse this KV cache as a prompt prefix
        n_vocab, n_batch, nll = llm.n_vocab(), llm.n_batch, 0.0
        for start in range(0, len(ids), n_batch):
            piece = ids[start:start + n_batch]
            llm._batch.set_batch(piece, n_past=start, logits_all=True)
            llm._ctx.decode(llm._batch)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm._ctx.ctx), shape=(len(piece), n_vocab))
            targets = ids[start + 1:start + 1 + len(piece)]
            nll += log_softmax_nll(logits[:len(targets)], targets)
        llm._ctx.kv_cache_clear()
        return nll

    def unload(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None

