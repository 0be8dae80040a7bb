"""Classical baselines for the benchmarks: raw, Gaussian filter, median filter, BM3D on the Anscombe scale.

Each takes count frames (frame axes last, any leading axes) and a validity mask (``True`` = usable,
broadcastable to the counts) and returns float32 counts with NaN at invalid pixels. Invalid pixels never
enter a filter: the Gaussian is a normalised convolution over valid pixels, the median ignores invalid
pixels, BM3D sees invalid pixels filled from their valid surroundings and their output is discarded.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from .errors import XRDError

NAMES = ("raw", "gaussian", "median", "bm3d")
DEFAULT_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _prep(counts: np.ndarray, valid: np.ndarray | None, frame_ndim: int | None):
    c = np.asarray(counts, dtype=np.float64)
    nd = frame_ndim if frame_ndim is not None else (2 if c.ndim >= 2 else 1)
    if nd not in (1, 2) or c.ndim < nd:
        raise XRDError(f"baselines: frame_ndim={nd} does not fit counts of shape {c.shape}")
    v = np.isfinite(c)
    if valid is not None:
        try:
            v &= np.broadcast_to(np.asarray(valid, dtype=bool), c.shape)
        except ValueError:
            raise XRDError(f"baselines: validity mask shape {np.shape(valid)} does not fit counts {c.shape}") from None
    return np.where(v, c, 0.0), v, nd


def _out(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.where(v, x, np.nan).astype(np.float32)


def raw(counts: np.ndarray, valid: np.ndarray | None = None, frame_ndim: int | None = None) -> np.ndarray:
    """The counts themselves (NaN where invalid)."""
    c, v, _ = _prep(counts, valid, frame_ndim)
    return _out(c, v)


def _normconv(c: np.ndarray, v: np.ndarray, sigma: float, nd: int) -> np.ndarray:
    s = (0.0,) * (c.ndim - nd) + (float(sigma),) * nd
    w = v.astype(np.float64)
    num = ndimage.gaussian_filter(c * w, s, mode="reflect", truncate=4.0)
    den = ndimage.gaussian_filter(w, s, mode="reflect", truncate=4.0)
    return np.where(den > 1e-8, num / np.maximum(den, 1e-8), 0.0)


def gaussian(counts: np.ndarray, valid: np.ndarray | None = None, sigma: float = 1.0,
             frame_ndim: int | None = None) -> np.ndarray:
    """Gaussian filter of width ``sigma`` pixels over valid pixels only (normalised convolution)."""
    if sigma <= 0:
        raise XRDError(f"baselines: gaussian sigma={sigma} must be positive")
    c, v, nd = _prep(counts, valid, frame_ndim)
    return _out(_normconv(c, v, sigma, nd), v)


def best_gaussian(counts: np.ndarray, valid: np.ndarray | None, reference: np.ndarray,
                  sigmas=DEFAULT_SIGMAS, frame_ndim: int | None = None, scale: str = "sqrt"):
    """The Gaussian filter whose width minimises the error against ``reference`` (an oracle: it looks at
    the answer, so it is an upper bound for any Gaussian filter). ``scale`` is ``"sqrt"`` (MSE of square
    roots) or ``"counts"``. Returns ``(denoised, sigma)``."""
    c, v, nd = _prep(counts, valid, frame_ndim)
    ref = np.asarray(reference, dtype=np.float64)
    ok = v & np.isfinite(ref)
    f = (lambda a: np.sqrt(np.maximum(a, 0))) if scale == "sqrt" else (lambda a: a)
    best, best_err, best_s = None, np.inf, None
    for s in sigmas:
        d = _normconv(c, v, s, nd)
        err = float(np.mean((f(d[ok]) - f(ref[ok])) ** 2))
        if err < best_err:
            best, best_err, best_s = d, err, float(s)
    return _out(best, v), best_s


def median(counts: np.ndarray, valid: np.ndarray | None = None, size: int = 3,
           frame_ndim: int | None = None) -> np.ndarray:
    """Median of the valid pixels in a ``size``-wide window (``size`` per frame axis)."""
    if size < 1 or size % 2 == 0:
        raise XRDError(f"baselines: median size={size} must be a positive odd number")
    c, v, nd = _prep(counts, valid, frame_ndim)
    x = np.where(v, c, np.nan)
    h = size // 2
    pad = [(0, 0)] * (x.ndim - nd) + [(h, h)] * nd
    xp = np.pad(x, pad, mode="reflect") if all(s > h for s in x.shape[-nd:]) else np.pad(x, pad, mode="edge")
    axes = tuple(range(x.ndim - nd, x.ndim))
    win = sliding_window_view(xp, (size,) * nd, axis=axes)
    flat = win.reshape(win.shape[: x.ndim] + (-1,))
    out = np.empty(x.shape, dtype=np.float64)
    lead = int(np.prod(x.shape[: x.ndim - nd], dtype=np.int64)) if x.ndim > nd else 1
    fl = flat.reshape((lead,) + x.shape[x.ndim - nd:] + (flat.shape[-1],))
    ol = out.reshape((lead,) + x.shape[x.ndim - nd:])
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for i in range(lead):  # frame by frame keeps the window copy small
                ol[i] = np.nanmedian(fl[i], axis=-1)
    return _out(np.nan_to_num(out), v)


def bm3d_anscombe(counts: np.ndarray, valid: np.ndarray | None = None, sigma: float = 1.0,
                  frame_ndim: int | None = None) -> np.ndarray:
    """BM3D on the Anscombe scale (noise sigma 1 there), back to counts with the exact unbiased inverse.

    Needs the ``bm3d`` package (``pip install napari-xrd-denoise[bench]``); 2D frames only.
    """
    try:
        import bm3d
    except ImportError:
        raise XRDError("baselines: BM3D needs the 'bm3d' package (pip install bm3d)") from None
    from .physics.vst import anscombe, inverse_anscombe

    c, v, nd = _prep(counts, valid, frame_ndim)
    if nd != 2:
        raise XRDError("baselines: BM3D works on 2D frames only (frame_ndim=2)")
    a = anscombe(c).astype(np.float64)
    filled = np.where(v, a, _normconv(a, v, 2.0, 2))
    lead = filled.reshape((-1,) + filled.shape[-2:])
    out = np.empty_like(lead)
    for i in range(lead.shape[0]):
        if min(lead.shape[-2:]) < 8:
            raise XRDError(f"baselines: BM3D needs frames of at least 8x8 pixels, got {lead.shape[-2:]}")
        out[i] = np.asarray(bm3d.bm3d(lead[i], sigma_psd=float(sigma)), dtype=np.float64).reshape(lead.shape[-2:])
    den = inverse_anscombe(out.reshape(c.shape)).astype(np.float64)
    return _out(den, v)


def apply(name: str, counts: np.ndarray, valid: np.ndarray | None = None, frame_ndim: int | None = None,
          **kwargs) -> np.ndarray:
    """Run the baseline called ``name`` (one of ``NAMES``)."""
    fns = {"raw": raw, "gaussian": gaussian, "median": median, "bm3d": bm3d_anscombe}
    if name not in fns:
        raise XRDError(f"baselines: name={name!r} is not one of: {', '.join(NAMES)}")
    return fns[name](counts, valid, frame_ndim=frame_ndim, **kwargs)
