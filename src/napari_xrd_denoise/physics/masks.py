"""Validity masks built from the raw integers, before any cast to float.

Convention everywhere in this package: a *validity* mask is boolean, ``True`` where the pixel carries
information. Invalid pixels never enter a loss or a metric and stay marked invalid in every output.
"""

from __future__ import annotations

import numpy as np

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
