"""Binomial thinning and splitting of count frames.

If ``n ~ Poisson(lambda)`` and each count is kept with probability ``p``, the kept part is
``Poisson(p * lambda)``, the dropped part ``Poisson((1 - p) * lambda)``, and the two are independent.
So one acquisition gives a Noise2Noise pair, and a real high-count frame gives a realistic low-dose
frame whose reference is the high-count frame scaled by ``p``.
"""

from __future__ import annotations

import numpy as np


def _counts(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            x = np.where(np.isfinite(x), x, 0)
        x = np.rint(np.maximum(x, 0))
    else:
        if x.dtype.kind == "u":  # the all-ones sentinel marks an invalid pixel, not counts
            x = np.where(x == np.iinfo(x.dtype).max, 0, x)
        x = np.maximum(x, 0)
    return x.astype(np.int64)


def thin(counts: np.ndarray, p: float, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Keep each count with probability ``p`` (invalid / negative values give 0)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"thinning probability p={p} must be within [0, 1]")
    rng = np.random.default_rng(rng)
    return rng.binomial(_counts(counts), p).astype(np.float32)


def split(
    counts: np.ndarray, p: float = 0.5, rng: np.random.Generator | int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split counts into two independent Poisson halves ``(kept, rest)``; ``kept + rest == counts``."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"split probability p={p} must be within (0, 1)")
    rng = np.random.default_rng(rng)
    n = _counts(counts)
    a = rng.binomial(n, p)
    return a.astype(np.float32), (n - a).astype(np.float32)
