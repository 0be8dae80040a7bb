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
    a = _half(n, rng) if p == 0.5 else None
    if a is None:
        a = rng.binomial(n, p)
    return a.astype(np.float32), (n - a).astype(np.float32)


#: Largest count that :func:`_half` draws bit by bit (8 words of 64 fair bits); larger ones (rare: the
#: peaks of Bragg spots) are drawn by ``rng.binomial``.
HALF_MAX_COUNT = 512
_ALL_BITS = np.uint64(np.iinfo(np.uint64).max)


def _half(n: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """``Binomial(n, 1/2)`` for non-negative int64 counts ``n``, exactly: the number of ones among ``n``
    fair random bits (64 per draw of a uint64, masked to the bits still owed, counted by popcount);
    counts above :data:`HALF_MAX_COUNT` by ``rng.binomial``. About three times faster than
    ``rng.binomial`` at 100 counts per pixel, and more where most pixels hold no count (they are
    skipped); it matters because training splits every patch afresh. None when numpy lacks
    ``bitwise_count`` (numpy < 2)."""
    if not hasattr(np, "bitwise_count"):
        return None
    flat = n.reshape(-1)
    out = np.zeros(flat.shape, dtype=np.int64)
    big = np.flatnonzero(flat > HALF_MAX_COUNT)
    if big.size:
        out[big] = rng.binomial(flat[big], 0.5)
    idx = np.flatnonzero((flat > 0) & (flat <= HALF_MAX_COUNT))
    left = flat[idx]
    while idx.size:
        k = np.minimum(left, 64).astype(np.uint64)  # 1..64 bits owed in this word
        bits = rng.integers(0, _ALL_BITS, size=idx.size, dtype=np.uint64, endpoint=True)
        out[idx] += np.bitwise_count(bits & (_ALL_BITS >> (np.uint64(64) - k)))  # its low k bits
        left = left - k.astype(np.int64)
        more = left > 0
        idx, left = idx[more], left[more]
    return out.reshape(n.shape)
