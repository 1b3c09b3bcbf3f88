"""Structured (channel) pruning of the U-Net family into a genuinely smaller dense network.

:func:`prune` removes whole output channels with Torch-Pruning's DepGraph (Fang et al., "DepGraph: Towards Any
Structural Pruning", CVPR 2023, arXiv:2301.12900), which groups every layer that shares a channel -- both sides of a
skip concatenation, the two branches of a residual sum, a depthwise convolution and its producer, the input of a
transposed convolution -- and removes a channel from all of them at once. Pruning is iterative: ``steps`` steps
reach ``ratio`` linearly, each followed by a ``finetune(model, step)`` callback the caller provides. The result
has fewer channels, MACs and parameters; :func:`ultraseg.models.registry.rebuild_from_state_dict` restores it from
its state dict alone, and :func:`pruned_widths` lists its structure for a checkpoint's config.

Never pruned: the network's input channels, the output channels of its head and the channels its head reads
(see :func:`_head_inputs`), and the output channels of a presence head's layers (its inputs follow the bottleneck). After each step the BatchNorm statistics are measured again on a few training
batches (:func:`recalibrate_norms`). Three things the defaults of Torch-Pruning 1.6.1 get wrong for these models
are handled here:

- the attention gate multiplies the skip ``x (B, C, H, W)`` by ``alpha (B, 1, H, W)``; DepGraph reads the broadcast
  as a channel coupling between ``psi``'s single output channel and every skip channel, which would make every
  gated skip unprunable. The graph is traced with the product cut out of the gate's branch and ``alpha`` as an
  extra output, so the skip channels and the gate's inner channels are pruned, each by its own group;
- a depthwise convolution after a skip concatenation would otherwise be the root of one group spanning both skip
  and up-sampled channels, ranked together; groups are rooted at the producing convolutions first, so each side
  loses ``ratio`` of its own channels;
- Torch-Pruning keeps a GroupNorm's ``num_groups`` and removes the same number of channels from every group, which
  ignores ``round_to`` and cannot prune a layer with one channel per group; here GroupNorm channels are pruned
  like any other and ``num_groups`` is reset to ``group_count(channels)``, as the rebuild does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from ultraseg.models.blocks import AttentionGate, PresenceHead, group_count
from ultraseg.models.registry import count_macs, count_parameters
from ultraseg.models.unet import split_outputs
from ultraseg.params import PruneParams

IMPORTANCES: tuple[str, ...] = ("l1", "l2", "bn_scale", "taylor")
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)
Finetune = Callable[[nn.Module, int], None]
"""``finetune(model, step_index)``: trains the freshly pruned model in place (a new optimiser every step: the
pruned layers hold new parameter tensors)."""
LossFn = Callable[..., torch.Tensor]
"""``loss(outputs, images, masks)``, the signature :func:`ultraseg.training.fit` trains with."""


# ---------------------------------------------------------------------------------------------------- pruning


def prune(model: nn.Module, example_input: torch.Tensor, params: PruneParams, finetune: Finetune | None = None,
          example_batch: tuple[torch.Tensor, torch.Tensor] | None = None, loss_fn: LossFn | None = None,
          calibration: Sequence[torch.Tensor] = ()) -> nn.Module:
    """Prune ``model`` in place to ``params.ratio`` of its channels in ``params.steps`` steps; return it.

    With ``calibration`` batches the BatchNorm statistics are measured again after every step, before ``finetune``
    runs (:func:`recalibrate_norms`): the statistics kept from before the step no longer match what reaches each
    norm layer, and a trained network's output collapses even when few channels go.

    Args:
        model: a network of :mod:`ultraseg.models` (any module whose layers Torch-Pruning knows).
        example_input: a ``(1, C_in, H, W)`` input to trace the graph with (on the model's device).
        params: see :class:`PruneParams`.
        finetune: called as ``finetune(model, step)`` after each step, ``step`` counting from 0.
        example_batch: ``(images, masks)`` whose loss gradient ranks channels; required by ``taylor``.
        loss_fn: ``loss(outputs, images, masks)`` for ``taylor``; binary cross-entropy on the logits by default.
        calibration: batches of training images ``(B, C_in, H, W)``; the first ``params.calibration_batches``
            recalibrate the norm layers after every step, none leaves them as they are.
    """
    params.validate("prune")
    if params.importance == "taylor" and example_batch is None:
        raise ValueError("prune.importance: 'taylor' needs example_batch (images, masks) to compute gradients")
    was_training = model.training
    ignored = _boundary_layers(model, example_input)
    pruner = tp.pruner.BasePruner(
        model,
        example_input,
        importance=_importance(params.importance),
        global_pruning=params.global_pruning,
        pruning_ratio=params.ratio,
        pruning_ratio_dict=_small_layer_ratios(model, ignored, params),
        iterative_steps=params.steps,
        ignored_layers=ignored,
        round_to=params.round_to,
        customized_pruners={nn.GroupNorm: _GroupNormPruner()},
        forward_fn=_trace_forward,
    )
    model.train(was_training)  # tracing leaves the model in eval mode
    _roots_before_depthwise(pruner.DG)
    batches = list(calibration)[:params.calibration_batches]
    for step in range(params.steps):
        if params.importance == "taylor":
            _backward(model, example_batch, loss_fn)
        pruner.step()
        model.zero_grad(set_to_none=True)
        if batches:
            recalibrate_norms(model, batches)
        if finetune is not None:
            finetune(model, step)
    return model


def _boundary_layers(model: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels must stay: the head (the convolution that writes the logits) and those it
    reads, depthwise convolutions that read its input (their outputs are the input channels), attention gates'
    ``psi``, and a presence head's layers."""
    presence = [m for head in model.modules() if isinstance(head, PresenceHead) for m in head.modules()
                if isinstance(m, (nn.Conv2d, nn.Linear))]
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m not in presence]
    reads_input: list[nn.Module] = []
    ran: list[nn.Module] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if inputs[0] is example_input and module.groups > 1:
            reads_input.append(module)
        ran.append(module)

    handles = [m.register_forward_hook(hook) for m in convs]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    # the head is the last convolution run: it writes the output, directly or through a pixel shuffle and padding
    head = ran[-1:]
    if not head:
        raise ValueError(f"{type(model).__name__} has no convolution; cannot find its head")
    gates = [m.psi for m in model.modules() if isinstance(m, AttentionGate)]
    return head + _head_inputs(model, example_input, head[0]) + reads_input + gates + presence


def _head_inputs(model: nn.Module, example_input: torch.Tensor, head: nn.Module) -> list[nn.Module]:
    """The convolutions whose output channels the head reads (through norm and activation).

    They are the narrowest full-resolution layer and not redundant: a trained U-Net splits its last few channels
    into lesion and background detectors, and the lesion ones (active on ~5% of the pixels) have the smallest
    weights, scales and activations. Every importance criterion tends to remove exactly those, after which no logit
    can turn positive and fine-tuning does not grow them back; keeping them costs a few per cent of the MACs.
    """
    was_training = model.training
    graph = tp.DependencyGraph().build_dependency(model, example_input, forward_fn=_trace_forward)
    model.train(was_training)
    handler = graph.get_pruner_of_module(head).prune_in_channels
    group = graph.get_pruning_group(head, handler, list(range(head.in_channels)))
    return [dep.target.module for dep, _ in group
            if dep.target.module is not head and isinstance(dep.target.module, _CONVS)
            and graph.is_out_channel_pruning_fn(dep.handler)]


def _small_layer_ratios(model: nn.Module, ignored: list[nn.Module], params: PruneParams) -> dict[nn.Module, float]:
    """Lower ratios for layers that ``ratio`` and ``round_to`` would empty: they keep ``round_to`` channels.

    Torch-Pruning rounds the kept channels down to ``round_to``; a layer rounded to 0 is refused and stays whole.
    """
    ratios = {}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module not in ignored:
            channels = module.out_channels
            if int(channels * (1 - params.ratio)) < params.round_to:
                ratios[module] = max(0.0, 1 - (params.round_to + 0.5) / channels)
    return ratios


def _trace_forward(model: nn.Module, example_input: torch.Tensor) -> list[torch.Tensor]:
    """The forward Torch-Pruning traces: every attention gate's product with its skip is cut out of the graph
    (``x + (x * alpha - x).detach()`` has the gate's value and depends on ``x`` channel by channel) and the gate's
    ``psi`` output becomes an extra output, so its convolutions stay in the graph without a false coupling."""
    extra: list[torch.Tensor] = []

    def keep_psi(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        extra.append(output)

    def cut_product(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        skip = inputs[1]  # AttentionGate.forward(g, x)
        return skip + (output - skip).detach()

    handles = []
    for gate in (m for m in model.modules() if isinstance(m, AttentionGate)):
        handles += [gate.psi.register_forward_hook(keep_psi), gate.register_forward_hook(cut_product)]
    try:
        logits, presence = split_outputs(model(example_input))
    finally:
        for handle in handles:
            handle.remove()
    return [logits, *([] if presence is None else [presence]), *extra]


def _roots_before_depthwise(graph: tp.DependencyGraph) -> None:
    """Visit producing layers before depthwise convolutions when groups are formed.

    A group is rooted at the first unvisited layer in graph order. A depthwise convolution that reads a skip
    concatenation, visited first, roots one group over both sides (ranked together, so one side keeps all its
    channels); rooted at the producers, each side is ranked and pruned on its own.
    """
    graph.module2node = dict(sorted(graph.module2node.items(), key=lambda item: _is_depthwise(item[0])))


def _is_depthwise(module: object) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.out_channels


def _backward(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], loss_fn: LossFn | None) -> None:
    """Fill every parameter's gradient with the loss gradient on ``batch`` (eval mode: norm statistics stay)."""
    device = next(model.parameters()).device
    images, masks = (t.to(device) for t in batch)
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    outputs = model(images)
    loss = (loss_fn(outputs, images, masks) if loss_fn
            else F.binary_cross_entropy_with_logits(split_outputs(outputs)[0], masks.float()))
    loss.backward()
    model.train(was_training)


# ---------------------------------------------------------------------------------------------------- norm statistics


@torch.no_grad()
def recalibrate_norms(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Measure every BatchNorm's running statistics again on ``batches`` (an equal-weight average, not a moving
    one), the rest of the network in eval mode.

    Pruning changes what reaches each BatchNorm: its inputs lose the removed channels' share of mean and variance
    (after ReLU every channel has a positive mean). Statistics kept from before then mis-normalise layer after
    layer; a few forward passes measure them again (Li et al., "EagleEye", ECCV 2020, arXiv:2007.02491, repairs
    pruned networks this way). Folding the removed channels' means into the next layer's bias or running mean
    instead cannot restore the variance.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or not batches:
        return
    was_training = model.training
    device = next(model.parameters()).device
    momenta = [norm.momentum for norm in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches
        norm.train()
    try:
        for images in batches:
            model(images.to(device))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.train(was_training)


# ---------------------------------------------------------------------------------------------------- importance


_NORMS = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)


class _NormScaleImportance(tp.importance.Importance):
    """|gamma| of the normalisation layers in a group (network slimming: Liu et al., 2017, arXiv:1708.06519).

    Unlike ``tp.importance.BNScaleImportance`` it reads GroupNorm and InstanceNorm scales too, and it ranks a group
    without a norm layer (an up-sampling convolution, an attention gate's inner channels) by the L1 norm of its
    weights, where Torch-Pruning would skip the group and leave those layers whole.
    """

    def __init__(self) -> None:
        self.fallback = tp.importance.MagnitudeImportance(p=1)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, count = None, 0
        for i, (dep, idxs) in enumerate(group):
            layer, root_idxs = dep.target.module, group[i].root_idxs
            if not isinstance(layer, _NORMS) or layer.weight is None or any(r is None for r in root_idxs):
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            total.scatter_add_(0, torch.tensor(root_idxs), layer.weight.detach().abs()[idxs].cpu().float())
            count += 1
        if total is None:
            return self.fallback(group)
        total /= count
        return total / total.mean().clamp_min(1e-12)


def _importance(name: str) -> tp.importance.Importance:
    if name == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if name == "bn_scale":
        return _NormScaleImportance()
    if name == "taylor":
        return tp.importance.TaylorImportance()
    raise ValueError(f"unknown importance {name!r}; valid: {', '.join(IMPORTANCES)}")


class _GroupNormPruner(tp.pruner.function.GroupNormPruner):
    """Prunes GroupNorm channels freely and sets ``num_groups = group_count(channels)`` afterwards, the convention
    :func:`ultraseg.models.registry.rebuild_from_state_dict` rebuilds with."""

    def prune_out_channels(self, layer: nn.GroupNorm, idxs: list[int]) -> nn.GroupNorm:
        super().prune_out_channels(layer, idxs)
        layer.num_groups = group_count(layer.num_channels)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channel_groups(self, layer: nn.GroupNorm) -> int:
        return 1

    get_in_channel_groups = get_out_channel_groups


# ---------------------------------------------------------------------------------------------------- reporting


def pruned_widths(model: nn.Module) -> dict[str, int]:
    """Output channels of every Conv2d and ConvTranspose2d, keyed by module name: the structure of a pruned network
    for a checkpoint's config (the rebuild itself reads the weights' shapes)."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))}


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the tensors in ``model``'s state dict (parameters and buffers, without serialisation overhead)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def summary(before: nn.Module, after: nn.Module, size: int | tuple[int, int]) -> dict[str, float]:
    """Parameters, MACs of one ``size`` input and state-dict bytes of ``before`` and ``after``, with ratios
    ``after / before``."""
    out: dict[str, float] = {}
    for key, measure in (("params", count_parameters), ("macs", lambda m: count_macs(m, size)),
                         ("bytes", state_dict_bytes)):
        b, a = measure(before), measure(after)
        out[f"{key}_before"], out[f"{key}_after"] = b, a
        out[f"{key}_ratio"] = a / b if b else math.nan
    return out


def calibration_batches(images: np.ndarray, count: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """``count`` batches of ``batch_size`` training images, evenly spaced over the set (not augmented: they stand for
    what the network sees at inference), on which the norm layers are recalibrated after every pruning step."""
    total = min(count * batch_size, len(images))
    rows = np.linspace(0, len(images) - 1, total).round().astype(int) if total else np.zeros(0, dtype=int)
    return [torch.from_numpy(images[rows[i:i + batch_size], None]).to(device) for i in range(0, total, batch_size)]
