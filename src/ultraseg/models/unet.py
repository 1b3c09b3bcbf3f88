"""U-Net (Ronneberger et al., 2015, arXiv:1505.04597) and U-Net++ (Zhou et al., 2018, arXiv:1807.10165).

One configurable class per topology; attention gates (Oktay et al., 2018), residual blocks (He et al., 2016) and
depthwise-separable blocks (Howard et al., 2017) are switched on by arguments, see :mod:`ultraseg.models.blocks`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ultraseg.models.blocks import BLOCKS, Down, Up, make_block


def _check(widths: Sequence[int], block: str, dropout: float) -> tuple[int, ...]:
    widths = tuple(int(w) for w in widths)
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must list at least 2 positive channel counts, got {widths}")
    if block not in BLOCKS:
        raise ValueError(f"unknown block {block!r}; valid: {', '.join(BLOCKS)}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return widths


class UNet(nn.Module):
    """Encoder-decoder with skip connections: ``(B, in_channels, H, W)`` → logits ``(B, out_channels, H, W)``.

    Any H and W work: each down-sampling floors odd sizes and each up-sampled map is padded back to its skip's
    size, so the output has the input's size exactly (H and W must be at least ``2 ** (len(widths) - 1)``).

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
    ) -> None:
        super().__init__()
        widths = _check(widths, block, dropout)
        kw = dict(block=block, norm=norm, act=act, dropout=dropout)
        self.stem = make_block(block, in_channels, widths[0], norm=norm, act=act, dropout=dropout)
        self.downs = nn.ModuleList(Down(c_in, c_out, down, **kw) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.ups = nn.ModuleList(
            Up(c_in, c_out, c_out, up, attention, **kw) for c_in, c_out in zip(widths[:0:-1], widths[-2::-1])
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.head(x)


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
    ) -> None:
        super().__init__()
        widths = _check(widths, block, dropout)
        kw = dict(block=block, norm=norm, act=act, dropout=dropout)
        self.stem = make_block(block, in_channels, widths[0], norm=norm, act=act, dropout=dropout)
        self.downs = nn.ModuleList(Down(c_in, c_out, down, **kw) for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.nodes = nn.ModuleDict(
            {
                f"{i}_{j}": Up(widths[i + 1], j * widths[i], widths[i], up, attention, **kw)
                for j in range(1, len(widths))
                for i in range(len(widths) - j)
            }
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = [[self.stem(x)]]
        for down in self.downs:
            grid.append([down(grid[-1][0])])
        for j in range(1, len(grid)):
            for i in range(len(grid) - j):
                grid[i].append(self.nodes[f"{i}_{j}"](grid[i + 1][j - 1], torch.cat(grid[i][:j], dim=1)))
        return self.head(grid[0][-1])
