"""GGUF forms of bench/arch_models.py's models, made with llama.cpp's own converter (issue 15).

    .venv/bin/python bench/arch_gguf.py MODEL_FOLDER OUT.gguf [--outtype q8_0]

Those models carry the sample's GPT-2-style tokenizer (SmolLM2's). llama.cpp's converter accepts it
for a Llama layout but not for other architectures: for Qwen2 it reads it through Qwen2's own
tokenizer class (a different pre-tokenizer hash), and for Phi-3 and Gemma it wants a sentencepiece
model that only the original models ship. Here every architecture's vocabulary is written the way the
converter writes the sample's (GPT-2 BPE from tokenizer.json, pre-tokenizer "smollm"); tensors,
hyperparameters and layout are the converter's own, which is what the memory plan reads.
"""

from __future__ import annotations

import os
import sys

CONVERTER_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             ".venv", "share", "llama.cpp-convert")


def main(argv: list[str]) -> None:
    sys.path.insert(0, CONVERTER_DIR)
    import convert_hf_to_gguf
    import conversion
    from conversion import ModelBase, base

    conversion.load_all_models()  # the architectures' modules load lazily otherwise, after the patch

    def sample_vocab(self) -> None:
        self._set_vocab_gpt2()

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "smollm"
    for classes in ModelBase._model_classes.values():
        for cls in classes.values():
            if "set_vocab" in vars(cls):
                cls.set_vocab = sample_vocab
    model, out, *rest = argv
    # The name is neutral: llama.cpp sets Phi-3's own special-token rules by a name containing "phi3",
    # and those look up tokens (</s>, <unk>) that the sample's vocabulary does not have.
    sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out, "--model-name", "random-weights test model",
                *(rest or ["--outtype", "q8_0"])]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
