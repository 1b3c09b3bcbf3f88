"""Segmentation networks: blocks, the U-Net family, and :func:`build_model` to build one from a config dict."""

from ultraseg.models.registry import MODELS, build_model, count_macs, count_parameters, rebuild_from_state_dict
from ultraseg.models.unet import Outputs, UNet, UNetPlusPlus, split_outputs

__all__ = [
    "MODELS",
    "Outputs",
    "UNet",
    "UNetPlusPlus",
    "build_model",
    "count_macs",
    "count_parameters",
    "rebuild_from_state_dict",
    "split_outputs",
]
