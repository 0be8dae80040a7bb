"""Networks: :class:`UNet` and :class:`DnCNN`, 1D or 2D, built from a :class:`ModelConfig`."""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .dncnn import DnCNN
from .unet import UNet

__all__ = ["UNet", "DnCNN", "build_model", "stem_channels", "count_parameters", "channels_last", "fast_layout", "as_layout"]


#: the automatic U-Net stem width is at most this many times ``model.width``
STEM_CAP = 4


def stem_channels(cfg: ModelConfig, in_channels: int) -> int:
    """Channels of the U-Net's first convolution: ``model.stem_width``, or for 0 (auto)
    ``max(width, 2 * in_channels)`` capped at ``STEM_CAP * width``.

    Single-frame methods (1 channel) and the symmetry split (3) keep ``width``; the neighbour blind spot
    with 8 neighbours and the centre frame's half (9 channels) gets 18. Measured on the synthetic 4x4
    high-dose scan of docs/benchmarks.md, 60 s of training, seeds 0-2: 8 channels there (the first
    convolution squeezing 9 inputs into 8 features) scored 47.76 / 46.97 / 47.21 dB, the automatic 18
    channels 47.57 / 48.46 / 48.80 dB, with about 10 % fewer epochs (docs/methods.md).
    """
    if int(cfg.stem_width) > 0:
        return int(cfg.stem_width)
    w = int(cfg.width)
    return int(max(w, min(STEM_CAP * w, 2 * int(in_channels))))


def build_model(cfg: ModelConfig, ndim: int, in_channels: int | None = None) -> nn.Module:
    """The network described by ``cfg`` for ``ndim``-dimensional frames (1 or 2). ``cfg.residual_channel``
    (set by the method, :attr:`methods.base.Method.residual_channel`, and saved with the model): the input
    channel a residual network adds its correction to (``None``: the mean of the input channels).
    ``cfg.residual`` None (auto, which the trainer resolves per method and data) builds a residual network."""
    cin = int(in_channels if in_channels is not None else cfg.in_channels)
    residual_channel = cfg.residual_channel
    residual = cfg.residual is not False
    if cfg.arch == "unet":
        return UNet(ndim=ndim, in_channels=cin, depth=int(cfg.depth), width=int(cfg.width), residual=residual,
                    residual_channel=residual_channel, stem_width=stem_channels(cfg, cin))
    if cfg.arch == "dncnn":
        return DnCNN(ndim=ndim, in_channels=cin, layers=int(cfg.dncnn_layers), width=int(cfg.width),
                     residual=residual, residual_channel=residual_channel)
    raise ValueError(f"unknown model.arch {cfg.arch!r}")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def channels_last(ndim: int, device: torch.device) -> bool:
    """Whether 2D networks run faster with channels-last tensors on ``device``.

    The default networks have few channels (8-64), where channels-last convolutions are much faster on
    a CPU: measured on a 2-core machine (U-Net depth 3, width 8), inference on one 512x512 frame 0.117 ->
    0.057 s and a training step on 8 patches of 96x96 (one thread) 0.102 -> 0.070 s (docs/benchmarks.md).
    CUDA convolutions (cuDNN, mixed precision) prefer it too. Not used for 1D networks or MPS.
    """
    return int(ndim) == 2 and torch.device(device).type in ("cpu", "cuda")


def fast_layout(net: nn.Module, ndim: int, device: torch.device) -> bool:
    """Put ``net``'s weights in the faster memory layout for ``device`` (in place; the values do not
    change). Returns whether inputs should be made channels-last too (:func:`as_layout`)."""
    on = channels_last(ndim, device)
    if on:
        net.to(memory_format=torch.channels_last)
    return on


def as_layout(x: torch.Tensor, on: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if on and x.ndim == 4 else x
