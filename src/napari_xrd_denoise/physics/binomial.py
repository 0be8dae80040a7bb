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


def adjacent_correlation(frames: np.ndarray, valid: np.ndarray | None = None, frame_ndim: int = 2,
                         dark_below: float | None = 2.0) -> tuple[float, ...]:
    """Correlation of the counts of adjacent pixels, one value per frame axis (about 0 for independent counts).

    Binomial splitting and thinning give independent halves only when every count is an independent
    event in one pixel. Detectors that share an event's charge between neighbouring pixels (hybrid pixel
    detectors for electrons, e.g. Medipix/Merlin) break this: a count in one pixel makes one in the next
    likelier, and the two halves of a split are then correlated between adjacent pixels.

    Estimated without knowing the mean pattern: the second difference ``d(x) = n(x-1) - 2 n(x) + n(x+1)``
    cancels a locally linear mean, and for pixel covariances ``c0`` (variance) and ``c1`` (adjacent,
    longer ranges 0) its lag-1 correlation is ``r = (7 c1 - 4 c0) / (6 c0 - 8 c1)``, -2/3 for independent
    counts; the returned ``rho = c1 / c0 = (6 r + 4) / (7 + 8 r)``. A pattern curved on a 4-pixel scale
    (rings, disc edges) biases it upwards, so with ``dark_below`` only the background enters: pixels at
    least 4 pixels away from any whose local mean (9-pixel box, frames averaged) exceeds twice
    ``max(dark_below, the median local mean)`` (a flat field keeps every pixel).
    Only triples of valid pixels enter; NaN where fewer than 1000 pairs do.
    """
    from scipy import ndimage

    x = np.asarray(frames, dtype=np.float64)
    v = np.ones(x.shape, bool) if valid is None else np.broadcast_to(np.asarray(valid, bool), x.shape)
    nd = int(frame_ndim)
    if dark_below is not None:
        fr = (-1,) + x.shape[x.ndim - nd:]
        xv, vv = np.where(v, x, 0.0).reshape(fr), v.reshape(fr)
        mean = xv.sum(0) / np.maximum(vv.sum(0), 1)
        local = ndimage.uniform_filter(mean, 9, mode="nearest")
        seen = vv.any(0)
        cut = float(dark_below)
        if seen.any():
            cut = max(cut, float(np.median(local[seen])))
        dark = ~ndimage.binary_dilation(local > 2.0 * cut, iterations=4)
        v = v & dark
    out = []
    for ax in range(x.ndim - nd, x.ndim):
        if x.shape[ax] < 4:
            out.append(float("nan"))
            continue
        d = np.moveaxis(np.diff(x, n=2, axis=ax), ax, -1)  # second differences along this axis, last
        va = np.moveaxis(v, ax, -1)
        ok = va[..., :-2] & va[..., 1:-1] & va[..., 2:]
        a, b = d[..., :-1], d[..., 1:]
        both = ok[..., :-1] & ok[..., 1:]
        if both.sum() < 1000:
            out.append(float("nan"))
            continue
        a, b = a[both], b[both]
        a = a - a.mean()
        b = b - b.mean()
        den = np.sqrt((a * a).sum() * (b * b).sum())
        r = float((a * b).sum() / den) if den > 0 else float("nan")
        out.append(float((6.0 * r + 4.0) / (7.0 + 8.0 * r)))
    return tuple(out)
