"""DnCNN (Zhang et al. 2017) for 1D and 2D: a plain stack of 3x3 convolutions."""

from __future__ import annotations

import torch
from torch import nn

from .unet import conv, residual_base, residual_base_channel


class DnCNN(nn.Module):
    """``layers`` convolutions of ``width`` channels (first and last included), LeakyReLU between.

    ``residual``: output = mean of the input channels (or channel ``residual_channel``) + the predicted
    correction (the classic DnCNN residual learning). Fully convolutional, any input size. Output: ``(B, 1, *frame)``.
    """

    def __init__(self, ndim: int = 2, in_channels: int = 1, layers: int = 8, width: int = 16, residual: bool = True,
                 residual_channel: int | None = None):
        super().__init__()
        if layers < 2:
            raise ValueError(f"DnCNN needs at least 2 layers, got {layers}")
        self.ndim, self.residual, self.in_channels, self.layers = ndim, residual, in_channels, layers
        self.residual_channel = residual_base_channel(residual_channel, in_channels)
        mods: list[nn.Module] = [conv(ndim, in_channels, width), nn.LeakyReLU(0.1, inplace=True)]
        for _ in range(layers - 2):
            mods += [conv(ndim, width, width), nn.LeakyReLU(0.1, inplace=True)]
        last = conv(ndim, width, 1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        mods.append(last)
        self.body = nn.Sequential(*mods)

    @property
    def multiple(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.residual:
            y = y + residual_base(x, self.residual_channel)
        return y
