"""Build models by name from a config dict; count their parameters and MACs; rebuild pruned ones.

A model config is a flat dict: ``name`` (a key of :data:`MODELS`) plus keyword arguments of that model's class
(:class:`~ultraseg.models.unet.UNet` for all names except ``unet_pp``), for example::

    {"name": "attention_unet", "widths": [16, 32, 64, 128], "norm": "batch", "up": "bilinear"}

Keys left out take the class defaults; the named variants only change defaults (``attention_unet`` sets
``attention=True``, ``res_unet`` sets ``block="residual"``), so a config can still override them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import nn

from ultraseg.models.blocks import group_count
from ultraseg.models.unet import UNet, UNetPlusPlus

MODELS: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "attention_unet": partial(UNet, attention=True),
    "res_unet": partial(UNet, block="residual"),
    "unet_pp": UNetPlusPlus,
}


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """The model named ``config["name"]``, built with the other keys of ``config`` as keyword arguments.

    Raises:
        ValueError: for a missing or unknown name (listing the valid names) or an unknown argument (naming it).
    """
    kwargs = dict(config)
    name = kwargs.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid: {', '.join(MODELS)}")
    constructor = MODELS[name]
    accepted = inspect.signature(constructor).parameters
    for key in kwargs:
        if key not in accepted:
            raise ValueError(f"unknown argument {key!r} for model {name!r}; valid: {', '.join(accepted)}")
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])
    return constructor(**kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``model``."""
    return sum(p.numel() for p in model.parameters())


def _conv_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.ConvTranspose2d):
        # every input element scatters into (out_channels / groups) * kh * kw outputs
        kh, kw = module.kernel_size
        return inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return 0


def count_macs(model: nn.Module, size: int | tuple[int, int]) -> int:
    """Multiply-accumulates of one forward pass of a batch of one ``size`` (side or ``(H, W)``) image.

    Counts Conv2d, ConvTranspose2d and Linear exactly (a convolution costs ``output elements × in_channels /
    groups × kh × kw``; biases, norms, activations, pooling and interpolation are not counted). The input
    channels are those of the first convolution; the model's training mode is restored afterwards.
    """
    h, w = (size, size) if isinstance(size, int) else size
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no convolution to infer its input channels from")
    param = next(model.parameters())
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _conv_macs(module, inputs, output)

    counted = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, first.in_channels, h, w, dtype=param.dtype, device=param.device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total


def _resized(module: nn.Module, shape: torch.Size) -> nn.Module:
    """A fresh copy of ``module`` whose weight has ``shape``, with its other hyper-parameters unchanged."""
    if isinstance(module, nn.Conv2d):
        out_channels = shape[0]
        if module.groups > 1 and module.groups == module.in_channels:  # depthwise: one group per input channel
            groups = out_channels // (module.out_channels // module.in_channels)
        else:
            groups = module.groups
        return nn.Conv2d(
            shape[1] * groups, out_channels, module.kernel_size, module.stride, module.padding, module.dilation,
            groups, module.bias is not None, module.padding_mode,
        )
    if isinstance(module, nn.ConvTranspose2d):
        return nn.ConvTranspose2d(
            shape[0], shape[1] * module.groups, module.kernel_size, module.stride, module.padding,
            module.output_padding, module.groups, module.bias is not None, module.dilation, module.padding_mode,
        )
    channels = shape[0]
    if isinstance(module, nn.BatchNorm2d):
        return nn.BatchNorm2d(channels, module.eps, module.momentum, module.affine, module.track_running_stats)
    if isinstance(module, nn.GroupNorm):
        return nn.GroupNorm(group_count(channels), channels, module.eps, module.affine)
    if isinstance(module, nn.InstanceNorm2d):
        return nn.InstanceNorm2d(channels, module.eps, module.momentum, module.affine, module.track_running_stats)
    raise TypeError(f"cannot resize {type(module).__name__}")


_RESIZABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)


def rebuild_from_state_dict(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the model of ``config`` with the per-layer channel counts of ``state_dict``, then load it strictly.

    This is how a channel-pruned network is restored: every convolution or norm whose weight in
    ``state_dict`` has another shape than in the freshly built model is replaced by one of that shape (GroupNorm
    groups recomputed with :func:`~ultraseg.models.blocks.group_count`, depthwise groups following the channels).
    """
    model = build_model(config)
    for name, module in list(model.named_modules()):
        key = f"{name}.weight"
        if not isinstance(module, _RESIZABLE) or key not in state_dict:
            continue
        if state_dict[key].shape != module.weight.shape:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, _resized(module, state_dict[key].shape))
    model.load_state_dict(state_dict, strict=True)
    return model
