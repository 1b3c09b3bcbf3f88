"""Everything the deployable model needs, and nothing of training: NumPy, OpenCV and ONNX Runtime (pydicom and PIL
when a DICOM is read). No module here imports PyTorch, DVC or the training code; tests/runtime/test_boundary.py
proves it.

- :mod:`~ultraseg.runtime.segmenter`: :class:`Segmenter`, a loaded model file that segments images
- :mod:`~ultraseg.runtime.preprocess` and :mod:`~ultraseg.runtime.filters`: what a frame goes through before the
  network, the same code the preprocess stage runs on the training data
- :mod:`~ultraseg.runtime.postprocess`: from probabilities to the mask (threshold and post-processing rule)
- :mod:`~ultraseg.runtime.ood`: whether a frame lies within what the model was trained on
- :mod:`~ultraseg.runtime.sources`: images, folders, DICOM and video files as frames
- :mod:`~ultraseg.runtime.model_files`: the names of the files the pipeline writes, and running any ONNX file
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"PostProcess": "postprocess", "Segmentation": "segmenter", "Segmenter": "segmenter",
          "to_grey": "sources", "to_grey_channels": "sources"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """The public API, imported on first use, so that a training module importing one leaf of the runtime (say
    :mod:`~ultraseg.runtime.filters`) neither loads ONNX Runtime nor, in dvc.yaml, depends on the Segmenter. The
    package's own modules import from the submodules, so tests/pipeline/test_dvc_yaml.py sees what they run."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
