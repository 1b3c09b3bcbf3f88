"""Building blocks of the U-Net family, after MONAI's ``basic_unet.py``.

Every block maps ``(B, C_in, H, W)`` to ``(B, C_out, H', W')`` and is built from typed arguments with defaults:

- ``norm`` is one of :data:`NORMS` (``batch``, ``group``, ``instance``),
- ``act`` is one of :data:`ACTS` (``relu``, ``leaky_relu``, ``gelu``, ``silu``),
- ``dropout`` is the channel-dropout probability at the end of a block (0 disables it),
- ``mid_channels`` (the channels between a block's two convolutions) defaults to ``out_channels``; it differs
  only when a channel-pruned network is rebuilt.

The three convolution blocks (:class:`DoubleConv`, :class:`ResidualBlock`, :class:`SeparableConv`) share the
signature ``(in_channels, out_channels, mid_channels=None, norm, act, dropout)`` and are listed in :data:`BLOCKS`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group", "instance")
ACTS = ("relu", "leaky_relu", "gelu", "silu")
DOWNS = ("max", "avg", "conv")
UPS = ("transpose", "bilinear", "nearest")


def group_count(channels: int) -> int:
    """Number of GroupNorm groups for ``channels``: ``gcd(8, channels)``, which always divides ``channels``."""
    return math.gcd(8, channels)


def make_norm(name: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer over ``channels``; ``name`` is one of :data:`NORMS`.

    ``group`` uses :func:`group_count` groups; ``instance`` has learnable affine parameters and no running
    statistics, so it behaves the same in training and evaluation.
    """
    if name == "batch":
        return nn.BatchNorm2d(channels)
    if name == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if name == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"unknown norm {name!r}; valid: {', '.join(NORMS)}")


def make_act(name: str) -> nn.Module:
    """An activation layer; ``name`` is one of :data:`ACTS`."""
    if name == "relu":
        return nn.ReLU()
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    if name == "gelu":
        return nn.GELU()
    if name == "silu":
        return nn.SiLU()
    raise ValueError(f"unknown act {name!r}; valid: {', '.join(ACTS)}")


def _dropout(p: float) -> nn.Module:
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


class ConvNormAct(nn.Sequential):
    """Convolution (3×3 by default, "same" padding, no bias) → normalisation → activation.

    Args:
        in_channels, out_channels: channels in and out.
        norm, act: see the module docstring; ``act=None`` leaves the activation out.
        kernel_size, stride: of the convolution; padding is ``kernel_size // 2`` when ``stride == 1``, else 0.
        groups: convolution groups (``in_channels`` for a depthwise convolution).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        act: str | None = "relu",
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.norm = make_norm(norm, out_channels)
        self.act = make_act(act) if act is not None else nn.Identity()


class DoubleConv(nn.Sequential):
    """Two 3×3 :class:`ConvNormAct`, the block of U-Net (Ronneberger et al., 2015, arXiv:1505.04597)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.conv1 = ConvNormAct(in_channels, mid_channels, norm, act)
        self.conv2 = ConvNormAct(mid_channels, out_channels, norm, act)
        self.dropout = _dropout(dropout)


class ResidualBlock(nn.Module):
    """Residual block of He et al., 2016 (arXiv:1512.03385): ``act(conv2(conv1(x)) + shortcut(x))``.

    ``conv2`` has no activation before the sum; the shortcut is the identity when ``in_channels ==
    out_channels``, else a 1×1 convolution with normalisation (projection shortcut).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.conv1 = ConvNormAct(in_channels, mid_channels, norm, act)
        self.conv2 = ConvNormAct(mid_channels, out_channels, norm, act=None)
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = ConvNormAct(in_channels, out_channels, norm, act=None, kernel_size=1)
        self.act = make_act(act)
        self.dropout = _dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.conv2(self.conv1(x)) + self.shortcut(x)))


class SeparableConv(nn.Sequential):
    """Depthwise-separable counterpart of :class:`DoubleConv`, for small edge students.

    Each of its two stages is a depthwise 3×3 :class:`ConvNormAct` followed by a pointwise 1×1
    :class:`ConvNormAct`, as in MobileNets (Howard et al., 2017, arXiv:1704.04861); it costs about
    ``1/C_out + 1/9`` of the MACs of a full 3×3 convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        mid_channels = mid_channels or out_channels
        self.depthwise1 = ConvNormAct(in_channels, in_channels, norm, act, groups=in_channels)
        self.pointwise1 = ConvNormAct(in_channels, mid_channels, norm, act, kernel_size=1)
        self.depthwise2 = ConvNormAct(mid_channels, mid_channels, norm, act, groups=mid_channels)
        self.pointwise2 = ConvNormAct(mid_channels, out_channels, norm, act, kernel_size=1)
        self.dropout = _dropout(dropout)


BLOCKS: dict[str, type[nn.Module]] = {"double": DoubleConv, "residual": ResidualBlock, "separable": SeparableConv}


def make_block(name: str, in_channels: int, out_channels: int, **kwargs) -> nn.Module:
    """The convolution block ``name`` (one of :data:`BLOCKS`) with the shared block signature."""
    if name not in BLOCKS:
        raise ValueError(f"unknown block {name!r}; valid: {', '.join(BLOCKS)}")
    return BLOCKS[name](in_channels, out_channels, **kwargs)


class Down(nn.Module):
    """Halve H and W (floor, so odd sizes lose a row), then apply a convolution block.

    Args:
        mode: ``max`` or ``avg`` 2×2 pooling, or ``conv``: a learned 2×2 stride-2 :class:`ConvNormAct`.
        block: name of the block in :data:`BLOCKS`; the other arguments are the block's.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mode: str = "max",
        block: str = "double",
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if mode == "max":
            self.pool: nn.Module = nn.MaxPool2d(2)
        elif mode == "avg":
            self.pool = nn.AvgPool2d(2)
        elif mode == "conv":
            self.pool = ConvNormAct(in_channels, in_channels, norm, act, kernel_size=2, stride=2)
        else:
            raise ValueError(f"unknown down {mode!r}; valid: {', '.join(DOWNS)}")
        self.block = make_block(block, in_channels, out_channels, norm=norm, act=act, dropout=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


class AttentionGate(nn.Module):
    """Additive attention gate of Attention U-Net (Oktay et al., 2018, arXiv:1804.03999).

    ``alpha = sigmoid(psi(relu(W_g g + W_x x)))`` and the gate returns ``x * alpha``, where ``x`` is the skip
    connection and ``g`` the gating signal from the coarser level, already up-sampled to the skip's size by
    :class:`Up`. ``W_g``, ``W_x`` and ``psi`` are 1×1 convolutions.

    Args:
        gate_channels: channels of ``g``; skip_channels: channels of ``x``;
        inter_channels: channels of the intermediate map (``F_int`` in the paper).
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.w_g = nn.Conv2d(gate_channels, inter_channels, 1, bias=True)
        self.w_x = nn.Conv2d(skip_channels, inter_channels, 1, bias=False)
        self.psi = nn.Conv2d(inter_channels, 1, 1, bias=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.psi(F.relu(self.w_g(g) + self.w_x(x))))
        return x * alpha


def pad_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pad ``x`` on the bottom and right (replicating its edge) to the spatial size of ``ref``.

    Always pads, by zero when the sizes match: a Python branch on the sizes would be frozen into an exported
    ONNX graph at the export size, and the graph must take any height and width.
    """
    dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    return F.pad(x, (0, dw, 0, dh), mode="replicate")


class PixelShuffleHead(nn.Sequential):
    """1×1 convolution to ``out_channels * scale**2`` logits, rearranged into ``scale``× larger maps (sub-pixel
    convolution, Shi et al., 2016, arXiv:1609.05158): the head of a network whose stem down-sampled its input.

    It lets a network predict full-resolution logits without full-resolution layers; in ONNX the rearrangement is
    one ``DepthToSpace``, which int8 runs without re-quantising.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * scale**2, 1)
        self.shuffle = nn.PixelShuffle(scale)


class PresenceHead(nn.Module):
    """One logit per image, "is there a lesion at all", from the deepest feature map ``(B, C, h, w)`` → ``(B, 1)``.

    A 1×1 convolution turns each position's features into ``hidden`` detector responses; their mean and maximum over
    the map feed a linear layer. The maximum answers "somewhere", which a lesion needs, and costs nothing at the
    bottleneck's resolution. ``hidden`` defaults to half the input channels.

    ``backbone_grad`` is the share of the head's gradient passed back into the features it reads: 1 trains the
    shared layers for both tasks; 0 leaves them to the masks alone (the head still learns in full), which protects
    the segmentation from the image-level term. The value and the traced graph are the same at every setting.
    """

    def __init__(self, in_channels: int, hidden: int | None = None, backbone_grad: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= backbone_grad <= 1.0:
            raise ValueError(f"presence_grad: expected a value in [0, 1], got {backbone_grad!r}")
        hidden = hidden or max(1, in_channels // 2)
        self.backbone_grad = float(backbone_grad)
        self.detect = nn.Conv2d(in_channels, hidden, 1)
        self.act = nn.ReLU()
        self.classify = nn.Linear(2 * hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backbone_grad != 1.0 and x.requires_grad:
            # a hook on a copy scales only this branch's gradient; the decoder's reaches the features untouched
            x = x.clone()
            x.register_hook(lambda grad: grad * self.backbone_grad)
        x = self.act(self.detect(x))
        return self.classify(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))


class Up(nn.Module):
    """Double H and W, pad to the skip's size, optionally gate the skip, concatenate ``[skip, up]``, apply a block.

    Args:
        in_channels: channels of the coarser input; skip_channels: channels of the skip connection;
        out_channels: channels out, also the channels of the up-sampled map.
        mode: ``transpose`` (2×2 stride-2 transposed convolution) or ``bilinear``/``nearest`` interpolation after
            a 1×1 convolution to ``out_channels`` (the same map as the reverse order, at a quarter of the MACs).
        attention: gate the skip with an :class:`AttentionGate` driven by the up-sampled map.
        block, norm, act, dropout: of the convolution block, see :class:`Down`.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        mode: str = "transpose",
        attention: bool = False,
        block: str = "double",
        norm: str = "batch",
        act: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if mode == "transpose":
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        elif mode in ("bilinear", "nearest"):
            align = False if mode == "bilinear" else None
            self.up = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1),
                nn.Upsample(scale_factor=2, mode=mode, align_corners=align),
            )
        else:
            raise ValueError(f"unknown up {mode!r}; valid: {', '.join(UPS)}")
        self.gate = AttentionGate(out_channels, skip_channels, max(out_channels // 2, 1)) if attention else None
        self.block = make_block(
            block, skip_channels + out_channels, out_channels, norm=norm, act=act, dropout=dropout
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = pad_to(self.up(x), skip)
        if self.gate is not None:
            skip = self.gate(up, skip)
        return self.block(torch.cat([skip, up], dim=1))
