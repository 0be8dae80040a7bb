"""Validity masks built from the raw integers, before any cast to float.

Convention everywhere in this package: a *validity* mask is boolean, ``True`` where the pixel carries
information. Invalid pixels never enter a loss or a metric and stay marked invalid in every output.
"""

from __future__ import annotations

import numpy as np

from ..errors import XRDError

# NeXus / DECTRIS pixel_mask bits
PIXEL_MASK_BITS = {
    0: "gap",
    1: "dead",
    2: "under-responding",
    3: "over-responding",
    4: "noisy",
    8: "user",
    31: "virtual",
}


def valid_from_raw(
    raw: np.ndarray,
    *,
    bit_depth: int | None = None,
    saturation: float | None = None,
    keep_negatives: bool = False,
) -> np.ndarray:
    """Per-pixel validity of raw detector values (any leading axes).

    Invalid: NaN/inf; negatives unless ``keep_negatives`` (Pilatus marks gaps -1 and bad pixels -2);
    the all-ones sentinel of unsigned integer data (2**bits-1 of the dtype, e.g. 2**32-1 in uint32);
    ``2**bit_depth - 1`` when ``bit_depth`` is given (Eiger ``bit_depth_image``) and smaller than the
    dtype; values at or above ``saturation``.
    The test is done on the raw dtype, so 2**32-1 is never confused with 4294967296.0 after a cast.
    """
    raw = np.asarray(raw)
    kind = raw.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"detector data must be numeric, got dtype {raw.dtype}")
    valid = np.ones(raw.shape, dtype=bool)
    if kind == "f":
        valid &= np.isfinite(raw)
    if kind in "if" and not keep_negatives:
        with np.errstate(invalid="ignore"):
            valid &= ~(raw < 0)
    if kind == "u":
        sentinel = np.iinfo(raw.dtype).max
        valid &= raw != sentinel
    if bit_depth is not None and 0 < int(bit_depth) < 64:
        s = (1 << int(bit_depth)) - 1
        if kind in "iu" and s <= np.iinfo(raw.dtype).max:
            valid &= raw != raw.dtype.type(s)
        elif kind == "f":
            valid &= raw != s
    if saturation is not None:
        with np.errstate(invalid="ignore"):
            valid &= ~(raw >= saturation)
    return valid


def valid_from_pixel_mask(pixel_mask: np.ndarray) -> np.ndarray:
    """NeXus ``pixel_mask``: any set bit means the pixel is not to be used."""
    return np.asarray(pixel_mask) == 0


def valid_from_user_mask(mask: np.ndarray) -> np.ndarray:
    """User / pyFAI / Dioptas mask files: nonzero = masked (excluded)."""
    return np.asarray(mask) == 0


def describe_pixel_mask(pixel_mask: np.ndarray) -> dict[str, int]:
    """Count of pixels per NeXus reason, for reports."""
    pm = np.asarray(pixel_mask).astype(np.uint64, copy=False)
    out = {}
    for bit, name in PIXEL_MASK_BITS.items():
        n = int(np.count_nonzero(pm & np.uint64(1 << bit)))
        if n:
            out[name] = n
    return out

def find_hot_dead(
    counts: np.ndarray,
    valid: np.ndarray,
    k: float = 10.0,
    size: int = 5,
    min_expected: float = 20.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Hot and dead pixels from sampled frames ``(n, H, W)`` of counts (invalid pixels ignored).

    Hot: the pixel's typical count (median over the sampled frames, so a Bragg spot that passes through
    a few frames does not count) exceeds ``k`` times the median-filtered typical count of its
    neighbourhood (``size`` pixels, floor 1 count). Dead: zero in every sampled frame although its
    neighbourhood predicts at least ``min_expected`` counts in total over the sample, so a truly empty
    region of a sparse low-dose pattern is never called dead (P(0 | Poisson(20)) = 2e-9).
    Returns ``(hot, dead)`` boolean masks of the frame shape.
    """
    from scipy import ndimage

    c = np.asarray(counts, dtype=np.float64)
    v = np.asarray(valid, dtype=bool)
    if c.ndim == 2:
        c, v = c[None], v[None]
    if c.shape != v.shape or c.ndim != 3:
        raise XRDError(f"hot/dead search needs frames (n, H, W) with matching validity, got {c.shape}, {v.shape}")
    n = c.shape[0]
    nvalid = v.sum(axis=0)
    seen = nvalid > 0
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            level = np.nanmedian(np.where(v, c, np.nan), axis=0)
            mean = np.nansum(np.where(v, c, 0.0), axis=0) / np.maximum(nvalid, 1)
    fill = float(np.nanmedian(level)) if np.isfinite(level).any() else 0.0
    filled = np.where(seen, level, fill)
    med = ndimage.median_filter(filled, size=int(size), mode="nearest")
    hot = seen & (filled > k * np.maximum(med, 1.0))
    mean_f = ndimage.median_filter(np.where(seen, mean, fill), size=int(size), mode="nearest")
    total = np.where(v, c, 0).sum(axis=0)
    dead = seen & (nvalid == n) & (total == 0) & (mean_f * n >= min_expected)
    return hot, dead & ~hot


#: :func:`flux_outliers`: a spike holds more than this many times the second-largest of its valid neighbours
SPIKE_FACTOR = 50.0


def flux_outliers(counts: np.ndarray, denoised: np.ndarray, valid: np.ndarray,
                  factor: float = SPIKE_FACTOR) -> np.ndarray:
    """Valid pixels of one frame that a flux correction's totals must leave out: counts that are not
    the signal whose level the correction restores.

    - isolated spikes: more than ``factor`` times the second-largest of the pixel's valid 8 neighbours
      (floor 1 count), e.g. an unmasked hot pixel (or a pair of them) or a zinger, whether or not the
      denoiser reproduced it (a reproduced hot pixel of 1e6 counts would otherwise set the scale of a
      whole frame or ring). A pixel with two bright neighbours (a compact Bragg spot, a one-pixel-wide
      ring) is no spike;
    - counts no estimate near them explains: more than ``100 + factor * denoised`` (hot spots the
      denoiser removed, whose counts the correction would spread over the frame or ring).

    ``counts``, ``denoised``, ``valid``: arrays of one frame's shape (any number of dimensions; spikes are
    looked for in 2D frames only). Returns a boolean mask, False outside ``valid``.
    """
    c = np.asarray(counts, dtype=np.float32)
    d = np.asarray(denoised, dtype=np.float32)
    v = np.asarray(valid, dtype=bool) & np.isfinite(c) & np.isfinite(d)
    out = v & (c > 100.0 + factor * np.maximum(d, 0.0))
    if c.ndim != 2:
        return out
    cand = v & ~out & (c > factor)  # a spike exceeds factor * (floor 1) ...
    H, W = c.shape
    if cand.any():  # ... and factor * its smallest valid neighbour (at most the second-largest)
        pad = np.full((H + 2, W + 2), np.inf, dtype=np.float32)
        pad[1:-1, 1:-1] = np.where(v, c, np.inf)
        low = np.full((H, W), np.inf, dtype=np.float32)
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                if (dy, dx) != (1, 1):
                    np.minimum(low, pad[dy:dy + H, dx:dx + W], out=low)
        cand &= c > factor * np.maximum(low, 1.0)
    ys, xs = np.nonzero(cand)
    if ys.size == 0:
        return out
    nb = np.full((ys.size, 8), -np.inf, dtype=np.float32)  # invalid or outside: never a bright neighbour
    k = 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            yi, xi = np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)
            ok = inside & v[yi, xi]
            nb[:, k] = np.where(ok, c[yi, xi], -np.inf)
            k += 1
    nb.sort(axis=1)
    second = nb[:, -2]
    # fewer than two valid neighbours: the one there is (none: no evidence of a spike)
    second = np.where(np.isfinite(second), second, np.where(np.isfinite(nb[:, -1]), nb[:, -1], np.inf))
    spike = c[ys, xs] > factor * np.maximum(second, 1.0)
    out[ys[spike], xs[spike]] = True
    return out
