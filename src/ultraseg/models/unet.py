"""U-Net (Ronneberger et al., 2015, arXiv:1505.04597) and U-Net++ (Zhou et al., 2018, arXiv:1807.10165).

One configurable class per topology; attention gates (Oktay et al., 2018), residual blocks (He et al., 2016) and
depthwise-separable blocks (Howard et al., 2017) are switched on by arguments, see :mod:`ultraseg.models.blocks`.
With ``stem_stride`` > 1 a network works below the input's resolution throughout: a strided "patchify" convolution
in front and a sub-pixel head behind (as in SegFormer, Xie et al., 2021, arXiv:2105.15203), for edge students
whose MAC budget would otherwise leave only a few channels at full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ultraseg.models.blocks import BLOCKS, ConvNormAct, Down, PixelShuffleHead, PresenceHead, Up, make_block, pad_to


def _check(widths: Sequence[int], block: str, dropout: float, stem_stride: int) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list at least 2 positive channel counts, got {widths}")
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; valid: {', '.join(BLOCKS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if type(stem_stride) is not int or stem_stride < 1:
        raise ValueError(f"stem_stride must be an integer >= 1, got {stem_stride!r}")
    return widths


def _stem(in_channels: int, width: int, stride: int, block: str, norm: str, act: str, dropout: float) -> nn.Module:
    """The first block; with ``stride`` > 1 behind a ``stride``×``stride`` convolution of stride ``stride`` that
    "patchifies" the image (space-to-depth with learned mixing)."""
    first = make_block(block, width if stride > 1 else in_channels, width, norm=norm, act=act, dropout=dropout)
    if stride == 1:
        return first
    return nn.Sequential(ConvNormAct(in_channels, width, norm, act, kernel_size=stride, stride=stride), first)


def _full_size(logits: torch.Tensor, image: torch.Tensor, stride: int) -> torch.Tensor:
    # the patchify convolution floors sides that are not multiples of the stride
    return pad_to(logits, image) if stride > 1 else logits


def _head(width: int, out_channels: int, stride: int) -> nn.Module:
    return PixelShuffleHead(width, out_channels, stride) if stride > 1 else nn.Conv2d(width, out_channels, 1)


Outputs = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
"""A network's forward: the logits, or ``(logits, presence logits (B, 1))`` for one with a presence head."""


def split_outputs(outputs: Outputs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits, presence logits or None)`` of any network's forward."""
    return (outputs[0], outputs[1]) if isinstance(outputs, tuple) else (outputs, None)


def _answer(logits: torch.Tensor, deepest: torch.Tensor, presence: nn.Module | None) -> Outputs:
    return logits if presence is None else (logits, presence(deepest))


class UNet(nn.Module):
    """Encoder-decoder with skip connections: ``(B, in_channels, H, W)`` → logits ``(B, out_channels, H, W)``.

    Any H and W work: each down-sampling floors odd sizes and each up-sampled map is padded back to its skip's
    size, so the output has the input's size exactly (H and W must be at least
    ``stem_stride * 2 ** (len(widths) - 1)``).

    Args:
        in_channels: image channels (1 for ultrasound).
        out_channels: logit channels (1 for lesion vs background).
        widths: channels per level, stem level first, bottleneck last; ``len(widths) - 1`` down-samplings.
            The original U-Net is ``(64, 128, 256, 512, 1024)``.
        block: convolution block at every level: ``double`` (U-Net), ``residual`` (ResUNet) or ``separable``.
        attention: gate every skip connection with an additive attention gate (Attention U-Net).
        norm: ``batch``, ``group`` or ``instance``.
        act: ``relu``, ``leaky_relu``, ``gelu`` or ``silu``.
        down: ``max`` or ``avg`` pooling, or ``conv`` (learned stride-2 convolution).
        up: ``transpose`` (learned), ``bilinear`` or ``nearest`` interpolation.
        dropout: channel-dropout probability at the end of every block.
        stem_stride: down-sample by this factor in the stem (:func:`_stem`) and predict the logits
            with a :class:`~ultraseg.models.blocks.PixelShuffleHead`; the output is padded back to the input's
            size when a side is not a multiple of it. 1 is the classic U-Net.
        presence: add a :class:`~ultraseg.models.blocks.PresenceHead` on the bottleneck; the forward then returns
            ``(logits, presence logits (B, 1))`` (see :func:`split_outputs`).
        presence_grad: the share of the presence head's gradient that reaches the shared layers (the head's
            ``backbone_grad``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        block: str = "double",
        attention: bool = False,
        norm: str = "batch",
        act: str = "relu",
        down: str = "max",
        up: str = "transpose",
        dropout: float = 0.0,
        stem_stride: int = 1,
        presence: bool = False,
        presence_grad: float = 1.0,
    ) -> None:
        super().__init__()
        widths = _check(widths, block, dropout, stem_stride)
        kw = dict(block=block, norm=norm, act=act, dropout=dropout)
        self.stem_stride = stem_stride
        self.stem = _stem(in_channels, widths[0], stem_stride, block, norm, act, dropout)
        self.downs = nn.ModuleList(Down(c_in, c_out, down, **kw) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.ups = nn.ModuleList(
            Up(c_in, c_out, c_out, up, attention, **kw) for c_in, c_out in zip(widths[:0:-1], widths[-2::-1])
        )
        self.head = _head(widths[0], out_channels, stem_stride)
        self.presence = PresenceHead(widths[-1], backbone_grad=presence_grad) if presence else None

    def forward(self, image: torch.Tensor) -> Outputs:
        skips = [self.stem(image)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = deepest = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return _answer(_full_size(self.head(x), image, self.stem_stride), deepest, self.presence)


class UNetPlusPlus(nn.Module):
    """U-Net++: nested, densely connected skip pathways (Zhou et al., 2018), without deep supervision.

    Node ``X[i][j]`` (level ``i``, column ``j``) is an :class:`~ultraseg.models.blocks.Up` of ``X[i+1][j-1]``
    with the concatenation of ``X[i][0..j-1]`` as its skip; the logits come from ``X[0][-1]``. The arguments
    are those of :class:`UNet`; with ``attention`` each node gates its concatenated skips.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        widths: Sequence[int] = (32, 64, 128, 256),
        block: str = "double",
        attention: bool = False,
        norm: str = "batch",
        act: str = "relu",
        down: str = "max",
        up: str = "transpose",
        dropout: float = 0.0,
        stem_stride: int = 1,
        presence: bool = False,
        presence_grad: float = 1.0,
    ) -> None:
        super().__init__()
        widths = _check(widths, block, dropout, stem_stride)
        kw = dict(block=block, norm=norm, act=act, dropout=dropout)
        self.stem_stride = stem_stride
        self.stem = _stem(in_channels, widths[0], stem_stride, block, norm, act, dropout)
        self.downs = nn.ModuleList(Down(c_in, c_out, down, **kw) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.nodes = nn.ModuleDict(
            {
                f"{i}_{j}": Up(widths[i + 1], j * widths[i], widths[i], up, attention, **kw)
                for j in range(1, len(widths))
                for i in range(len(widths) - j)
            }
        )
        self.head = _head(widths[0], out_channels, stem_stride)
        self.presence = PresenceHead(widths[-1], backbone_grad=presence_grad) if presence else None

    def forward(self, image: torch.Tensor) -> Outputs:
        grid = [[self.stem(image)]]
        for down in self.downs:
            grid.append([down(grid[-1][0])])
        for j in range(1, len(grid)):
            for i in range(len(grid) - j):
                grid[i].append(self.nodes[f"{i}_{j}"](grid[i + 1][j - 1], torch.cat(grid[i][:j], dim=1)))
        return _answer(_full_size(self.head(grid[0][-1]), image, self.stem_stride), grid[-1][0], self.presence)
