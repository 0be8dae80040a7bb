"""Networks: :class:`UNet` and :class:`DnCNN`, 1D or 2D, built from a :class:`ModelConfig`."""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .dncnn import DnCNN
from .unet import UNet

__all__ = ["UNet", "DnCNN", "build_model", "count_parameters"]


def build_model(cfg: ModelConfig, ndim: int, in_channels: int | None = None) -> nn.Module:
    """The network described by ``cfg`` for ``ndim``-dimensional frames (1 or 2)."""
    cin = int(in_channels if in_channels is not None else cfg.in_channels)
    if cfg.arch == "unet":
        return UNet(ndim=ndim, in_channels=cin, depth=int(cfg.depth), width=int(cfg.width), residual=bool(cfg.residual))
    if cfg.arch == "dncnn":
        return DnCNN(ndim=ndim, in_channels=cin, layers=int(cfg.dncnn_layers), width=int(cfg.width), residual=bool(cfg.residual))
    raise ValueError(f"unknown model.arch {cfg.arch!r}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
