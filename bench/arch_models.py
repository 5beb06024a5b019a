"""Tiny random-weight models of several architectures, built offline, to check the memory plan on more
than the sample's Llama layout (issue 15). Random weights are enough for memory and speed.

    .venv/bin/python bench/arch_models.py OUT_FOLDER TOKENIZER_FOLDER [ARCH...]

writes OUT_FOLDER/<arch>/ (config.json, bf16 model.safetensors) with the tokenizer files of
TOKENIZER_FOLDER (the sample's Transformers form); every vocabulary is at least as large as
the sample's, so any token it makes is valid.
"""

from __future__ import annotations

import os
import shutil
import sys

# name -> (config class, extra config); all about 20-60M parameters in bf16.
COMMON = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8,
              num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=False)
ARCHITECTURES = {
    "qwen2": ("Qwen2Config", dict(vocab_size=151_936, tie_word_embeddings=True)),
    "mistral": ("MistralConfig", dict(vocab_size=50_000, sliding_window=1024)),
    "phi3": ("Phi3Config", dict(vocab_size=50_000)),
    "gemma2": ("Gemma2Config", dict(vocab_size=64_000, head_dim=32, tie_word_embeddings=True)),
    # Gemma 3's converter cuts the embedding to the tokenizer's size: the sample's vocabulary exactly.
    "gemma3": ("Gemma3TextConfig", dict(vocab_size=49_152, head_dim=32, tie_word_embeddings=True,
                                        sliding_window=256)),
    "mixtral": ("MixtralConfig", dict(vocab_size=50_000, num_local_experts=4, num_experts_per_tok=2,
                                      intermediate_size=384)),
    "qwen2_moe": ("Qwen2MoeConfig", dict(vocab_size=50_000, num_experts=4, num_experts_per_tok=2,
                                         moe_intermediate_size=256, shared_expert_intermediate_size=512)),
    # A Llama layout with Qwen's 152k vocabulary: llama.cpp's converter knows the sample's tokenizer for
    # Llama (not for Qwen2), so this is the large-vocabulary case in GGUF form too.
    "llama_152k": ("LlamaConfig", dict(vocab_size=151_936, tie_word_embeddings=True)),
}


def build(out: str, name: str, tokenizer_from: str | None = None) -> str:
    import torch
    import transformers

    cls, extra = ARCHITECTURES[name]
    config = getattr(transformers, cls)(**{**COMMON, **extra})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    folder = os.path.join(out, name)
    model.save_pretrained(folder)
    if tokenizer_from:
        for f in os.listdir(tokenizer_from):
            if f.startswith(("tokenizer", "special_tokens", "chat_template")):
                shutil.copy(os.path.join(tokenizer_from, f), folder)
    return folder


if __name__ == "__main__":
    out, tokenizer_from = sys.argv[1], sys.argv[2]
    for arch in sys.argv[3:] or ARCHITECTURES:
        print(build(out, arch, tokenizer_from), flush=True)
