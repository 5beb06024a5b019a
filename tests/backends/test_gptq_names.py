"""A real AutoGPTQ-era folder whose weights carry a model's own name (not gptq_model-4bit-128g) loads and
answers: detection picks the weights from the folder, the loader shows them to GPTQModel (gptq_layout.py)."""

from __future__ import annotations

import json
import os
import shutil

from tests.conftest import CAPITAL_QUESTION
from workbench.options import GenerationRequest, GenParams, LoadOptions
from workbench.paths import Paths
from workbench.services.model_service import ModelService

ODD_NAME = "SmolLM2-135M-GPTQ-4bit-128g.no-act-order.safetensors"


def test_autogptq_folder_with_a_models_own_weight_name_loads(sample_gptq, tmp_path):
    folder = tmp_path / "odd-gptq"
    shutil.copytree(sample_gptq, folder)
    os.rename(folder / "model.safetensors", folder / ODD_NAME)
    config = json.loads((folder / "config.json").read_text())
    config.pop("quantization_config", None)  # AutoGPTQ-era: only quantize_config.json says GPTQ
    (folder / "config.json").write_text(json.dumps(config))
    service = ModelService(Paths(str(tmp_path)))
    try:
        info = service.load(str(folder), options=LoadOptions(n_ctx=1024))
        assert info.backend == "gptq" and info.detection.weight_files == (ODD_NAME,)
        reply = service.complete(GenerationRequest(messages=CAPITAL_QUESTION, params=GenParams(temperature=0,
                                                                                              max_tokens=24)))
        assert "Paris" in reply.text
    finally:
        service.close()
    assert ODD_NAME in os.listdir(folder) and "model.safetensors" not in os.listdir(folder)  # nothing renamed
