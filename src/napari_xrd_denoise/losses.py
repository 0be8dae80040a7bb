"""Losses over weighted pixels: MSE on the network (variance-stabilised) scale, Poisson NLL on counts.

Every loss is a weighted mean: the sum over pixels of ``weight * loss`` divided by the number of
contributing pixels (``weight > 0``); with no contributing pixel it is 0 (no NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8


def _reduce(per_pixel: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    n = (weight > 0).sum()
    total = (per_pixel * weight).sum()
    return torch.where(n > 0, total / n.clamp(min=1).to(total.dtype), torch.zeros_like(total))


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * (pred - target)**2) / count(w > 0)``; 0 when no pixel counts."""
    w = weight.to(pred.dtype)
    diff = torch.where(w > 0, pred - target, torch.zeros_like(pred))
    return _reduce(diff * diff, w)


def link_rate(y: torch.Tensor, mean: float, std: float, transform: str) -> torch.Tensor:
    """Network output -> Poisson rate; the same link as :meth:`methods.base.Normalizer.link`."""
    u = y * std + mean
    s = F.softplus(u)
    return s * s / 4.0 if transform in ("anscombe", "gat") else s


def poisson_nll(rate: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``mean over w>0 of w * (rate - t * log(rate + eps))`` for count targets ``t``.

    The constant ``log(t!)`` is left out; the minimum over ``rate`` is at ``rate = E[t]``.
    """
    w = weight.to(rate.dtype)
    t = torch.where(w > 0, target, torch.zeros_like(target))
    per = rate - t * torch.log(rate + eps)
    per = torch.where(w > 0, per, torch.zeros_like(per))
    return _reduce(per, w)


def poisson_deviance(rate: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Poisson NLL minus its value at ``rate = t`` (>= 0, 0 for a perfect fit): a readable validation loss."""
    w = weight.to(rate.dtype)
    t = torch.where(w > 0, target, torch.zeros_like(target)).clamp(min=0)
    per = rate - t * torch.log(rate + eps) - (t - torch.xlogy(t, t + eps))
    per = torch.where(w > 0, per, torch.zeros_like(per))
    return _reduce(per, w)
