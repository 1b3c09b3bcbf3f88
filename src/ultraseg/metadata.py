"""Run identity, and the metadata every checkpoint and ONNX file carries so it can be used without the params file.

Torch-free: the same dict is read back from a PyTorch checkpoint (:mod:`ultraseg.checkpoint`) and from an ONNX
file's ``metadata_props`` (:mod:`ultraseg.onnx_io`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ultraseg import params as params_mod
from ultraseg.params import Params


def run_id(params: Params, *files: Path) -> str:
    """What makes two runs the same: the params that shape the model and the exact data."""
    digest = hashlib.sha256(json.dumps([params_mod.to_dict(params.train), params_mod.to_dict(params.preprocess)],
                                       sort_keys=True).encode())
    for path in files:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def data_files(data_dir: Path) -> tuple[Path, ...]:
    """The preprocessed arrays and index: a resume is only valid on exactly these bytes."""
    return data_dir / "index.csv", data_dir / "images.npy", data_dir / "masks.npy"


def model_meta(params: Params, config: dict[str, Any], kind: str, rid: str) -> dict[str, Any]:
    """What a checkpoint or ONNX file carries so it can be used without the params file: the ``build_model``
    config, the preprocessing params and normalisation, the input size, the decision threshold, what kind of model
    it is and the run that made it."""
    return {"kind": kind, "model": config, "preprocess": params_mod.to_dict(params.preprocess),
            "normalize": params.preprocess.normalize, "size": params.preprocess.size,
            "threshold": params.train.threshold, "run_id": rid}
