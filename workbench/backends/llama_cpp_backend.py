"""llama.cpp backend (llama-cpp-python) for GGUF files.

Loads the model into one llama.cpp context with a sequence per parallel slot and hands
the worker's scheduler a `LlamaBatchEngine` (llama_batch.py): llama.cpp's own
multi-sequence batch API, one decode for every active request, each slot reusing the KV
cache of its last prompt's unchanged prefix. The chat template comes from the GGUF
metadata and renders in our sandbox (`chat_template.py`).
"""

from __future__ import annotations

import os

from ..chat_template import prompt_text
from ..detect import Detection
from ..errors import ContextLengthExceeded, GenerationError, LoadError, WorkbenchError, brief
from ..options import GenerationRequest, LoadOptions
from .base import Backend, ModelInfo, check_token_ids, physical_cores, too_long_to_embed
from .llama_batch import LlamaBatchEngine

# llama.cpp ggml type ids for the KV cache.
_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}


def gpu_offload_supported() -> bool:
    """True when this llama.cpp build can put layers on a local GPU (an RPC-enabled build alone makes
    llama_supports_gpu_offload() true, so the devices are counted instead)."""
    from .ggml_devices import local_gpu_count

    return local_gpu_count() > 0


def _rpc_tensor_split(options: LoadOptions, n_local_gpus: int) -> list[float] | None:
    """Registers the load's RPC servers in this (worker) process and returns llama.cpp's tensor split
    for the plan: layers per device in llama.cpp's order, each server first, then the local GPUs (the
    plan uses the first)."""
    from ..rpc import check_reachable, parse_endpoints
    from .ggml_devices import add_rpc_servers

    endpoints = parse_endpoints(options.rpc_servers)
    for endpoint in endpoints:
        check_reachable(endpoint)  # ggml aborts the process on a server that is down
    add_rpc_servers(endpoints)
    planned = list(options.tensor_split or ())
    if not any(planned):
        return None
    remote, local = planned[:len(endpoints)], planned[len(endpoints):]
    return [float(n) for n in remote + (local + [0] * n_local_gpus)[:n_local_gpus]]


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


def _construct(llama_cpp, n_seq_max: int, **kwargs):
    """`Llama(**kwargs)` with `n_seq_max` sequences and without compiling the GGUF's chat templates.

    llama-cpp-python has no argument for the number of sequences, so its default context
    parameters are wrapped while the context is made (and restored right after).
    """
    import llama_cpp.llama_chat_format as chat_format
    from llama_cpp import llama_cpp as lib

    original_formatter, original_params = chat_format.Jinja2ChatFormatter, lib.llama_context_default_params

    def params_with_sequences():
        params = original_params()
        params.n_seq_max = n_seq_max
        params.kv_unified = False  # each sequence attends only to its own cells
        return params

    chat_format.Jinja2ChatFormatter = _UnusedChatFormatter
    lib.llama_context_default_params = params_with_sequences
    try:
        return llama_cpp.Llama(**kwargs)
    finally:
        chat_format.Jinja2ChatFormatter = original_formatter
        lib.llama_context_default_params = original_params


EMBED_CTX = 2048  # tokens per text in the embedding context (longer texts are refused)


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(self):
        self.llm = None
        self.template: str | None = None
        self.bos = self.eos = ""
        self.add_bos = True
        self.engine: LlamaBatchEngine | None = None
        self.embedder = None  # a llama_cpp.Llama with embeddings on, opened by the first embed()

    def load(self, detection: Detection, options: LoadOptions) -> ModelInfo:
        import llama_cpp

        if options.adapter:
            raise LoadError("LoRA adapters from the Training tab load on Transformers models; load the model's "
                            "Transformers form with the adapter, or export the merged model to GGUF.")
        n_threads = options.n_threads or physical_cores()
        from .ggml_devices import local_gpu_count

        n_local_gpus = local_gpu_count()
        gpu = n_local_gpus > 0
        split = _rpc_tensor_split(options, n_local_gpus) if options.rpc_servers else None
        n_gpu_layers = options.n_gpu_layers
        if n_gpu_layers is None:
            n_gpu_layers = -1 if gpu or options.rpc_servers else 0
        kv_type = _KV_TYPES[options.cache_type]
        if options.cache_type != "f16" and not options.flash_attn:
            raise WorkbenchError("A quantized KV cache needs flash attention in llama.cpp; turn flash attention on or use f16.")
        try:
            slots = max(options.parallel, 1)
            self.llm = _construct(
                llama_cpp,
                slots,
                model_path=detection.path,
                n_gpu_layers=n_gpu_layers,
                tensor_split=split,
                n_ctx=options.n_ctx * slots,
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
        self.path, self.n_gpu_layers, self.n_threads, self.embedder = detection.path, n_gpu_layers, n_threads, None
        vocab = self.llm._model
        self.bos = self._piece(vocab.token_bos())
        self.eos = self._piece(vocab.token_eos())
        self.add_bos = bool(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true")
        n_ctx = int(llama_cpp.llama_n_ctx_seq(self.llm._ctx.ctx))
        self.engine = LlamaBatchEngine(self.llm, slots, n_ctx, options.n_batch)
        return ModelInfo(
            backend=self.name,
            path=detection.path,
            format=detection.format,
            n_ctx=n_ctx,
            device=(("cuda+rpc" if gpu else "cpu+rpc") if options.rpc_servers and n_gpu_layers != 0
                    else "cuda" if gpu and n_gpu_layers != 0 else "cpu"),
            dtype=detection.quantization or "gguf",
            n_threads=n_threads,
            chat_template=bool(self.template),
            details={"n_gpu_layers": n_gpu_layers, "gpu_offload_supported": gpu, "cache_type": options.cache_type,
                     "rpc_servers": options.rpc_servers, "tensor_split": split},
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

    def batch_engine(self) -> LlamaBatchEngine:
        """The scheduler runs every generation through this (continuous batching)."""
        return self.engine

    def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """Mean-pooled embeddings from a second llama.cpp context made for them (on first use; the
        weights are the same mapped file, so it costs a context, not another copy of the model).
        Token ids are embedded as the text they decode to (llama-cpp-python embeds text)."""
        import llama_cpp

        if self.embedder is None:
            try:
                size = min(self.engine.n_ctx, EMBED_CTX)
                self.embedder = llama_cpp.Llama(model_path=self.path, embedding=True, n_ctx=size, n_batch=size,
                                                n_ubatch=size,
                                                n_gpu_layers=self.n_gpu_layers, n_threads=self.n_threads,
                                                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN, verbose=False)
            except (ValueError, RuntimeError, OSError) as e:
                raise GenerationError(f"llama.cpp could not open an embedding context ({brief(e)}).") from e
        texts = [t if isinstance(t, str) else self.llm.detokenize(check_token_ids(i, t, self.llm.n_vocab()),
                                                                     special=True).decode("utf-8", errors="replace")
                 for i, t in enumerate(texts)]
        counts = [len(self.embedder.tokenize(text.encode(), add_bos=True)) for text in texts]
        for i, n in enumerate(counts):  # refused whole, as OpenAI does, rather than cut
            if n > self.embedder.n_ctx():
                raise ContextLengthExceeded(too_long_to_embed(i, n, self.embedder.n_ctx()))
        vectors = [[float(x) for x in self.embedder.embed(text, truncate=True)] for text in texts]  # one at a time
        return vectors, sum(counts)

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
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.llm is not None:
            self.llm.close()
            self.llm = None
        if getattr(self, "embedder", None) is not None:
            self.embedder.close()
            self.embedder = None

