"""GPTQ backend: 4/8-bit GPTQ folders through GPTQModel's kernels.

Loading goes through `GPTQModel.load`, which picks a kernel for the device (the
torch kernel on CPU, Marlin/Exllama on CUDA) and also reads AutoGPTQ-era folders
(`quantize_config.json`); weights under any name (`model_basename`, any group size) are
shown to it through `gptq_layout.loadable_folder`, without renaming the user's files.
Generation is the Transformers backend's decode loop over the loaded model.
AutoGPTQ itself is not used: it is unmaintained and does not import with transformers 5.
"""

from __future__ import annotations

import os

from ..detect import Detection
from ..options import LoadOptions
from .transformers_backend import TransformersBackend, resolve_dtype


class GPTQBackend(TransformersBackend):
    name = "gptq"

    merge_adapter = False  # quantized weights cannot absorb a LoRA; it runs beside them

    def load_model(self, detection: Detection, options: LoadOptions, device: str):
        os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(os.cpu_count() or 1))
        import torch

        if device == "cpu":
            # GPTQModel wraps its torch kernel in torch.compile, which recompiles on every
            # new prompt shape and made the first reply take ~20 s on CPU; eager is faster.
            torch._dynamo.config.disable = True
        from gptqmodel import BACKEND, GPTQModel

        kwargs = self.placement_kwargs(options, device)
        if "device_map" not in kwargs:
            kwargs["device"] = device
        # On CPU the torch kernel is the one that runs every shape: GPTQModel's own CPU pick,
        # TorchAtenLinear, fails when a layer's width is not a multiple of the group size
        # (the sample model: 576 inputs, group 128). On CUDA let GPTQModel pick a faster one.
        backend = BACKEND.TORCH if device == "cpu" else BACKEND.AUTO
        from ..gptq_layout import loadable_folder

        # Detection decided which files are the weights (AutoGPTQ-era names vary); GPTQModel is shown
        # them under the one name it always looks for.
        with loadable_folder(detection) as folder:
            qmodel = GPTQModel.load(
                folder,
                backend=backend,
                dtype=resolve_dtype(options.dtype, device),
                trust_remote_code=False,
                **kwargs,
            )
        self._quant = detection.quantization
        return qmodel.model, qmodel.tokenizer

    def describe_dtype(self) -> str:
        return self._quant or "gptq"
