"""Exporting a training result: merge a LoRA adapter into its base model, and write GPTQ or GGUF.

- merged Transformers folder: peft's merge of the adapter into the base weights, saved as
  safetensors in the base model's dtype;
- GPTQ: GPTQModel quantizes the merged folder (`convert.transformers_to_gptq`);
- GGUF: llama.cpp's own converter (`convert_hf_to_gguf.py`), taken by scripts/setup.sh
  from the llama-cpp-python source package we already build, run as a subprocess with the
  gguf-py that ships beside it. Tokenizers it does not know (the byte-level one of scratch
  models) are refused by it, and that refusal is passed on in one sentence.
Every output is written to a temporary name and renamed into place when complete.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

from ..convert import _finish, _prepare_output, transformers_to_gptq
from ..errors import ConversionError, WorkbenchError, brief

Progress = Callable[..., None]  # progress(message) or progress(message, fraction 0..1)
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")


def gguf_converter_dir() -> str:
    """Where setup.sh put llama.cpp's converter (override with WORKBENCH_GGUF_CONVERTER)."""
    default = os.path.join(sys.prefix, "share", "llama.cpp-convert")
    return os.environ.get("WORKBENCH_GGUF_CONVERTER", default)


def merge_adapter(base: str, adapter: str, out: str, progress: Progress = print) -> str:
    """Fold the LoRA adapter at `adapter` into the Transformers model at `base`; save to `out`."""
    if not os.path.isfile(os.path.join(adapter, "adapter_model.safetensors")):
        raise ConversionError(f"{adapter} holds no safetensors LoRA adapter; finish a LoRA run first.")
    from ..detect import GPTQ, detect

    if detect(base).format == GPTQ:
        raise ConversionError("An adapter trained on a GPTQ model cannot be merged into its quantized weights; use it "
                              "with that model (Load in Chat, or --adapter), or train on the Transformers form to export.")
    tmp = _prepare_output(out)
    try:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        progress(f"Loading {os.path.basename(base)} and the adapter...")
        model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", trust_remote_code=False)
        dtype = model.dtype
        model = PeftModel.from_pretrained(model.float(), adapter).merge_and_unload().to(dtype)
        progress(f"Writing the merged model ({str(dtype).replace('torch.', '')}) to {out}...")
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(adapter if os.path.isfile(os.path.join(adapter, "tokenizer_config.json")) else base,
                                      trust_remote_code=False).save_pretrained(tmp)
    except WorkbenchError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:  # noqa: BLE001 - reported in one sentence, nothing half-written is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConversionError(f"Merging the adapter failed ({type(e).__name__}: {brief(e)}).") from e
    result = _finish(tmp, out)
    progress(f"Done: {result}")
    return result


def to_gguf(src: str, out_file: str, outtype: str = "q8_0", progress: Progress = print) -> str:
    """Convert the Transformers folder `src` to one GGUF file with llama.cpp's converter."""
    if outtype not in GGUF_TYPES:
        raise ConversionError(f"GGUF type {outtype!r} is not offered; choose one of {', '.join(GGUF_TYPES)}.")
    converter = gguf_converter_dir()
    script = os.path.join(converter, "convert_hf_to_gguf.py")
    if not os.path.isfile(script):
        raise ConversionError("llama.cpp's GGUF converter is not installed; run ./start.sh (it unpacks it) and try again.")
    out_file = os.path.abspath(out_file)
    if os.path.exists(out_file):
        raise ConversionError(f"{out_file} already exists; choose a new file name.")
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".converting-", suffix=".gguf", dir=os.path.dirname(out_file))
    os.close(fd)
    progress(f"Converting {os.path.basename(src)} to GGUF ({outtype}) with llama.cpp's converter...")
    env = dict(os.environ, PYTHONPATH=os.path.join(converter, "gguf-py"), NO_LOCAL_GGUF="")
    from ..jobs import ProgressBars

    proc = subprocess.Popen([sys.executable, script, src, "--outfile", tmp, "--outtype", outtype],
                            cwd=converter, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = io.StringIO()
    bars = ProgressBars(output, lambda desc, fraction: progress(f"GGUF: {desc}", fraction))
    for chunk in iter(lambda: proc.stdout.read(512), ""):  # its tqdm bars ("Writing: 41%|") as they come
        bars.write(chunk)
    proc.wait()
    if proc.returncode != 0:
        os.unlink(tmp)
        lines = [ln for ln in output.getvalue().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ConversionError(f"llama.cpp's converter could not convert {os.path.basename(src)} ({reason[:300]}).")
    os.replace(tmp, out_file)
    progress(f"Done: {out_file}")
    return out_file


def export(kind: str, source: str, out: str, adapter: str | None = None, progress: Progress = print, **options) -> str:
    """One entry point for the UI and CLI: kind is transformers, gptq or gguf.

    With `adapter`, `source` is its base model and the merge happens first (into `out` for
    kind transformers, into a temporary folder otherwise).
    """
    if kind not in ("transformers", "gptq", "gguf"):
        raise ConversionError(f"Export format {kind!r} is unknown; choose transformers, gptq or gguf.")
    scratch = None
    try:
        if adapter:
            if kind == "transformers":
                return merge_adapter(source, adapter, out, progress)
            scratch = tempfile.mkdtemp(prefix=".merge-", dir=os.path.dirname(os.path.abspath(out)))
            source = merge_adapter(source, adapter, os.path.join(scratch, "merged"), progress)
        elif kind == "transformers":
            raise ConversionError("Nothing to export: a model folder is already in Transformers form.")
        if kind == "gptq":
            return transformers_to_gptq(source, out, bits=options.get("bits", 4), group_size=options.get("group_size", 128),
                                        calibration_file=options.get("calibration"), progress=progress)
        return to_gguf(source, out, options.get("outtype", "q8_0"), progress)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
