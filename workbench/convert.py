"""Model conversions: GGUF -> Transformers folder, Transformers folder -> 4-bit GPTQ.

GGUF is dequantized by transformers, and the copy is checked against the source before it
is kept: the next-token choices of both (the GGUF run by llama.cpp) over a short text must
agree, since transformers' GGUF loader silently builds wrong models for some architectures
(mixtures of experts). GPTQ quantization runs GPTQModel on the CPU (or
GPU when present) with calibration text from a file or a built-in sample. Both report
progress through a callback, and write into a temporary folder that is renamed into
place only when complete, so a failed conversion leaves no half-written model.
Runs in the calling process (the CLI); heavy imports happen inside the functions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from .detect import GGUF, TRANSFORMERS, detect
from .engine_logging import quiet_engines
from .errors import ConversionError, WorkbenchError, brief
from .gguf_check import MIN_AGREEMENT, gguf_agreement, standalone_detail

Progress = Callable[..., None]  # progress(message) or progress(message, fraction 0..1)

# Calibration text used when the user gives none: varied, plain English prose and Q&A.
BUILTIN_CALIBRATION = [
    "The capital of France is Paris. Paris is known for the Eiffel Tower, the Louvre and its cafes.",
    "Water boils at 100 degrees Celsius at sea level and freezes at 0 degrees Celsius.",
    "To make a cup of tea, boil water, pour it over the tea leaves and wait three minutes.",
    "The quick brown fox jumps over the lazy dog. This sentence contains every letter of the alphabet.",
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon dioxide and water.",
    "In computer science, a linked list is a linear collection of data elements whose order is not given by their physical placement in memory.",
    "User: What is the largest planet in our solar system?\nAssistant: Jupiter is the largest planet in our solar system.",
    "User: How many days are in a leap year?\nAssistant: A leap year has 366 days.",
    "The history of the Roman Empire spans more than a thousand years, from the founding of the city to the fall of Constantinople.",
    "Machine learning models learn patterns from data. Training minimizes a loss function with gradient descent.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "The mitochondria is the powerhouse of the cell, producing energy in the form of ATP.",
    "Shakespeare wrote many plays, including Hamlet, Macbeth, Romeo and Juliet, and A Midsummer Night's Dream.",
    "A healthy breakfast might include oatmeal, fruit, yogurt and a glass of orange juice.",
    "The Pacific Ocean is the largest and deepest of Earth's five oceanic divisions.",
    "User: Translate 'good morning' into Spanish.\nAssistant: 'Good morning' in Spanish is 'buenos dias'.",
]


def check_copy(gguf_path: str, model, tokenizer, progress: Progress = print) -> None:
    """Refuse a Transformers copy whose next-token choices do not match the GGUF it came from."""
    checked = gguf_agreement(gguf_path, model, tokenizer)
    name = os.path.basename(gguf_path)
    if checked is None:
        progress("Not checked against the GGUF: llama-cpp-python is not installed.")
        return
    agreement, positions = checked
    progress(f"Checked against {name}: the copy picks the same next token at {agreement:.0%} of {positions} positions.")
    if agreement < MIN_AGREEMENT:
        raise ConversionError(
            f"The Transformers copy of {name} does not match it (the same next token at only {agreement:.0%} of "
            f"{positions} positions, a faithful copy agrees at 90% or more), so it was not saved: transformers' GGUF "
            "loader does not convert this architecture correctly; use the GGUF with llama.cpp, or the model's "
            "original safetensors.")


def _prepare_output(out: str) -> str:
    out = os.path.abspath(out)
    if os.path.exists(out) and os.listdir(out):
        raise ConversionError(f"{out} already exists and is not empty; choose a new output folder.")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".converting-", dir=parent)


def _finish(tmp: str, out: str) -> str:
    out = os.path.abspath(out)
    if os.path.isdir(out):
        os.rmdir(out)  # empty, checked in _prepare_output
    os.replace(tmp, out)
    return out


def gguf_to_transformers(src: str, out: str, dtype: str = "bfloat16", progress: Progress = print) -> str:
    """Dequantize the GGUF file `src` into a Transformers safetensors folder `out`."""
    detection = detect(src)
    if detection.format != GGUF:
        raise ConversionError(f"{src} is a {detection.format} model, not GGUF; --to transformers converts GGUF files.")
    tmp = _prepare_output(out)
    quiet_engines()
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, name = os.path.dirname(detection.path), os.path.basename(detection.path)
        progress(f"Reading and dequantizing {name} ({detection.quantization}, {detection.parameter_count:,} parameters)...")
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        progress("Comparing the copy's next-token choices with the GGUF's...")
        check_copy(detection.path, model, tokenizer, progress)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            # transformers refuses to save a model that still carries the GGUF quantizer.
            quantizer.remove_quantization_config(model)
        progress(f"Writing safetensors ({dtype}) to {out}...")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    except WorkbenchError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        detail = standalone_detail(e, detection.architecture)
        raise ConversionError(f"Converting {os.path.basename(src)} to Transformers failed ({type(e).__name__}: "
                              f"{detail}); use the GGUF with llama.cpp instead.") from e
    result = _finish(tmp, out)
    progress(f"Done: {result}")
    return result


def read_calibration(path: str | None, limit: int = 128) -> list[str]:
    """Calibration samples: paragraphs of the text file at `path`, or the built-in sample."""
    if path is None:
        return list(BUILTIN_CALIBRATION)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"Cannot read calibration text {path} ({e}); give a UTF-8 text file.") from e
    samples = [p.strip() for p in text.split("\n\n") if len(p.strip()) >= 20]
    if len(samples) < 4:
        raise ConversionError(f"{path} has fewer than 4 paragraphs of calibration text; give a longer file.")
    return samples[:limit]


def transformers_to_gptq(
    src: str,
    out: str,
    bits: int = 4,
    group_size: int = 128,
    calibration_file: str | None = None,
    progress: Progress = print,
) -> str:
    """Quantize the Transformers folder `src` to GPTQ with GPTQModel; write it to `out`."""
    detection = detect(src)
    if detection.format != TRANSFORMERS:
        raise ConversionError(
            f"{src} is a {detection.format} model; --to gptq quantizes a Transformers folder "
            "(convert a GGUF with --to transformers first)."
        )
    if bits not in (2, 3, 4, 8):
        raise ConversionError(f"GPTQ supports 2, 3, 4 or 8 bits, not {bits}.")
    calibration = read_calibration(calibration_file)
    tmp = _prepare_output(out)
    # GPTQModel's CPU path fails on small machines unless its worker count is set.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
    quiet_engines()
    try:
        from gptqmodel import GPTQModel, QuantizeConfig

        progress(f"Loading {os.path.basename(detection.path)} for quantization...")
        model = GPTQModel.load(detection.path, QuantizeConfig(bits=bits, group_size=group_size), trust_remote_code=False)
        progress(f"Quantizing {detection.n_layers} layers to {bits}-bit (group {group_size}) on {len(calibration)} samples...")
        model.quantize(calibration, batch_size=1)
        progress(f"Writing GPTQ model to {out}...")
        model.save(tmp)
    except WorkbenchError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(f"Quantizing {os.path.basename(src)} to GPTQ failed ({type(e).__name__}: {brief(e)}).") from e
    result = _finish(tmp, out)
    progress(f"Done: {result}")
    return result
