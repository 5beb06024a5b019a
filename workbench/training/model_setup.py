"""The model and tokenizer a run trains: a LoRA-wrapped Transformers model, or a new small GPT.

LoRA runs load the base model from its safetensors folder in float32 (CPU training in
half precision is slower here and less stable) and wrap it with peft. A GPTQ base model
loads through GPTQModel (its torch kernel on CPU, which needs bf16) and peft puts the
LoRA beside the quantized layers, which stay frozen. Scratch runs build a
Llama-architecture model (the layout every backend and the GGUF converter understand) of
the size the user chose, with either a byte-level tokenizer (256 byte tokens plus a few
special ones, nothing to download) or the tokenizer of a model the user has.
"""

from __future__ import annotations

import os

from ..chat_template import CHATML_TEMPLATE
from ..detect import GGUF, GPTQ, detect
from .config import BYTE_TOKENIZER, LORA, TrainConfig
from .dataset import DatasetError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


class TrainSetupError(DatasetError):
    """The model or tokenizer for a run cannot be prepared."""


def check_base_model(path: str) -> None:
    """Refuse models LoRA cannot train here (by the capability of the backend that loads them), with the way forward."""
    from ..backends.registry import default_registry

    registry = default_registry()
    detection = registry.detect(path)
    if registry.default_for(detection.format).capabilities.can_train:
        return
    name = os.path.basename(path)
    if detection.format == GGUF:
        raise TrainSetupError(
            f"{name} is a GGUF file; make a Transformers copy first (Training tab: Make a Transformers copy, "
            f"or `python -m workbench convert {name} --to transformers`) and train that."
        )
    raise TrainSetupError(f"{name} is a {detection.format} model, which LoRA cannot train; "
                          "train a Transformers model folder instead.")


def load_gptq_for_training(path: str):
    """A GPTQ model whose quantized layers peft can wrap with LoRA (GPTQModel's torch kernel on CPU, bf16)."""
    import torch

    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    cuda = torch.cuda.is_available()
    if not cuda:
        torch._dynamo.config.disable = True  # the torch kernel recompiles per shape otherwise
    from gptqmodel import BACKEND, GPTQModel

    qmodel = GPTQModel.load(path, backend=BACKEND.AUTO if cuda else BACKEND.TORCH, device="cuda" if cuda else "cpu",
                            dtype=torch.float16 if cuda else torch.bfloat16, trust_remote_code=False)
    return qmodel.model


def byte_level_tokenizer():
    """A byte-level BPE tokenizer with no merges: every UTF-8 byte is a token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=SPECIALS[0], pad_token=SPECIALS[3])
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIALS[1:3]})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def load_tokenizer(config: TrainConfig):
    from transformers import AutoTokenizer

    if config.method == LORA:
        source = config.base_model
    elif config.tokenizer == BYTE_TOKENIZER:
        return byte_level_tokenizer()
    else:
        source = config.tokenizer
    if os.path.isfile(source):
        raise TrainSetupError(f"Take the tokenizer from a Transformers model folder, not the file {os.path.basename(source)}.")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - any loader failure is reported in one sentence
        raise TrainSetupError(f"Cannot load the tokenizer of {os.path.basename(source)} ({type(e).__name__}).") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def chat_template_of(tokenizer) -> str | None:
    return getattr(tokenizer, "chat_template", None) or None


def build_model(config: TrainConfig, tokenizer):
    """The torch model to train: peft-wrapped base model, or a freshly initialised small GPT."""
    import torch

    if config.method == LORA:
        from transformers import AutoModelForCausalLM

        from ..engine_logging import import_quietly

        peft = import_quietly("peft")
        LoraConfig, get_peft_model = peft.LoraConfig, peft.get_peft_model

        check_base_model(config.base_model)
        if detect(config.base_model).format == GPTQ:
            model = load_gptq_for_training(config.base_model)
        else:
            model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=torch.float32, trust_remote_code=False)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [m for m in config.target_modules if m not in names and m != "all-linear"]
        if missing:
            raise TrainSetupError(
                f"The model has no module named {', '.join(missing)}; target some of "
                f"{', '.join(sorted(n for n in names if n.endswith('proj'))) or 'its linear layers'}."
            )
        targets = "all-linear" if config.target_modules == ["all-linear"] else list(config.target_modules)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        return get_peft_model(model, lora)

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.n_embd,
        intermediate_size=config.n_embd * 8 // 3 // 8 * 8 or 8,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_head,
        max_position_embeddings=config.cutoff_len,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>") if tokenizer.chat_template == CHATML_TEMPLATE
        else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(cfg)


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
