"""Quality control of a denoised result against the raw counts it came from (no clean reference needed).

A denoiser estimates the Poisson mean ``lambda`` of every pixel. If the estimate ``d`` is right, the raw
counts ``x`` scatter around it as pure Poisson noise, and everything below has a known expectation:

* **Pearson residuals** ``r = (x - d) / sqrt(max(d, eps))``: mean 0, variance 1 (exactly, for any
  ``lambda >= eps``), no spatial structure.
* **Reduced chi-square per frame** ``sum r^2 / sum min(1, d/eps)``: expectation 1 (the denominator is the
  exact expectation of the numerator, so pixels with ``d`` near 0 do not drag it down). Its Poisson
  standard deviation is known (``Var[(x-l)^2] = l + 2 l^2``), so a departure is judged both by size
  (``tol``) and by significance.
* **Block sums** over ``k x k`` pixel blocks: the raw sum ``S`` is Poisson with mean ``L = sum d``, so
  ``(S - L)^2 / L`` again has expectation 1, and exact Poisson tail probabilities of ``S`` say whether a
  single block departs (a removed Bragg spot of a few pixels, an invented one). Blurring or a lost peak
  leaves residuals of one sign over several pixels; their block sums grow like the block area while pure
  noise grows like its square root, so these statistics see structure that a pixel-wise chi-square dilutes.
* **Ring sums** (when the beam centre is known): the same test on 1-pixel-wide rings around the centre,
  which is where blurred or lost powder rings show.

``flag_frames`` combines them. Low chi-square (``d`` follows the noise: the denoiser copied it) is flagged
too. ``profile_bias`` compares azimuthal profiles; ``noreference_score`` gives the held-out
self-supervised loss of any denoiser; ``write_report`` writes all numbers (JSON) and a figure (PNG).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy import ndimage, special, stats

from .errors import XRDError

EPS = 1e-2  # counts: the variance floor of Pearson residuals


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------
def _as_frames(raw: np.ndarray, denoised: np.ndarray, valid: np.ndarray | None, frame_ndim: int | None = None):
    """float64 counts, estimates and validity as ``(n_frames, *frame)``, invalid wherever any says so."""
    den = np.asarray(denoised, dtype=np.float64)
    raw_a = np.asarray(raw)
    if raw_a.shape != den.shape:
        raise XRDError(f"qc: raw shape {raw_a.shape} does not match denoised shape {den.shape}")
    if frame_ndim is None:
        frame_ndim = 1 if den.ndim == 1 else 2
    frame_ndim = min(frame_ndim, den.ndim)
    from .physics.masks import valid_from_raw

    v = valid_from_raw(raw_a) if raw_a.dtype.kind in "biuf" else np.ones(raw_a.shape, bool)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        try:
            v = v & np.broadcast_to(valid, den.shape)
        except ValueError:
            raise XRDError(f"qc: validity mask shape {valid.shape} does not fit data shape {den.shape}") from None
    v &= np.isfinite(den)
    x = np.where(v, raw_a, 0).astype(np.float64)
    d = np.where(v, np.maximum(den, 0.0), 0.0)
    frame = den.shape[den.ndim - frame_ndim:]
    return x.reshape((-1,) + frame), d.reshape((-1,) + frame), v.reshape((-1,) + frame)


# --------------------------------------------------------------------------------------------------
# residuals and chi-square
# --------------------------------------------------------------------------------------------------
def poisson_residuals(raw: np.ndarray, denoised: np.ndarray, valid: np.ndarray | None = None,
                      eps: float = EPS) -> np.ndarray:
    """Pearson residuals ``(raw - denoised) / sqrt(max(denoised, eps))``; NaN where invalid. Same shape."""
    den = np.asarray(denoised, dtype=np.float64)
    x, d, v = _as_frames(raw, den, valid, frame_ndim=den.ndim)
    r = (x - d) / np.sqrt(np.maximum(d, eps))
    return np.where(v, r, np.nan).reshape(den.shape).astype(np.float32)


def residual_stats(r: np.ndarray) -> dict[str, float]:
    """Mean, variance, skewness and count of finite residuals (about 0, 1 when the estimate is unbiased)."""
    r = np.asarray(r, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return {"mean": math.nan, "var": math.nan, "skew": math.nan, "n": 0}
    m = float(r.mean())
    var = float(r.var())
    skew = float(((r - m) ** 3).mean() / var**1.5) if var > 0 else math.nan
    return {"mean": m, "var": var, "skew": skew, "n": int(r.size)}


def _chi2_parts(x: np.ndarray, d: np.ndarray, v: np.ndarray, eps: float):
    """Per frame: sum r^2, its expectation and its variance under Poisson noise about ``d``."""
    axes = tuple(range(1, x.ndim))
    den = np.maximum(d, eps)
    r2 = np.subtract(x, d)
    np.square(r2, out=r2)
    r2 /= den
    r2 *= v
    expect = d / den
    expect *= v
    var = 2.0 * d
    var += 1.0
    var *= expect
    var /= den  # (d + 2 d^2) / den^2 where valid
    return r2.sum(axes), expect.sum(axes), var.sum(axes)


def chi2_per_frame(raw: np.ndarray, denoised: np.ndarray, valid: np.ndarray | None = None,
                   eps: float = EPS) -> np.ndarray:
    """Reduced chi-square of every frame (frame axes last; 1 for pure Poisson noise about ``denoised``)."""
    den = np.asarray(denoised)
    x, d, v = _as_frames(raw, den, valid)
    s, e, _ = _chi2_parts(x, d, v, eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(e > 0, s / np.where(e > 0, e, 1.0), np.nan)
    return out.reshape(den.shape[: den.ndim - (x.ndim - 1)] or (1,))


def _poisson_two_sided(s: np.ndarray, lam_lo: np.ndarray, lam_hi: np.ndarray) -> np.ndarray:
    """min(P[X >= s | lam_hi], P[X <= s | lam_lo]) for integer-rounded sums ``s``."""
    s = np.rint(s)
    with np.errstate(all="ignore"):
        p_hi = np.where(s > 0, special.gammainc(np.maximum(s, 1.0), lam_hi), 1.0)  # P[X >= s]
        p_lo = special.gammaincc(s + 1.0, lam_lo)  # P[X <= s]
    return np.minimum(np.minimum(p_hi, p_lo), 1.0)


def _block_sums_nd(a: np.ndarray, k: int) -> np.ndarray:
    """Sums over non-overlapping k-blocks of the frame axes, keeping the frame axes (edges cropped)."""
    n, *frame = a.shape
    cut = [(s // k) * k for s in frame]
    a = a[(slice(None),) + tuple(slice(0, c) for c in cut)]
    if len(frame) == 1:
        return a.reshape(n, cut[0] // k, k).sum(2)
    return a.reshape(n, cut[0] // k, k, cut[1] // k, k).sum((2, 4))


def _ring_sums(a: np.ndarray, ring: np.ndarray, n_rings: int) -> np.ndarray:
    n = a.shape[0]
    flat = a.reshape(n, -1)
    out = np.zeros((n, n_rings))
    for i in range(n):
        out[i] = np.bincount(ring, weights=flat[i], minlength=n_rings)[:n_rings]
    return out


def _group_stats(xs: np.ndarray, ds: np.ndarray, ns: np.ndarray, rel_tol: float, min_pixels: int):
    """Chi-square, its z-score and the Bonferroni-adjusted smallest Poisson p-value of grouped sums."""
    use = (ns >= min_pixels) & (ds > 0)
    lam = np.where(use, ds, 1.0)
    z2 = np.where(use, (xs - ds) ** 2 / lam, 0.0)
    var = np.where(use, 2.0 + 1.0 / lam, 0.0)
    m = use.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(m > 0, z2.sum(1) / np.maximum(m, 1), np.nan)
        zscore = np.where(m > 0, (z2.sum(1) - m) / np.sqrt(np.maximum(var.sum(1), 1e-12)), np.nan)
    # exact Poisson tails, evaluated only where the Gaussian z says it could matter
    z = np.where(use, (xs - ds) / np.sqrt(lam), 0.0)
    cand = use & (np.abs(z) > 2.5)
    p = np.ones_like(ds)
    if np.any(cand):
        p[cand] = _poisson_two_sided(xs[cand], ds[cand] * (1 - rel_tol), ds[cand] * (1 + rel_tol))
    pmin_adj = np.minimum(1.0, p.min(1) * 2 * np.maximum(m, 1))
    worst = np.argmin(p, axis=1)
    return chi2, zscore, pmin_adj, worst, z


@dataclass
class FrameChecks:
    """Per-frame statistics of residuals about the denoised estimate (all arrays of length n_frames)."""

    chi2: np.ndarray
    chi2_z: np.ndarray
    n_valid: np.ndarray
    block: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    ring: dict[str, np.ndarray] | None = None

    def flags(self, tol: float = 0.25, alpha: float = 1e-3, z_sig: float = 5.0) -> np.ndarray:
        return flag_frames(self, tol=tol, alpha=alpha, z_sig=z_sig)

    def reasons(self, i: int, tol: float = 0.25, alpha: float = 1e-3, z_sig: float = 5.0) -> list[str]:
        return _reasons(self, i, tol, alpha, z_sig)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"chi2": self.chi2, "chi2_z": self.chi2_z, "n_valid": self.n_valid}
        for k, b in self.block.items():
            d[f"block{k}"] = {"chi2": b["chi2"], "chi2_z": b["chi2_z"], "p_min": b["p_min"]}
        if self.ring is not None:
            d["ring"] = {"chi2": self.ring["chi2"], "chi2_z": self.ring["chi2_z"], "p_min": self.ring["p_min"]}
        return d


def _ring_index(frame_shape: tuple[int, ...], center) -> tuple[np.ndarray, int]:
    yy, xx = np.indices(frame_shape, dtype=np.float64)
    r = np.hypot(yy - float(center[0]), xx - float(center[1]))
    ring = np.floor(r).astype(np.int64).ravel()
    return ring, int(ring.max()) + 1


def frame_checks(raw: np.ndarray, denoised: np.ndarray, valid: np.ndarray | None = None, *,
                 blocks: tuple[int, ...] = (2, 4, 8), center=None, eps: float = EPS,
                 rel_tol: float = 0.05, frame_ndim: int | None = None) -> FrameChecks:
    """Pixel, block and ring statistics of every frame (frame axes last).

    ``rel_tol`` is the relative error of the estimate allowed in the exact block/ring tail tests (the
    Poisson mean is taken as ``L (1 +- rel_tol)``), so a few-percent model error in a bright block is not a
    departure, while a removed or invented peak is.
    """
    x, d, v = _as_frames(raw, denoised, valid, frame_ndim)
    return _checks_from_frames(x, d, v, blocks=blocks, center=center, eps=eps, rel_tol=rel_tol)


def _checks_from_frames(x, d, v, *, blocks, center, eps, rel_tol) -> FrameChecks:
    s, e, var = _chi2_parts(x, d, v, eps)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = np.where(e > 0, s / np.where(e > 0, e, 1.0), np.nan)
        chi2_z = np.where(var > 0, (s - e) / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
    n_valid = v.reshape(v.shape[0], -1).sum(1)
    fc = FrameChecks(chi2=chi2, chi2_z=chi2_z, n_valid=n_valid)
    vf = v.astype(np.float64)
    prev: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None  # block sums of the last size, unflattened
    for k in sorted(blocks):
        if any(sz < k for sz in x.shape[1:]):
            continue
        if prev is not None and k % prev[0] == 0:
            f = k // prev[0]  # sums of k-blocks from sums of the previous (smaller) blocks
            xb, db, nb = (_block_sums_nd(a, f) for a in prev[1:])
        else:
            xb, db, nb = (_block_sums_nd(a, k) for a in (x, d, vf))
        prev = (k, xb, db, nb)
        n = x.shape[0]
        xs, ds, ns = xb.reshape(n, -1), db.reshape(n, -1), nb.reshape(n, -1)
        c, cz, pm, worst, _ = _group_stats(xs, ds, ns, rel_tol, min_pixels=max(1, (k**(x.ndim - 1)) // 2))
        fc.block[k] = {"chi2": c, "chi2_z": cz, "p_min": pm, "worst": worst}
    if center is not None and x.ndim == 3:
        ring, nr = _ring_index(x.shape[1:], center)
        xs, ds, ns = _ring_sums(x, ring, nr), _ring_sums(d, ring, nr), _ring_sums(vf, ring, nr)
        c, cz, pm, worst, _ = _group_stats(xs, ds, ns, rel_tol, min_pixels=4)
        fc.ring = {"chi2": c, "chi2_z": cz, "p_min": pm, "worst": worst}
    return fc


def _departs(chi2, z, tol, z_sig):
    """High side: larger than 1 + tol and significant; low side: below 1 - tol and significant."""
    with np.errstate(invalid="ignore"):
        hi = (chi2 > 1 + tol) & (z > z_sig)
        lo = (chi2 < 1 - tol) & (z < -z_sig)
    return np.nan_to_num(hi), np.nan_to_num(lo)


def flag_frames(chi2: np.ndarray | FrameChecks, *, chi2_z: np.ndarray | None = None, tol: float = 0.25,
                alpha: float = 1e-3, z_sig: float = 5.0) -> np.ndarray:
    """Frames whose denoised estimate departs from the raw counts more than Poisson noise allows.

    Given a :class:`FrameChecks`, a frame is flagged when the pixel, any block or the ring chi-square
    exceeds ``1 + tol`` at significance ``z_sig`` (structure, blurring, lost or invented features), when
    the pixel chi-square is below ``1 - tol`` at that significance (the output follows the noise), or when
    a single block or ring has a Bonferroni-adjusted Poisson tail probability below ``alpha`` (a removed or
    invented peak of a few pixels). Given only chi-square values, only the size test ``|chi2 - 1| > tol``
    is applied (and the significance test too when ``chi2_z`` is given).
    """
    if not isinstance(chi2, FrameChecks):
        c = np.asarray(chi2, dtype=np.float64)
        z = np.full_like(c, np.inf) if chi2_z is None else np.asarray(chi2_z, dtype=np.float64)
        hi, lo = _departs(c, np.where(c >= 1, np.abs(z), -np.abs(z)), tol, z_sig)
        return hi | lo
    fc = chi2
    hi, lo = _departs(fc.chi2, fc.chi2_z, tol, z_sig)
    flags = hi | lo
    groups = list(fc.block.values()) + ([fc.ring] if fc.ring is not None else [])
    for g in groups:
        ghi, _ = _departs(g["chi2"], g["chi2_z"], tol, z_sig)
        flags |= ghi | (g["p_min"] < alpha)
    return flags


def _reasons(fc: FrameChecks, i: int, tol: float, alpha: float, z_sig: float) -> list[str]:
    out = []
    hi, lo = _departs(fc.chi2[i : i + 1], fc.chi2_z[i : i + 1], tol, z_sig)
    if hi[0]:
        out.append(f"pixel chi2 {fc.chi2[i]:.3g} > {1 + tol:g} (z={fc.chi2_z[i]:.1f})")
    if lo[0]:
        out.append(f"pixel chi2 {fc.chi2[i]:.3g} < {1 - tol:g}: output follows the noise")
    named = [(f"{k}x{k} blocks", b) for k, b in fc.block.items()] + ([("rings", fc.ring)] if fc.ring else [])
    for name, g in named:
        ghi, _ = _departs(g["chi2"][i : i + 1], g["chi2_z"][i : i + 1], tol, z_sig)
        if ghi[0]:
            out.append(f"{name} chi2 {g['chi2'][i]:.3g} > {1 + tol:g} (z={g['chi2_z'][i]:.1f})")
        if g["p_min"][i] < alpha:
            out.append(f"one of the {name} departs (adjusted p={g['p_min'][i]:.2g})")
    return out


# --------------------------------------------------------------------------------------------------
# profiles
# --------------------------------------------------------------------------------------------------
def _radial_profile(img: np.ndarray, var: np.ndarray, valid: np.ndarray, center, nbins: int | None = None):
    yy, xx = np.indices(img.shape, dtype=np.float64)
    r = np.hypot(yy - float(center[0]), xx - float(center[1]))
    idx = np.floor(r).astype(np.int64)
    nb = int(idx.max()) + 1 if nbins is None else nbins
    idx = idx[valid]
    n = np.bincount(idx, minlength=nb)[:nb].astype(np.float64)
    s = np.bincount(idx, weights=img[valid], minlength=nb)[:nb]
    sv = np.bincount(idx, weights=var[valid], minlength=nb)[:nb]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, s / np.maximum(n, 1), np.nan)
        sig = np.where(n > 0, np.sqrt(sv) / np.maximum(n, 1), np.nan)
    return np.arange(nb) + 0.5, mean, sig, n


def profile_bias(raw: np.ndarray, denoised: np.ndarray, valid: np.ndarray | None = None, geometry=None,
                 center=None, *, alpha: float = 1e-3, rel_tol: float = 0.0,
                 frame_ndim: int | None = None) -> dict[str, Any]:
    """Compare the azimuthal profile of the denoised data with that of the raw counts (frames summed).

    The error of each bin is the Poisson error of the raw profile, computed from the denoised estimate
    of the variance (``Var = sum d`` over the bin's pixels, more stable than the raw counts at low dose).
    A bin is flagged when ``|diff| / sigma`` exceeds the two-sided Gaussian quantile of ``alpha`` divided
    by the number of bins (Bonferroni) and ``|diff| > rel_tol * |raw profile|``. With a pyFAI
    ``geometry`` (PONI dict) the profile is in 2-theta degrees through
    :func:`physics.geometry.azimuthal_profile`; with only a ``center`` it is in pixels of radius; with
    neither, 2D frames are projected onto the column axis (the sum over rows) and 1D frames compared
    channel by channel. Returns ``x, raw, denoised, diff, sigma, z, flagged`` (arrays), ``max_abs_z``,
    ``rel_error`` (sum |diff| / sum |raw|), ``n_flagged``, ``kind`` and ``unit``.
    """
    den = np.asarray(denoised)
    x, d, v = _as_frames(raw, den, valid, frame_ndim)
    frame_ndim = x.ndim - 1
    xs = (x * v).sum(0)
    ds = (d * v).sum(0)
    vv = v.any(0)
    kind, unit = "", ""
    if frame_ndim == 1:
        px, pr, pd_ = np.arange(xs.size, dtype=np.float64), np.where(vv, xs, np.nan), np.where(vv, ds, np.nan)
        sig = np.where(vv, np.sqrt(np.maximum(ds, EPS)), np.nan)
        kind, unit = "spectrum", "channel"
    elif geometry is not None and _geometry_ok(geometry, xs.shape):
        from .physics.geometry import azimuthal_profile

        # summed counts; the error of a bin is the integrator's Poisson error of the denoised sum
        # (the expected scatter of the raw profile if the estimate is right)
        px, pr, _ = azimuthal_profile(xs, vv, geometry=geometry, unit="2th_deg")
        _, pd_, sig = azimuthal_profile(ds, vv, geometry=geometry, unit="2th_deg")
        kind, unit = "azimuthal", "2theta_deg"
    elif center is not None:
        px, pr, _, _ = _radial_profile(xs, ds, vv, center)
        _, pd_, sig, _ = _radial_profile(ds, ds, vv, center)
        kind, unit = "radial", "pixel"
    else:
        pr = np.where(vv.any(0), xs.sum(0), np.nan)
        pd_ = np.where(vv.any(0), ds.sum(0), np.nan)
        sig = np.sqrt(np.maximum(pd_, EPS))
        px = np.arange(pr.size, dtype=np.float64)
        kind, unit = "column projection (no centre given)", "column"
    pr, pd_, sig = (np.asarray(a, dtype=np.float64) for a in (pr, pd_, sig))
    diff = pd_ - pr
    ok = np.isfinite(diff) & np.isfinite(sig) & (sig > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(ok, diff / np.where(ok, sig, 1.0), np.nan)
    nb = max(int(ok.sum()), 1)
    zthr = float(stats.norm.isf(alpha / (2 * nb)))
    with np.errstate(invalid="ignore"):
        flagged = ok & (np.abs(z) > zthr) & (np.abs(diff) > rel_tol * np.abs(pr))
    denom = np.nansum(np.abs(pr[ok]))
    return {
        "kind": kind,
        "unit": unit,
        "x": np.asarray(px, dtype=np.float64),
        "raw": pr,
        "denoised": pd_,
        "diff": diff,
        "sigma": sig,
        "z": z,
        "flagged": flagged,
        "z_threshold": zthr,
        "max_abs_z": float(np.nanmax(np.abs(z))) if ok.any() else math.nan,
        "rel_error": float(np.nansum(np.abs(diff[ok])) / denom) if denom > 0 else math.nan,
        "n_flagged": int(flagged.sum()),
    }


def _geometry_ok(geometry: Any, shape: tuple[int, ...]) -> bool:
    """True if pyFAI can integrate a frame of ``shape`` with ``geometry`` (else the centre/projection is used)."""
    from .physics.geometry import azimuthal_profile

    try:
        azimuthal_profile(np.zeros(shape), None, geometry=geometry, unit="2th_deg", npt=8)
    except XRDError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# no-reference score
# --------------------------------------------------------------------------------------------------
def _as_denoiser(model_or_method: Any, frame_ndim: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A function ``(counts (N, *frame), valid) -> counts`` from a callable, a model or a baseline name."""
    if isinstance(model_or_method, str):
        from . import baselines

        return lambda c, v: baselines.apply(model_or_method, c, v)
    if hasattr(model_or_method, "config") and not callable(model_or_method):
        model = model_or_method

        def run(c: np.ndarray, v: np.ndarray) -> np.ndarray:
            from .inference import predict_stack
            from .io.stack import ScanStack

            stack = ScanStack.from_array(np.where(v, c, np.nan).astype(np.float32), frame_ndim=frame_ndim)
            return np.asarray(predict_stack(model, stack), dtype=np.float64)

        return run
    if callable(model_or_method):
        return model_or_method
    raise XRDError(f"qc: cannot use a {type(model_or_method).__name__} as a denoiser")


def _grid_phase_masks(frame_shape: tuple[int, ...], width: int):
    grids = np.indices(frame_shape)
    for i in range(width ** len(frame_shape)):
        m = np.ones(frame_shape, dtype=bool)
        q = i
        for g in grids:
            m &= (g % width) == (q % width)
            q //= width
        yield m


def _interp_neighbours(c: np.ndarray, v: np.ndarray, hide: np.ndarray) -> np.ndarray:
    """Replace hidden pixels by the valid-weighted mean of their neighbours (frame axes)."""
    nd = hide.ndim
    k = np.ones((3,) * nd)
    k[(1,) * nd] = 0
    k = k.reshape((1,) + k.shape)
    w = (v & ~hide[None]).astype(np.float64)
    num = ndimage.convolve(np.where(w > 0, c, 0.0), k, mode="mirror")
    den = ndimage.convolve(w, k, mode="mirror")
    fill = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)
    return np.where(hide[None], fill, c)


def _expected_anscombe(lam: np.ndarray) -> np.ndarray:
    """E[2 sqrt(x + 3/8)] for x ~ Poisson(lam): the exact forward map of the unbiased inverse."""
    from .physics.vst import _closed_form, _table

    e, grid = _table(0.0)
    lam = np.maximum(np.asarray(lam, dtype=np.float64), 0.0)
    out = np.interp(lam, grid, e)
    hi = lam > grid[-1]
    if np.any(hi):  # invert the closed form by Newton (monotone; start at the algebraic value)
        t = 2 * np.sqrt(lam[hi] + 0.375)
        for _ in range(6):
            f = _closed_form(t) - lam[hi]
            h = 1e-4 * t
            t = t - f / ((_closed_form(t + h) - _closed_form(t - h)) / (2 * h))
        out[hi] = t
    return out


def noreference_score(model_or_method: Any, stack: Any, valid: np.ndarray | None = None, *, mode: str = "split",
                      p: float = 0.5, scale: bool = True, width: int = 4, seed: int = 0,
                      max_frames: int = 16, frame_ndim: int | None = None) -> dict[str, Any]:
    """Held-out self-supervised loss of a denoiser, computed from the noisy data alone (lower is better).

    ``model_or_method``: a function ``(counts (N, *frame), valid) -> counts``, a trained model (run
    through :func:`inference.predict_stack`) or a baseline name (:mod:`baselines`). ``stack``: a
    :class:`ScanStack` or an array of counts (frame axes last); at most ``max_frames`` evenly spaced
    frames are used.

    ``mode="split"`` (any denoiser): every frame is split binomially into independent halves ``a``
    (probability ``p``) and ``b``. The denoiser sees ``a`` (divided by ``p`` when ``scale``, so it sees
    the original intensity level, with noise ``1/p`` times too large in variance) and its output,
    brought to the dose of ``b`` (times ``(1-p)/p``, or times ``1-p`` when scaled), is scored against
    ``b`` by the mean Poisson deviance per valid pixel ``2 [b log(b/m) - (b - m)]``. Because ``b`` is
    independent of ``a``, its expectation is the deviance of the estimate from the true mean plus a term
    that does not depend on the denoiser: it ranks denoisers by their error at dose ``p`` (not at the full
    dose), and cannot be gamed by copying noise.

    ``mode="jinv"`` (Noise2Self): pixels are hidden on a ``width``-periodic grid (one phase at a time,
    hidden pixels replaced by the mean of their valid neighbours), the denoiser runs on each masked
    input, and its output at the hidden pixels is compared with the raw counts there by the MSE on the
    Anscombe scale (the estimate is mapped with the exact expectation ``E[2 sqrt(x+3/8)]``). This is the
    self-supervised loss of the J-invariant version of the denoiser: the true error plus the noise
    variance (about 1, less at very low counts). It costs ``width**2`` denoiser runs.
    """
    from .io.stack import ScanStack, spread_indices

    if isinstance(stack, ScanStack):
        n = stack.n_frames
        idx = spread_indices(n, max_frames)
        raw = np.stack([stack.frame(int(i)) for i in idx])
        c, v = stack.counts(raw)
        fnd = stack.frame_ndim
        c = c.astype(np.float64)
        if valid is not None:
            v &= np.broadcast_to(np.asarray(valid, bool), v.shape[-fnd:])
    else:
        from .physics.masks import valid_from_raw

        arr = np.asarray(stack)
        fnd = frame_ndim or (1 if arr.ndim == 1 else 2)
        v = valid_from_raw(arr)
        if valid is not None:
            v &= np.broadcast_to(np.asarray(valid, bool), arr.shape)
        frame = arr.shape[arr.ndim - fnd:]
        c = np.where(v, arr, 0).astype(np.float64).reshape((-1,) + frame)
        v = v.reshape((-1,) + frame)
        n = c.shape[0]
        idx = spread_indices(n, max_frames)
        c, v = c[idx], v[idx]
    f = _as_denoiser(model_or_method, fnd)
    if mode == "split":
        from .physics.binomial import split

        a, b = split(np.where(v, c, 0), p=p, rng=seed)
        a, b = a.astype(np.float64), b.astype(np.float64)
        if scale:
            m = np.asarray(f(a / p, v), dtype=np.float64) * (1 - p)
        else:
            m = np.asarray(f(a, v), dtype=np.float64) * (1 - p) / p
        ok = v & np.isfinite(m)
        m = np.maximum(m, 1e-6)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = 2 * (np.where(b > 0, b * np.log(b / m), 0.0) - (b - m))
        score = float(dev[ok].mean()) if ok.any() else math.nan
        return {"mode": "split", "score": score, "metric": "mean Poisson deviance per pixel of the held-out half",
                "p": p, "scaled_input": scale, "frames": idx.tolist(), "n_pixels": int(ok.sum())}
    if mode == "jinv":
        from .physics.vst import anscombe

        out = np.full(c.shape, np.nan)
        for hide in _grid_phase_masks(c.shape[1:], width):
            xin = _interp_neighbours(c, v, hide)
            den = np.asarray(f(xin.astype(np.float32), v), dtype=np.float64)
            sel = np.broadcast_to(hide, c.shape)
            out[sel] = den[sel]
        ok = v & np.isfinite(out)
        err = (_expected_anscombe(np.where(ok, out, 0)) - anscombe(c).astype(np.float64)) ** 2
        score = float(err[ok].mean()) if ok.any() else math.nan
        return {"mode": "jinv", "score": score, "metric": "MSE on the Anscombe scale at hidden pixels (J-invariant)",
                "width": width, "frames": idx.tolist(), "n_pixels": int(ok.sum())}
    raise XRDError(f"qc: mode={mode!r} is not one of: split, jinv")


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def _source(raw_src: Any, frame_ndim: int | None = None):
    """``(frame_ndim, n_frames, frame_shape, read(a, b), valid_of(raw))`` of a ScanStack or an array."""
    from .io.stack import ScanStack

    if isinstance(raw_src, ScanStack):
        return raw_src.frame_ndim, raw_src.n_frames, raw_src.frame_shape, raw_src.frames, raw_src.valid
    from .physics.masks import valid_from_raw

    arr = np.asarray(raw_src)
    fnd = frame_ndim or (1 if arr.ndim == 1 else 2)
    frame = tuple(arr.shape[arr.ndim - fnd:])
    n = int(np.prod(arr.shape[: arr.ndim - fnd], dtype=np.int64)) if arr.ndim > fnd else 1
    flat = arr.reshape((n,) + frame)
    return fnd, n, frame, (lambda a, b: flat[a:b]), valid_from_raw


def _iter_chunks(raw_src: Any, denoised: Any, valid: Any, chunk: int, start: int = 0, stop: int | None = None,
                 frame_ndim: int | None = None):
    """Yield ``(start, x, d, v, frame_ndim, n_frames, frame_shape)`` for chunks of frames (float64)."""
    fnd, n, frame, read, valid_of = _source(raw_src, frame_ndim)
    if not hasattr(denoised, "reshape"):
        denoised = np.asarray(denoised)
    dshape = tuple(denoised.shape)
    if int(np.prod(dshape)) != n * int(np.prod(frame)) or dshape[len(dshape) - fnd:] != frame:
        raise XRDError(f"qc: denoised shape {dshape} does not match {n} frames of shape {frame}")
    dflat = denoised.reshape((n,) + frame)
    vflat = None
    if valid is not None:
        if not hasattr(valid, "reshape"):
            valid = np.asarray(valid)
        vshape = tuple(valid.shape)
        if vshape == frame:
            vflat = np.asarray(valid, dtype=bool)
        elif int(np.prod(vshape)) == n * int(np.prod(frame)):
            vflat = valid.reshape((n,) + frame)
        else:
            raise XRDError(f"qc: validity mask shape {vshape} fits neither the frame {frame} nor the data")
    stop = n if stop is None else min(n, stop)
    for a in range(start, stop, chunk):
        b = min(stop, a + chunk)
        r = np.asarray(read(a, b))
        d = np.asarray(dflat[a:b], dtype=np.float64)
        v = np.asarray(valid_of(r), dtype=bool) & np.isfinite(d)
        if vflat is not None:
            v &= vflat if vflat.shape == frame else np.asarray(vflat[a:b], dtype=bool)
        x = np.where(v, r, 0).astype(np.float64)
        yield a, x, np.where(v, np.maximum(d, 0.0), 0.0), v, fnd, n, frame


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o


HIST_EDGES = np.linspace(-6, 6, 121)


def compute_report(raw_stack_or_array: Any, denoised: Any, valid: Any = None, geometry=None, center=None, *,
                   chunk: int = 16, tol: float = 0.25, alpha: float = 1e-3,
                   frame_ndim: int | None = None) -> dict[str, Any]:
    """All QC numbers of a denoised result, streamed over frames (nothing larger than ``chunk`` frames)."""
    hist = np.zeros(HIST_EDGES.size - 1)
    below = above = 0
    s1 = s2 = s3 = 0.0
    nres = 0
    parts: list[FrameChecks] = []
    xs_sum = ds_sum = vcount = None
    fnd = 2
    for a, x, d, v, fnd, n, frame in _iter_chunks(raw_stack_or_array, denoised, valid, chunk,
                                                          frame_ndim=frame_ndim):
        rv = (x[v] - d[v]) / np.sqrt(np.maximum(d[v], EPS))
        lo, step = HIST_EDGES[0], HIST_EDGES[1] - HIST_EDGES[0]
        bins = np.floor((rv - lo) / step)
        inside = (bins >= 0) & (bins < hist.size)
        hist += np.bincount(bins[inside].astype(np.int64), minlength=hist.size)[: hist.size]
        below += int((rv < lo).sum())
        above += int((rv >= HIST_EDGES[-1]).sum())
        rv2 = rv * rv
        s1, s2, s3, nres = s1 + rv.sum(), s2 + rv2.sum(), s3 + (rv2 * rv).sum(), nres + rv.size
        parts.append(_checks_from_frames(x, d, v, blocks=(2, 4, 8), center=center if fnd == 2 else None,
                                         eps=EPS, rel_tol=0.05))
        xs = (x * v).sum(0)
        ds = (d * v).sum(0)
        vc = v.sum(0)
        xs_sum = xs if xs_sum is None else xs_sum + xs
        ds_sum = ds if ds_sum is None else ds_sum + ds
        vcount = vc if vcount is None else vcount + vc
    fc = _concat_checks(parts)
    flags = flag_frames(fc, tol=tol, alpha=alpha)
    mean = s1 / max(nres, 1)
    var = s2 / max(nres, 1) - mean**2
    skew = (s3 / max(nres, 1) - 3 * mean * var - mean**3) / var**1.5 if var > 0 else math.nan
    vany = vcount > 0
    prof = profile_bias(np.where(vany, xs_sum, 0)[None], np.where(vany, ds_sum, np.nan)[None], vany,
                        geometry=geometry, center=center, alpha=alpha, frame_ndim=fnd)
    worst = _worst_frame(fc)
    return {
        "n_frames": int(fc.chi2.size),
        "frame_shape": list(frame),
        "residuals": {"mean": mean, "var": var, "skew": skew, "n": int(nres),
                      "hist_edges": HIST_EDGES, "hist_counts": hist, "below": below, "above": above},
        "frames": fc.to_dict(),
        "flags": flags,
        "flagged_frames": np.nonzero(flags)[0],
        "flag_reasons": {int(i): fc.reasons(int(i), tol=tol, alpha=alpha) for i in np.nonzero(flags)[0][:200]},
        "worst_frame": worst,
        "thresholds": {"tol": tol, "alpha": alpha, "z_sig": 5.0, "eps": EPS, "rel_tol_blocks": 0.05},
        "profile": prof,
        "center": None if center is None else [float(c) for c in center],
        "frame_ndim": fnd,
    }


def _worst_frame(fc: FrameChecks) -> int:
    """The frame that departs most: the largest z of any chi-square or of the smallest tail probability."""
    zs = [fc.chi2_z]
    for g in list(fc.block.values()) + ([fc.ring] if fc.ring is not None else []):
        zs += [g["chi2_z"], stats.norm.isf(np.clip(g["p_min"], 1e-300, 1.0))]
    score = np.nanmax(np.nan_to_num(np.vstack(zs), nan=-np.inf), axis=0)
    return int(np.argmax(score)) if score.size else 0


def _concat_checks(parts: list[FrameChecks]) -> FrameChecks:
    cat = np.concatenate
    fc = FrameChecks(chi2=cat([p.chi2 for p in parts]), chi2_z=cat([p.chi2_z for p in parts]),
                     n_valid=cat([p.n_valid for p in parts]))
    for k in parts[0].block:
        fc.block[k] = {key: cat([p.block[k][key] for p in parts]) for key in parts[0].block[k]}
    if parts[0].ring is not None:
        fc.ring = {key: cat([p.ring[key] for p in parts]) for key in parts[0].ring}
    return fc


def _worst_residual_image(raw_src: Any, denoised: Any, valid: Any, index: int,
                          frame_ndim: int | None = None) -> np.ndarray:
    for _, x, d, v, *_ in _iter_chunks(raw_src, denoised, valid, 1, start=index, stop=index + 1,
                                       frame_ndim=frame_ndim):
        return np.where(v, (x - d) / np.sqrt(np.maximum(d, EPS)), np.nan)[0]
    raise XRDError(f"qc: frame {index} not found")


def _plot(report: dict[str, Any], resid_img: np.ndarray, png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, 2)
    res = report["residuals"]
    edges, counts = res["hist_edges"], res["hist_counts"]
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    total = max(res["n"], 1)
    dens = np.where(counts > 0, counts / (total * width), np.nan)
    ax[0, 0].semilogy(centres, dens, drawstyle="steps-mid", label="residuals")
    ax[0, 0].semilogy(centres, stats.norm.pdf(centres), "k--", label="N(0,1)")
    ax[0, 0].set_ylim(1e-6, 1)
    ax[0, 0].set_xlabel("Pearson residual (raw - denoised)/sqrt(denoised)")
    ax[0, 0].set_title(f"residuals: mean {res['mean']:.3f}, var {res['var']:.3f}")
    ax[0, 0].legend()
    fr = report["frames"]
    i = np.arange(len(fr["chi2"]))
    ax[0, 1].plot(i, fr["chi2"], ".-", label="pixel chi2")
    for k in (2, 4, 8):
        if f"block{k}" in fr:
            ax[0, 1].plot(i, fr[f"block{k}"]["chi2"], ".", ms=3, label=f"{k}x{k} block chi2")
    if "ring" in fr:
        ax[0, 1].plot(i, fr["ring"]["chi2"], ".", ms=3, label="ring chi2")
    tol = report["thresholds"]["tol"]
    ax[0, 1].axhline(1 + tol, color="r", ls=":", label=f"1 +/- {tol:g}")
    ax[0, 1].axhline(1 - tol, color="r", ls=":")
    fl = np.asarray(report["flags"], dtype=bool)
    if fl.any():
        ax[0, 1].plot(i[fl], np.asarray(fr["chi2"])[fl], "rx", ms=9, label="flagged")
    ax[0, 1].set_yscale("log")
    ax[0, 1].set_xlabel("frame")
    ax[0, 1].set_title(f"reduced chi-square per frame ({int(fl.sum())} flagged)")
    ax[0, 1].legend(fontsize=7)
    pr = report["profile"]
    ax[1, 0].plot(pr["x"], pr["raw"], label="raw", lw=1)
    ax[1, 0].plot(pr["x"], pr["denoised"], label="denoised", lw=1)
    f = np.asarray(pr["flagged"], dtype=bool)
    if f.any():
        ax[1, 0].plot(np.asarray(pr["x"])[f], np.asarray(pr["denoised"])[f], "rx", label="flagged bins")
    ax[1, 0].set_xlabel(pr["unit"])
    ax[1, 0].set_title(f"{pr['kind']} profile: rel. error {pr['rel_error']:.3g}, max |z| {pr['max_abs_z']:.3g}")
    ax[1, 0].legend()
    if resid_img.ndim == 2:
        im = ax[1, 1].imshow(resid_img, cmap="RdBu_r", vmin=-4, vmax=4, interpolation="nearest", aspect="auto")
        fig.colorbar(im, ax=ax[1, 1], shrink=0.8)
    else:
        ax[1, 1].plot(resid_img, lw=0.7)
        ax[1, 1].set_ylim(-6, 6)
    ax[1, 1].set_title(f"residuals of the worst frame ({report['worst_frame']})")
    fig.savefig(png, dpi=90)


def write_report(raw_stack_or_array: Any, denoised: Any, valid: Any, out_base: Path, geometry=None,
                 center=None, *, frame_ndim: int | None = None) -> tuple[Path, Path]:
    """Write ``OUT.qc.json`` (every number) and ``OUT.qc.png`` (residual histogram vs N(0,1), chi-square
    per frame, profile comparison, residual image of the worst frame) next to ``out_base``.

    ``raw_stack_or_array``: the raw ScanStack, or raw counts (frame axes last; ``frame_ndim`` says how
    many, default 2 unless 1-D). ``denoised``: counts of the same shape (NaN = invalid). ``valid``: a
    frame-shaped or full-shaped validity mask, or None.
    """
    from .io.atomic import atomic_path

    out_base = Path(out_base)
    json_path = out_base.with_name(out_base.name + ".qc.json")
    png_path = out_base.with_name(out_base.name + ".qc.png")
    if not out_base.parent.exists():
        raise XRDError(f"{out_base.parent}: output folder does not exist")
    rep = compute_report(raw_stack_or_array, denoised, valid, geometry=geometry, center=center,
                         frame_ndim=frame_ndim)
    rimg = _worst_residual_image(raw_stack_or_array, denoised, valid, rep["worst_frame"], frame_ndim=frame_ndim)
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(_jsonable(rep), indent=1))
    with atomic_path(png_path) as tmp:
        _plot(rep, rimg, tmp.with_suffix(".png"))
        tmp.with_suffix(".png").replace(tmp)
    for p in (json_path, png_path):  # temporary files are created private; reports are for sharing
        os.chmod(p, 0o644)
    return json_path, png_path
