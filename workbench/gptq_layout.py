"""Which file of a GPTQ folder holds its weights, and a folder GPTQModel can load it from.

AutoGPTQ-era checkpoints name their weights many ways (`model_basename` in
quantize_config.json, `gptq_model-4bit-64g.safetensors`,
`<model>-GPTQ-4bit-128g.no-act-order.safetensors`, sharded with a matching index), while
GPTQModel looks only for `gptq_model-{bits}bit-{group}g` and `model`. Detection decides
the weights from the folder's contents (`gptq_weights`); `loadable_folder` gives the loader
a folder of links where they carry a name GPTQModel finds, so the user's files are never
renamed. It imports no torch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager

from .errors import DetectionError

INDEX_SUFFIX = ".safetensors.index.json"


def gptq_weights(folder: str, quantize_config: dict) -> list[str]:
    """The weight files of a GPTQ folder: the sharded index's files, `model_basename`'s file, or its only
    safetensors file; a clear error when the folder holds several and nothing says which."""
    names = sorted(os.listdir(folder))
    basename = quantize_config.get("model_basename") if isinstance(quantize_config, dict) else None
    indexes = [n for n in names if n.endswith(INDEX_SUFFIX)]
    if isinstance(basename, str) and basename:
        if basename + ".safetensors" in names:
            return [basename + ".safetensors"]
        if basename + INDEX_SUFFIX in names:
            indexes = [basename + INDEX_SUFFIX]
        else:
            raise DetectionError(f"quantize_config.json in {os.path.basename(folder)} names the weights "
                                 f"{basename!r}, but there is no {basename}.safetensors; fetch it too.")
    if len(indexes) == 1:
        from .detect import _read_json

        weight_map = _read_json(os.path.join(folder, indexes[0])).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise DetectionError(f"{indexes[0]} in {os.path.basename(folder)} has no weight_map; replace it.")
        files = sorted(set(map(str, weight_map.values())))
        missing = [f for f in files if f not in names]
        if missing:
            raise DetectionError(f"{os.path.basename(folder)} is missing shard(s) {', '.join(missing)}; download them too.")
        return files
    weights = [n for n in names if n.endswith(".safetensors")]
    if len(weights) > 1:
        raise DetectionError(f"{os.path.basename(folder)} holds several safetensors files ({', '.join(weights[:4])}) "
                             "and no index or model_basename says which are the weights; keep only the model's.")
    return weights


@contextmanager
def loadable_folder(detection):
    """A temporary folder of links to the model's files in which the weights are `model.safetensors` (or
    the shard index is `model.safetensors.index.json`), the name GPTQModel always looks for; removed when
    the load is done (the files it opened stay valid)."""
    view = tempfile.mkdtemp(prefix="workbench-gptq-")
    try:
        files = set(detection.weight_files)
        names = os.listdir(detection.path)
        index = [n for n in names if n.endswith(INDEX_SUFFIX)]
        for name in names:
            src = os.path.join(detection.path, name)
            if name.endswith(".safetensors") and name not in files:
                continue  # another checkpoint in the folder: not ours to load
            if len(files) == 1 and name in files:
                target = "model.safetensors"
            elif len(files) > 1 and name in index:
                target = "model" + INDEX_SUFFIX
            else:
                target = name
            os.symlink(src, os.path.join(view, target))
        yield view
    finally:
        shutil.rmtree(view, ignore_errors=True)
