"""A small U-Net for 1D spectra and 2D frames; accepts any input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv(ndim: int, cin: int, cout: int, k: int = 3) -> nn.Module:
    cls = nn.Conv1d if ndim == 1 else nn.Conv2d
    return cls(cin, cout, k, padding=k // 2)


def pad_to_multiple(x: torch.Tensor, multiple: int, ndim: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Pad the last ``ndim`` axes at the end to a multiple of ``multiple`` (reflect, or replicate when
    the axis is too short to reflect); returns the padded tensor and the original sizes."""
    sizes = tuple(x.shape[-ndim:])
    pads: list[int] = []
    for s in reversed(sizes):
        pads += [0, (-s) % multiple]
    if not any(pads):
        return x, sizes
    mode = "reflect" if all(p < s for p, s in zip(pads[1::2], reversed(sizes))) else "replicate"
    return F.pad(x, pads, mode=mode), sizes


def crop_to(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    sl = (Ellipsis,) + tuple(slice(0, s) for s in sizes)
    return x[sl]


class _Block(nn.Module):
    """Two 3x3 convolutions, ``cin -> hidden -> cout`` (``hidden`` defaults to ``cout``)."""

    def __init__(self, ndim: int, cin: int, cout: int, hidden: int | None = None):
        super().__init__()
        hidden = int(hidden or cout)
        self.c1 = conv(ndim, cin, hidden)
        self.c2 = conv(ndim, hidden, cout)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        return self.act(self.c2(self.act(self.c1(x))))


def residual_base_channel(channel: int | None, in_channels: int) -> int | None:
    """Validated residual channel index (``None``: the mean of all input channels)."""
    if channel is None:
        return None
    c = int(channel)
    if not -in_channels <= c < in_channels:
        raise ValueError(f"residual_channel {channel} is not one of the {in_channels} input channels")
    return c % in_channels


def residual_base(x: torch.Tensor, channel: int | None) -> torch.Tensor:
    """What a residual network adds its correction to: input channel ``channel``, or the channel mean."""
    if channel is None:
        return x.mean(dim=1, keepdim=True)
    return x[:, channel : channel + 1]


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and ``width * 2**level`` channels (capped at ``16 * width``).

    ``stem_width``: channels between the two convolutions of the first block (default ``width``). Inputs
    of many channels (a frame's scan neighbours) need more than ``width`` there: the first convolution
    would otherwise squeeze nine measurements into eight features before anything else sees them.

    ``residual``: the output is the mean of the input channels (or input channel ``residual_channel``
    alone, for inputs whose channels are not all measurements of the output) plus the network's
    correction.
    Inputs of any size are padded (reflect) to a multiple of ``2**depth`` and cropped back.
    Output: ``(B, 1, *frame)``.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, depth: int = 3, width: int = 16, residual: bool = True,
                 residual_channel: int | None = None, stem_width: int | None = None):
        super().__init__()
        if ndim not in (1, 2):
            raise ValueError(f"ndim must be 1 or 2, got {ndim}")
        self.ndim, self.depth, self.residual, self.in_channels = ndim, depth, residual, in_channels
        self.residual_channel = residual_base_channel(residual_channel, in_channels)
        ch = [min(width * 2**i, width * 16) for i in range(depth + 1)]
        self.stem_width = int(stem_width or ch[0])
        self.inc = _Block(ndim, in_channels, ch[0], hidden=self.stem_width)
        self.downs = nn.ModuleList(_Block(ndim, ch[i], ch[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(conv(ndim, ch[i + 1], ch[i], 1) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(_Block(ndim, 2 * ch[i], ch[i]) for i in reversed(range(depth)))
        self.out = conv(ndim, ch[0], 1, 1)
        self.pool = nn.MaxPool1d(2) if ndim == 1 else nn.MaxPool2d(2)
        self.up_mode = "linear" if ndim == 1 else "bilinear"
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp, sizes = pad_to_multiple(x, self.multiple, self.ndim)
        h = self.inc(xp)
        skips = [h]
        for down in self.downs:
            h = down(self.pool(h))
            skips.append(h)
        skips.pop()
        for up, dec in zip(self.ups, self.dec):
            h = F.interpolate(h, scale_factor=2, mode=self.up_mode, align_corners=False)
            h = dec(torch.cat([up(h), skips.pop()], dim=1))
        y = self.out(h)
        if self.residual:
            y = y + residual_base(xp, self.residual_channel)
        return crop_to(y, sizes)
