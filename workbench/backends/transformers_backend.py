"""Transformers backend: safetensors model folders (and GGUF files, dequantized).

Owns loading with dtype, device placement and memory caps (accelerate `max_memory`
plus a disk offload folder), and a lean decode loop over the model's forward pass
with a `DynamicCache` that is kept between requests: the part of the prompt that did
not change since the last turn is not computed again, and a replayed prompt is not
computed at all. The GPTQ backend reuses all of
this and only loads differently.
"""

from __future__ import annotations

import os
import pickle
from typing import Callable, Iterator

from ..chat_template import prompt_text
from ..detect import GGUF, Detection
from ..errors import ContextLengthExceeded, GenerationError, LoadError, WorkbenchError, brief
from ..gguf_check import MIN_AGREEMENT, gguf_agreement, standalone_detail
from ..options import GenerationRequest, LoadOptions
from .base import Backend, DoneEvent, ModelInfo, TokenEvent, check_token_ids, physical_cores, too_long_to_embed
from .decode_loop import common_prefix, run_decode


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text pieces, O(1) per token.

    Decodes a short window (previous piece + new tokens) so that tokenizers which
    change a token's text by context (leading spaces, multi-byte characters) are right.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        text = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """What `add` held back (an incomplete character at the end): the reply ended, so it goes out as is."""
        decode = self.tokenizer.decode
        prefix = decode(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        text = decode(self.ids[self.prefix_offset:], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix):]


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError("device=cuda was asked for but no CUDA GPU is visible; use device auto or cpu.")
    return requested


def resolve_dtype(requested: str, device: str):
    import torch

    if requested == "auto":
        # bf16 ran ~1.65x faster than fp32 on CPU here and keeps fp32's range.
        if device == "cpu":
            return torch.bfloat16
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, requested)


def eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self):
        self.model = None
        self.tokenizer = None
        self.template: str | None = None
        self.n_ctx = 0
        self.n_batch = 512
        self.device = "cpu"
        self._cache = None
        self._cache_ids: list[int] = []
        self._last_prompt: list[int] = []
        self._last_logits = None  # logits at the last prompt position of the previous request
        self._eos: set[int] = set()
        self.engine = None

    # --- loading -------------------------------------------------------------------
    def placement_kwargs(self, options: LoadOptions, device: str) -> dict:
        """accelerate placement that keeps the VRAM and RAM caps (budgets come from the memory plan)."""
        if device == "cpu" and options.max_ram_gib is None:
            return {}
        budget = options.weight_budget or {}
        max_memory = {}
        if device == "cuda":
            import torch

            for i in range(torch.cuda.device_count()):
                if str(i) in budget:
                    max_memory[i] = int(budget[str(i)])
                elif options.max_vram_gib is not None:
                    max_memory[i] = f"{options.max_vram_gib}GiB"
        if "cpu" in budget:
            max_memory["cpu"] = int(budget["cpu"])
        elif options.max_ram_gib is not None:
            max_memory["cpu"] = f"{options.max_ram_gib}GiB"
        kwargs = {"device_map": "auto" if device == "cuda" or max_memory else device}
        if max_memory:
            kwargs["max_memory"] = max_memory
            kwargs["offload_folder"] = options.offload_folder or os.path.join("user_data", "offload")
            os.makedirs(kwargs["offload_folder"], exist_ok=True)
        return kwargs

    def load_model(self, detection: Detection, options: LoadOptions, device: str):
        """Return (model, tokenizer); subclasses load other formats."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"dtype": resolve_dtype(options.dtype, device), "trust_remote_code": False}
        kwargs.update(self.placement_kwargs(options, device))
        folder, extra = detection.path, {}
        if detection.format == GGUF:
            folder, extra = os.path.dirname(detection.path), {"gguf_file": os.path.basename(detection.path)}
        if detection.pickle_weights:
            kwargs["use_safetensors"] = False  # transformers loads .bin with torch.load(weights_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, **kwargs, **extra)
        if "device_map" not in kwargs and device != "cpu":
            model.to(device)
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, **extra)
        return model, tokenizer

    def _check_against_llama_cpp(self, detection: Detection) -> None:
        """Refuse a GGUF that transformers' loader read into a different model than llama.cpp runs."""
        checked = gguf_agreement(detection.path, self.model, self.tokenizer)
        if checked is None or checked[0] >= MIN_AGREEMENT:
            return
        agreement, positions = checked
        self.model = self.tokenizer = None
        raise LoadError(
            f"{os.path.basename(detection.path)} read by transformers does not match the model llama.cpp runs from "
            f"it (the same next token at only {agreement:.0%} of {positions} positions; a faithful reading agrees at "
            "90% or more): transformers' GGUF loader does not read this architecture correctly; load it with "
            "llama.cpp.")

    def load(self, detection: Detection, options: LoadOptions) -> ModelInfo:
        import torch

        n_threads = options.n_threads or physical_cores()
        torch.set_num_threads(n_threads)
        self.device = resolve_device(options.device)
        try:
            self.model, self.tokenizer = self.load_model(detection, options, self.device)
        except WorkbenchError:
            raise
        except pickle.UnpicklingError as e:
            raise LoadError(
                f"{os.path.basename(detection.path)} has pickle weights that hold more than tensors, so the safe "
                "weights_only loader refused them; get a safetensors version of this model."
            ) from e
        except (OSError, ValueError, RuntimeError, KeyError, ImportError, TypeError) as e:
            detail = standalone_detail(e, detection.architecture) if detection.format == GGUF else brief(e)
            raise LoadError(f"{self.name} could not load {os.path.basename(detection.path)} ({detail}).") from e
        if detection.format == GGUF:
            self._check_against_llama_cpp(detection)
        if options.adapter:
            self.model = self.apply_adapter(options.adapter)
        self.model.eval()
        self.template = getattr(self.tokenizer, "chat_template", None) or detection.chat_template
        limit = detection.context_length or options.n_ctx
        self.n_ctx = min(options.n_ctx, limit)
        self.n_batch = options.n_batch
        self._eos = eos_ids(self.model, self.tokenizer)
        self.engine = self._make_engine(max(options.parallel, 1))
        device_map = getattr(self.model, "hf_device_map", None)
        devices = sorted({str(v) for v in device_map.values()}) if device_map else [self.device]
        return ModelInfo(
            backend=self.name,
            path=detection.path,
            format=detection.format,
            n_ctx=self.n_ctx,
            device="+".join(devices),
            dtype=self.describe_dtype(),
            n_threads=n_threads,
            chat_template=bool(self.template),
            details={"device_map": {k: str(v) for k, v in device_map.items()} if device_map else None},
        )

    def _make_engine(self, slots: int):
        """The batch engine (torch_batch.py), or None where its padded batches do not apply:
        sliding-window attention caches, or layers offloaded to disk."""
        from .torch_batch import TorchBatchEngine

        config = self.model.config
        sliding = getattr(config, "sliding_window", None) or "sliding_attention" in (getattr(config, "layer_types",
                                                                                           None) or ())
        device_map = getattr(self.model, "hf_device_map", None) or {}
        if sliding or "disk" in device_map.values():
            return None
        return TorchBatchEngine(self.model, self.tokenizer, slots, self.n_ctx, self.n_batch, self._eos,
                                self._input_device())

    def batch_engine(self):
        """The scheduler runs generations through this when there is one (see _make_engine)."""
        return self.engine

    merge_adapter = True  # fold LoRA weights into the base weights: generation runs at the base model's speed

    def apply_adapter(self, folder: str):
        """The loaded model with the LoRA adapter in `folder` (safetensors only) applied."""
        if not os.path.isfile(os.path.join(folder, "adapter_config.json")):
            raise LoadError(f"{folder} is not a LoRA adapter folder (no adapter_config.json); pick a finished run.")
        if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
            raise LoadError(f"The adapter in {folder} has no adapter_model.safetensors; only safetensors adapters load.")
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(self.model, folder, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise LoadError(f"The LoRA adapter does not fit this model ({brief(e)}); load the model it was trained on.") from e
        return model.merge_and_unload() if self.merge_adapter else model

    def describe_dtype(self) -> str:
        return str(self.model.dtype).replace("torch.", "")

    # --- generation ----------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        tok = self.tokenizer
        text = prompt_text(request, self.template, tok.bos_token or "", tok.eos_token or "")
        ids = tok.encode(text, add_special_tokens=request.messages is None)
        if not ids:
            raise WorkbenchError("The prompt is empty; type something first.")
        return ids

    def _input_device(self):
        return self.model.get_input_embeddings().weight.device

    def generate(
        self, request: GenerationRequest, cancelled: Callable[[], bool]
    ) -> Iterator[TokenEvent | DoneEvent]:
        import torch
        from transformers import DynamicCache

        p = request.params
        prompt = self.prompt_tokens(request)
        if len(prompt) >= self.n_ctx:
            raise ContextLengthExceeded(
                f"The prompt has {len(prompt)} tokens but the context holds {self.n_ctx}; "
                "shorten the conversation or load the model with a larger context."
            )
        if p.json_schema is not None or p.logprobs is not None:
            raise WorkbenchError("JSON output and logprobs need the batch engine, which this model's layout "
                                 "(sliding-window attention or disk offload) does not allow.")
        budget = min(p.max_tokens, self.n_ctx - len(prompt))
        # A replay of the last prompt (regenerate, the same seed again) reuses that prompt's KV cache
        # and its stored last logits, so it computes exactly what the first run did: same seed, same
        # text, with no forward pass at all before the first token.
        replay = self._last_logits is not None and prompt == self._last_prompt \
            and self._cache_ids[:len(prompt)] == prompt
        cached = len(prompt) if replay else common_prefix(self._cache_ids, prompt[:-1])
        cache = self._cache
        if cache is None or cached == 0:
            cache, cached = DynamicCache(config=self.model.config), 0
        else:
            surplus = cache.get_seq_length() - cached
            if surplus > 0:
                cache.crop(-surplus)  # transformers 5: a negative count removes that many tokens
        self._cache, self._cache_ids = cache, list(prompt[:cached])
        generator = None
        if p.temperature > 0:
            generator = torch.Generator()
            if p.seed is not None:
                generator.manual_seed(p.seed)
            else:
                generator.seed()
        from .torch_sampling import needs_history, sample_next

        device = self._input_device()
        detok = IncrementalDetokenizer(self.tokenizer)
        seen = list(prompt)  # for the repetition penalty
        no_history = torch.empty(0, dtype=torch.long)

        def sampled_tokens(logits):
            """Sample from `logits`, then run the model one token at a time until the consumer stops asking."""
            while True:
                history = torch.tensor(seen) if needs_history(p) else no_history
                token = sample_next(logits, p, history, generator)
                yield token
                seen.append(token)
                out = self.model(input_ids=torch.tensor([[token]], device=device), past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
                self._cache_ids.append(token)
                logits = out.logits[0, -1].float().cpu()

        try:
            with torch.inference_mode():
                logits = self._last_logits if replay else None
                pending = prompt[cached:]
                # The prompt goes in chunks of n_batch tokens, which bounds activation memory on long prompts.
                for i in range(0, len(pending), self.n_batch):
                    chunk = pending[i:i + self.n_batch]
                    out = self.model(input_ids=torch.tensor([chunk], device=device), past_key_values=cache,
                                     use_cache=True, logits_to_keep=1)
                    self._cache_ids.extend(chunk)
                    logits = out.logits[0, -1].float().cpu()
                    if cancelled():
                        yield DoneEvent("cancelled", len(prompt), 0, cached)
                        return
                self._last_prompt, self._last_logits = list(prompt), logits
                reason, n = yield from run_decode(sampled_tokens(logits), self._eos.__contains__, detok.add, p.stop,
                                                  budget, cancelled)
        except RuntimeError as e:
            self._cache, self._cache_ids, self._last_logits = None, [], None
            raise GenerationError(f"{self.name} failed while generating ({brief(e)}); try a shorter prompt or reload.") from e
        yield DoneEvent(reason, len(prompt), n, cached)

    def embed(self, texts: list[str | list[int]]) -> tuple[list[list[float]], int]:
        """Mean of the last hidden state over each text's tokens (the model's own, no extra head); token ids as given."""
        import torch

        vectors, tokens = [], 0
        with torch.inference_mode():
            for i, text in enumerate(texts):
                ids = (self.tokenize(text) if isinstance(text, str)
                       else check_token_ids(i, text, self.model.get_input_embeddings().num_embeddings)) \
                    or [self._eos_or_zero()]
                if len(ids) > self.n_ctx:  # refused whole, as OpenAI does, rather than cut
                    raise ContextLengthExceeded(too_long_to_embed(i, len(ids), self.n_ctx))
                out = self.model(input_ids=torch.tensor([ids], device=self._input_device()), output_hidden_states=True,
                                 use_cache=False, logits_to_keep=1)
                vectors.append(out.hidden_states[-1][0].float().mean(0).cpu().tolist())
                tokens += len(ids)
        return vectors, tokens

    def _eos_or_zero(self) -> int:
        return min(self._eos) if self._eos else 0

    def score_window(self, ids: list[int]) -> float:
        import torch

        from .perplexity import log_softmax_nll

        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([ids], device=self._input_device()), use_cache=False)
        return log_softmax_nll(out.logits[0, :-1].float().cpu().numpy(), ids[1:])

    def unload(self) -> None:
        self.model = self.tokenizer = self._cache = self._last_logits = self.engine = None

