"""Friedel (180-degree) and mirror symmetry of diffraction patterns about a sub-pixel beam centre.

A powder, SAXS or flat-Ewald-sphere electron pattern is (nearly) centrosymmetric about the direct
beam: the intensity at ``p`` equals the intensity at its Friedel partner ``p' = 2c - p``. Two pixels
that are partners carry independent counting noise, so the partner image is a second noisy copy of
the same signal (Noise2Noise from one frame). Fibre / textured patterns may instead be symmetric
about a line through the centre (mirror).

Coordinates are ``(y, x)`` = (row, column) in pixels, pixel centres at integers. The centre may be
anywhere in (or outside) the frame and need not be an integer or half-integer: partner values are
interpolated linearly, and a partner is valid only where every pixel that enters its interpolation
is valid and inside the frame. Validity is never derived from the counts (a valid zero count is a
measurement, not a gap).

The mirror line passes through the centre at ``angle_deg`` measured from the detector x (column)
axis towards +y (rows): 0 = horizontal line (up/down flip), 90 = vertical line (left/right flip).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

KINDS = ("friedel", "mirror")

#: Below this score a pattern is not trusted to be symmetric enough for the symmetry method.
#: The score (:func:`symmetry_score`) is the correlation of the square-root pattern with its partner;
#: r = 0.5 means only a quarter of the pattern's variance is shared with its partner (r**2), so a
#: network trained to predict the partner would mostly learn the asymmetric part. On synthetic ring
#: patterns of 64x72 pixels with 1-2 pixel wide rings (tests/test_symmetry.py) a symmetric pattern
#: scores 0.97-1.0 from 0.5 counts per pixel upwards, while a centre 3 or 6 pixels off scores below
#: 0.47 and a one-sided (single-crystal-like) pattern below 0; at 0.15 counts per pixel a 64x72 frame
#: is too noisy for a reliable score, so the method scores the sum of several frames of the scan
#: (frames of one scan share the beam centre, so their sum keeps the symmetry).
SYMMETRY_WARN = 0.5

_SNAP = 1e-6  # partner coordinates this close to an integer are taken as that integer


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"symmetry kind {kind!r} is not one of: {', '.join(KINDS)}")


def _line_vectors(angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit direction ``d`` of the mirror line and its normal ``n``, both as ``(y, x)``."""
    t = math.radians(float(angle_deg))
    d = np.array([math.sin(t), math.cos(t)])
    n = np.array([math.cos(t), -math.sin(t)])
    return d, n


def transform_points(
    y: np.ndarray, x: np.ndarray, center: tuple[float, float], kind: str = "friedel", angle_deg: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Partner coordinates of points ``(y, x)`` (float arrays of any shape)."""
    _check_kind(kind)
    cy, cx = float(center[0]), float(center[1])
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    if kind == "friedel":
        py, px = 2.0 * cy - y, 2.0 * cx - x
    else:
        _, n = _line_vectors(angle_deg)
        vy, vx = y - cy, x - cx
        s = 2.0 * (vy * n[0] + vx * n[1])  # reflection: v - 2 (v.n) n
        py, px = y - s * n[0], x - s * n[1]
    # snap round-off so that an exact pixel partner uses one pixel only
    ry, rx = np.rint(py), np.rint(px)
    py = np.where(np.abs(py - ry) < _SNAP, ry, py)
    px = np.where(np.abs(px - rx) < _SNAP, rx, px)
    return py, px


def partner_coords(
    shape: tuple[int, int], center: tuple[float, float], kind: str = "friedel", angle_deg: float = 0.0
) -> np.ndarray:
    """``(2, H, W)`` array: the (y, x) coordinates of every pixel's partner."""
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    py, px = transform_points(yy, xx, center, kind, angle_deg)
    return np.stack([py, px])


def _sample(
    image: np.ndarray, invalid: np.ndarray, py: np.ndarray, px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of ``image`` at ``(py, px)`` and whether all their support pixels are valid."""
    h, w = image.shape
    inside = (py >= 0) & (py <= h - 1) & (px >= 0) & (px <= w - 1)
    coords = np.stack([np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)])
    vals = ndimage.map_coordinates(image, coords, order=1, mode="nearest")
    bad = ndimage.map_coordinates(invalid, coords, order=1, mode="nearest")
    ok = inside & (bad < 1e-9)
    return np.where(ok, vals, 0.0), ok


def partner_image(
    frame: np.ndarray,
    valid: np.ndarray | None,
    center: tuple[float, float],
    kind: str = "friedel",
    angle_deg: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The partner image and its validity.

    ``partner[p]`` is ``frame`` linearly interpolated at the partner of ``p``; ``partner_valid[p]``
    is True only where every interpolation support pixel (weight > 0) is valid and inside the frame.
    Invalid partners are 0 in ``partner``. Non-finite pixels of ``frame`` count as invalid.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"partner_image needs a 2-D frame, got shape {frame.shape}")
    f = frame.astype(np.float64)
    v = np.isfinite(f) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(f))
    f = np.where(v, f, 0.0)
    c = partner_coords(f.shape, center, kind, angle_deg)
    vals, ok = _sample(f, (~v).astype(np.float64), c[0], c[1])
    return vals.astype(np.float32), ok


INTERPOLATIONS = ("linear", "cubic", "lanczos3")


def _taps(kind: str) -> int:
    return {"linear": 2, "cubic": 4, "lanczos3": 6}[kind]


def _kernel_1d(t: np.ndarray, kind: str) -> np.ndarray:
    """Interpolation weights at distances ``t`` (pixels) from a sample; 1 at 0 and 0 at other integers."""
    a = np.abs(t)
    if kind == "linear":
        return np.clip(1.0 - a, 0.0, None)
    if kind == "cubic":  # Keys' cubic convolution, a = -1/2 (exact for quadratics)
        return np.where(
            a <= 1.0, 1.5 * a**3 - 2.5 * a**2 + 1.0, np.where(a < 2.0, -0.5 * a**3 + 2.5 * a**2 - 4.0 * a + 2.0, 0.0)
        )
    if kind == "lanczos3":
        return np.where(a < 3.0, np.sinc(t) * np.sinc(t / 3.0), 0.0)
    raise ValueError(f"interpolation {kind!r} is not one of: {', '.join(INTERPOLATIONS)}")


def _weights_1d(pos: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """``(first_tap, weights)``: taps ``first_tap + k`` for ``k < taps`` and their weights (rows sum to 1)."""
    n = _taps(kind)
    base = np.floor(pos).astype(np.int64)
    first = base - (n // 2 - 1)
    k = np.arange(n)
    d = pos[:, None] - (first[:, None] + k[None, :])
    w = _kernel_1d(d, kind)
    w[np.abs(w) < 1e-12] = 0.0
    w /= w.sum(axis=1, keepdims=True)  # lanczos weights do not sum to exactly 1
    return first, w


class PartnerOperator:
    """The partner interpolation of :func:`partner_image` precomputed for one frame shape and centre.

    Applying it is a few gathers (no coordinate arithmetic), so a method can build the partner of
    every training frame cheaply. With ``interp="linear"`` it gives the same values and validity as
    :func:`partner_image`. ``"cubic"`` (Keys) and ``"lanczos3"`` use 4x4 and 6x6 pixel supports.

    Why the order matters for training. The partner value is an *estimate* of the intensity at the
    pixel's own position, and its expected value is the interpolation of the true means at the partner
    position. Bilinear interpolation at a fractional offset ``f`` attenuates detail (at half the
    Nyquist frequency by up to ``cos(pi/4) = 0.71`` for ``f = 1/2``): a Noise2Noise target that is a
    blurred copy of the signal teaches the network a blurred estimate. Sharper kernels pass far more
    of the band (Keys cubic at ``f = 1/2``: 0.94 at half-Nyquist), at the price of a larger support,
    so a few more pixels next to gaps lose their partner. Where the partner falls on a pixel
    (integer offset, e.g. a centre on the half-pixel grid for Friedel pairs) every kernel uses that
    one pixel and the target is exact.

    A partner is valid where every support pixel with a non-zero weight is valid and inside the frame.
    """

    def __init__(self, shape: tuple[int, int], center: tuple[float, float], kind: str = "friedel",
                 angle_deg: float = 0.0, interp: str = "linear"):
        if interp not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interp!r} is not one of: {', '.join(INTERPOLATIONS)}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.center = (float(center[0]), float(center[1]))
        self.kind, self.angle_deg, self.interp = kind, float(angle_deg), interp
        h, w = self.shape
        py, px = partner_coords(self.shape, self.center, kind, angle_deg)
        inside = (py >= 0) & (py <= h - 1) & (px >= 0) & (px <= w - 1)
        self.inside = inside
        self.where = np.flatnonzero(inside)
        py, px = py.ravel()[self.where], px.ravel()[self.where]
        fy, wy = _weights_1d(py, interp)
        fx, wx = _weights_1d(px, interp)
        n = _taps(interp)
        yy = fy[:, None] + np.arange(n)[None, :]  # (N, n)
        xx = fx[:, None] + np.arange(n)[None, :]
        wts = (wy[:, :, None] * wx[:, None, :]).reshape(len(py), n * n)
        ys = np.repeat(yy, n, axis=1)
        xs = np.tile(xx, (1, n))
        used = wts != 0
        out_of_frame = (ys < 0) | (ys >= h) | (xs < 0) | (xs >= w)
        self.outside = np.any(used & out_of_frame, axis=1)
        idx = np.clip(ys, 0, h - 1) * w + np.clip(xs, 0, w - 1)
        keep = used.any(axis=0)  # drop taps that no pixel uses (integer offsets: one tap)
        self.idx = idx[:, keep].T.copy()
        self.wts = np.where(used, wts, 0.0)[:, keep].T.copy()
        self.used = used[:, keep].T.copy()

    def __call__(self, frame: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(partner, partner_valid)`` of a frame of the operator's shape (float32, bool)."""
        f = np.asarray(frame, dtype=np.float64)
        if f.shape != self.shape:
            raise ValueError(f"frame shape {f.shape} does not match the partner operator's {self.shape}")
        v = np.isfinite(f) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(f))
        ff = np.where(v, f, 0.0).ravel()
        vv = v.ravel()
        vals = (self.wts * ff[self.idx]).sum(axis=0)
        ok = np.all(vv[self.idx] | ~self.used, axis=0) & ~self.outside
        out = np.zeros(f.size, dtype=np.float64)
        pv = np.zeros(f.size, dtype=bool)
        out[self.where] = np.where(ok, vals, 0.0)
        pv[self.where] = ok
        return out.reshape(self.shape).astype(np.float32), pv.reshape(self.shape)


def guard_mask(
    shape: tuple[int, int], center: tuple[float, float], guard: float, kind: str = "friedel", angle_deg: float = 0.0
) -> np.ndarray:
    """True outside the guard zone: farther than ``guard`` from the centre (Friedel) or the line (mirror).

    A pixel closer than one pixel to its own partner would be interpolated partly from itself, so the
    guard is never smaller than 1 pixel (a pixel at distance ``r`` from the centre is ``2r`` from its
    Friedel partner; a pixel at distance ``r`` from the mirror line is ``2r`` from its mirror partner).
    """
    _check_kind(kind)
    g = max(float(guard), 1.0)
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    vy, vx = yy - float(center[0]), xx - float(center[1])
    if kind == "friedel":
        return (vy * vy + vx * vx) >= g * g
    _, n = _line_vectors(angle_deg)
    return np.abs(vy * n[0] + vx * n[1]) >= g


def common_valid(
    valid: np.ndarray,
    partner_valid: np.ndarray,
    center: tuple[float, float],
    guard: float = 3.0,
    kind: str = "friedel",
    angle_deg: float = 0.0,
) -> np.ndarray:
    """Pixels usable for a symmetry pair: valid, partner valid, and outside the guard zone.

    Built from validity only: a valid pixel with zero counts is kept (the founding method's
    ``left * right > 0`` dropped every zero count, which depends on the noise and biases low doses).
    """
    valid = np.asarray(valid, dtype=bool)
    return valid & np.asarray(partner_valid, dtype=bool) & guard_mask(valid.shape, center, guard, kind, angle_deg)


# --------------------------------------------------------------------------------------------------
# Symmetry score
# --------------------------------------------------------------------------------------------------
def _root_smoothed(frame: np.ndarray, valid: np.ndarray | None, smooth: float) -> tuple[np.ndarray, np.ndarray]:
    """Square-root pattern, smoothed by a validity-normalised Gaussian of ``smooth`` pixels."""
    f = np.asarray(frame, dtype=np.float64)
    v = np.isfinite(f) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(f))
    s = np.sqrt(np.maximum(np.where(v, f, 0.0), 0.0))
    if smooth > 0:
        num = ndimage.gaussian_filter(s * v, smooth, mode="constant")
        den = ndimage.gaussian_filter(v.astype(np.float64), smooth, mode="constant")
        s = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0.0)
    return np.where(v, s, 0.0), v


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 10:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if den <= 0:
        return float("nan")
    return float((a * b).sum() / den)


def _is_counts(frame: np.ndarray, valid: np.ndarray) -> bool:
    f = np.asarray(frame)
    if f.dtype.kind in "iu":
        return bool(np.all(f[valid] >= 0))
    vals = f[valid]
    return bool(vals.size and np.all(vals >= 0) and np.all(vals == np.round(vals)))


def symmetry_score(
    frame: np.ndarray,
    valid: np.ndarray | None,
    center: tuple[float, float],
    kind: str = "friedel",
    angle_deg: float = 0.0,
    *,
    guard: float = 3.0,
    smooth: float = 1.0,
    corrected: bool | str = "auto",
    splits: int = 4,
    seed: int = 0,
) -> float:
    """Correlation of the square-root pattern with its partner over the common valid pixels.

    The square root makes Poisson noise about uniform across decades of intensity; ``smooth`` (pixels,
    Gaussian, validity-normalised) averages away part of the counting noise. 1 = perfectly symmetric;
    NaN when fewer than 10 common pixels or a flat pattern.

    ``corrected`` (default for integer counts): counting noise lowers a plain correlation even for a
    perfectly symmetric pattern (about 0.45 at 0.5 counts per pixel). The frame is then split
    binomially into two independent halves ``a``, ``b`` (:func:`physics.binomial.split`) and the
    correlation of the *signals* is estimated free of noise as
    ``cov(a, P b) / sqrt(cov(a, b) cov(P a, P b))`` (``P`` = partner; covariances over pixels; the
    noise of two independent halves does not correlate), averaged over ``splits`` splits and clipped
    to [-1, 1]. Otherwise the plain Pearson correlation of the smoothed square root is returned.
    """
    f = np.asarray(frame)
    v = np.isfinite(f.astype(np.float64)) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(f))
    if corrected == "auto":
        corrected = _is_counts(f, v)
    if not corrected:
        s, v = _root_smoothed(f, v, smooth)
        p, pv = partner_image(s, v, center, kind, angle_deg)
        m = common_valid(v, pv, center, guard, kind, angle_deg)
        return _pearson(s[m], p[m].astype(np.float64))
    from .binomial import split

    rng = np.random.default_rng(seed)
    g = guard_mask(v.shape, center, guard, kind, angle_deg)
    num = den_a = den_p = 0.0
    m = None
    for _ in range(max(1, int(splits))):
        a, b = split(np.where(v, f, 0), 0.5, rng)
        sa, _ = _root_smoothed(a, v, smooth)
        sb, _ = _root_smoothed(b, v, smooth)
        pa, pv = partner_image(sa, v, center, kind, angle_deg)
        pb, _ = partner_image(sb, v, center, kind, angle_deg)
        m = v & pv & g
        if m.sum() < 10:
            return float("nan")
        xa, xb = sa[m] - sa[m].mean(), sb[m] - sb[m].mean()
        ya, yb = pa[m] - pa[m].mean(), pb[m] - pb[m].mean()
        num += 0.5 * float((xa * yb).mean() + (xb * ya).mean())
        den_a += float((xa * xb).mean())
        den_p += float((ya * yb).mean())
    if den_a <= 0 or den_p <= 0:
        return float("nan")
    return float(np.clip(num / math.sqrt(den_a * den_p), -1.0, 1.0))


def symmetry_warning(
    score: float, center: tuple[float, float], kind: str = "friedel", threshold: float = SYMMETRY_WARN
) -> str | None:
    """A one-line warning when ``score`` is below ``threshold`` (or undefined), else None."""
    where = f"({float(center[0]):.2f}, {float(center[1]):.2f})"
    if not np.isfinite(score):
        return (
            f"symmetry score about centre {where} is undefined (too few common valid pixels or a flat "
            f"pattern): check method.center / the mask before trusting --method symmetry"
        )
    if score < threshold:
        return (
            f"{kind} symmetry score {score:.2f} about centre {where} is below {threshold:.2f}: the pattern "
            f"is not symmetric about this centre; check method.center (--center / --poni) or use another method"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Centre refinement
# --------------------------------------------------------------------------------------------------
def refine_center(
    frame: np.ndarray,
    valid: np.ndarray | None,
    guess: tuple[float, float],
    radius: float = 5.0,
    kind: str = "friedel",
    angle_deg: float = 0.0,
    *,
    guard: float = 3.0,
    smooth: float = 1.0,
    max_points: int = 60000,
    seed: int = 0,
) -> tuple[tuple[float, float], float]:
    """Sub-pixel centre within ``radius`` of ``guess`` that maximises the symmetry score.

    A grid search (0.5-pixel steps) followed by Nelder-Mead, evaluated on at most ``max_points``
    valid pixels drawn once (deterministic for a given ``seed``). For a mirror only the position
    across the line matters, so the search is one-dimensional along the line's normal.
    Returns ``((cy, cx), score)`` with the score computed on all pixels by :func:`symmetry_score`.
    """
    from scipy import optimize

    _check_kind(kind)
    s, v = _root_smoothed(frame, valid, smooth)
    inv = (~v).astype(np.float64)
    pts = np.argwhere(v)
    if len(pts) > max_points:
        rng = np.random.default_rng(seed)
        pts = pts[rng.choice(len(pts), size=max_points, replace=False)]
    py0 = pts[:, 0].astype(np.float64)
    px0 = pts[:, 1].astype(np.float64)
    vals0 = s[pts[:, 0], pts[:, 1]]
    g2 = max(float(guard), 1.0) ** 2
    gy, gx = float(guess[0]), float(guess[1])
    _, n = _line_vectors(angle_deg)

    def center_of(u: np.ndarray) -> tuple[float, float]:
        if kind == "friedel":
            return gy + float(u[0]), gx + float(u[1])
        return gy + float(u[0]) * n[0], gx + float(u[0]) * n[1]

    def neg_score(u: np.ndarray) -> float:
        c = center_of(u)
        if float(np.hypot(c[0] - gy, c[1] - gx)) > radius + 1e-9:
            return 2.0
        qy, qx = transform_points(py0, px0, c, kind, angle_deg)
        pv, ok = _sample(s, inv, qy, qx)
        dy, dx = py0 - c[0], px0 - c[1]
        if kind == "friedel":
            ok &= dy * dy + dx * dx >= g2
        else:
            ok &= (dy * n[0] + dx * n[1]) ** 2 >= g2
        r = _pearson(vals0[ok], pv[ok])
        return 2.0 if not np.isfinite(r) else -r

    steps = np.arange(-radius, radius + 1e-9, 0.5)
    if kind == "friedel":
        grid = [np.array([a, b]) for a in steps for b in steps if a * a + b * b <= radius * radius + 1e-9]
    else:
        grid = [np.array([a]) for a in steps]
    best = min(grid, key=neg_score)
    simplex = np.vstack([best] + [best + 0.5 * e for e in np.eye(len(best))])
    res = optimize.minimize(
        neg_score, best, method="Nelder-Mead", options={"xatol": 0.02, "fatol": 1e-6, "initial_simplex": simplex}
    )
    u = res.x if res.fun <= neg_score(best) else best
    c = center_of(u)
    return c, symmetry_score(frame, valid, c, kind, angle_deg, guard=guard, smooth=smooth)
