"""Detector geometry and azimuthal integration, through pyFAI.

Pixel coordinates here are array indices: the centre of pixel ``[i, j]`` is ``(y, x) = (i, j)``.
pyFAI measures PONI offsets from the outer corner of the first pixel, so a beam hitting the centre
of pixel ``[i, j]`` has ``poni1 = (i + 0.5) * pixel1`` and ``poni2 = (j + 0.5) * pixel2`` (no tilt).
pyFAI is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import XRDError

#: LaB6 lattice constant (NIST SRM 660c), angstrom
LAB6_A = 4.156826
#: LaB6 reflections with non-zero intensity, as h^2 + k^2 + l^2 (simple cubic)
LAB6_HKL2 = (1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18)

_ORIENT_FLIPS = {1: (True, True), 2: (True, False), 3: (False, False), 4: (False, True)}


def load_poni(path: str | Path) -> dict[str, Any]:
    """Read a pyFAI ``.poni`` file into its dictionary (dist, poni1, poni2, rot1-3, detector, wavelength)."""
    p = Path(path)
    if not p.is_file():
        raise XRDError(f"{p}: PONI file not found")
    from pyFAI.io.ponifile import PoniFile

    try:
        d = PoniFile(str(p)).as_dict()
    except Exception as e:  # pyFAI raises many kinds on malformed files
        raise XRDError(f"{p}: not a readable pyFAI PONI file ({type(e).__name__}: {e})") from None
    for key in ("dist", "poni1", "poni2"):
        if d.get(key) is None:
            raise XRDError(f"{p}: PONI file has no {key}")
    return d


def make_integrator(geometry: Any):
    """A pyFAI ``AzimuthalIntegrator`` from a PONI path, a PONI dictionary or an integrator."""
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    if isinstance(geometry, AzimuthalIntegrator):
        return geometry
    if isinstance(geometry, (str, Path)):
        geometry = load_poni(geometry)
    if not isinstance(geometry, dict):
        raise XRDError(
            f"geometry must be a PONI file, a PONI dictionary or an integrator, got {type(geometry).__name__}"
        )
    d = dict(geometry)
    if isinstance(d.get("detector_config"), dict) and d["detector_config"].get("max_shape") is not None:
        d["detector_config"] = dict(d["detector_config"], max_shape=tuple(d["detector_config"]["max_shape"]))
    ai = AzimuthalIntegrator()
    try:
        ai.set_config(d)
    except Exception as e:
        raise XRDError(f"geometry is not a valid pyFAI configuration ({type(e).__name__}: {e})") from None
    return ai


def beam_center_from_poni(
    path_or_dict: Any, frame_shape: tuple[int, int], flip_vertical: bool = False
) -> tuple[float, float]:
    """Direct-beam position ``(y, x)`` in array-index pixels, tilts included.

    This is the point where the undeflected beam meets the detector (pyFAI's Fit2D centre, less
    half a pixel), mapped through the detector orientation of the PONI file. It may lie outside the
    frame. ``flip_vertical`` mirrors it (``y -> H - 1 - y``) for PONI files made by Dioptas, which
    flips images on load.
    """
    ai = make_integrator(path_or_dict)
    h, w = (int(s) for s in frame_shape)
    f2d = ai.getFit2D()
    y = float(f2d["centerY"]) - 0.5
    x = float(f2d["centerX"]) - 0.5
    if not (math.isfinite(y) and math.isfinite(x)):
        raise XRDError("the PONI geometry puts the direct beam at infinity (detector parallel to the beam)")
    orient = int(getattr(ai.detector, "orientation", 3) or 3)
    fy, fx = _ORIENT_FLIPS.get(orient, (False, False))
    if fy:
        y = h - 1 - y
    if fx:
        x = w - 1 - x
    if flip_vertical:
        y = h - 1 - y
    return (y, x)


@functools.lru_cache(maxsize=16)
def _centre_integrator(shape: tuple[int, int], center: tuple[float, float], pixel_size: float, distance: float):
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    det = Detector(pixel1=pixel_size, pixel2=pixel_size, max_shape=shape)
    return AzimuthalIntegrator(
        dist=distance,
        poni1=(center[0] + 0.5) * pixel_size,
        poni2=(center[1] + 0.5) * pixel_size,
        detector=det,
        wavelength=1e-10,
    )


def azimuthal_profile(
    frame: np.ndarray,
    valid: np.ndarray | None = None,
    geometry: Any = None,
    center: tuple[float, float] | None = None,
    pixel_size: float = 75e-6,
    npt: int | None = None,
    unit: str | None = None,
    radial_range: tuple[float, float] | None = None,
    correct_solid_angle: bool | None = None,
    distance: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuthally averaged profile ``(radial, intensity, sigma)`` of one 2D frame, by pyFAI.

    Pixels that are invalid (``valid`` False) or not finite (NaN-marked) are masked. Bins without
    any valid pixel get NaN. The error model is Poisson (``sigma`` = standard error of the bin mean).

    With ``geometry`` (PONI path, dict or integrator): ``integrate1d`` in ``unit`` (default
    ``q_nm^-1``; also e.g. ``2th_deg``), solid-angle corrected unless told otherwise.
    With only ``center`` (y, x): a pyFAI integrator for a flat, untilted detector with its PONI at
    the centre; the radial axis is the distance from the centre in pixels, with no solid-angle
    correction (``pixel_size`` and ``distance`` only set the fake geometry). ``npt`` defaults to
    one bin per pixel of radius.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise XRDError(f"azimuthal_profile needs one 2D frame, got shape {frame.shape}")
    data = frame.astype(np.float64, copy=False)
    ok = np.isfinite(data)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != frame.shape:
            raise XRDError(f"validity mask shape {valid.shape} does not match frame shape {frame.shape}")
        ok &= valid
    data = np.where(ok, data, 0.0)
    mask = ~ok
    if geometry is not None:
        ai = make_integrator(geometry)
        unit = unit or "q_nm^-1"
        if npt is None:
            npt = int(max(64, min(4000, math.hypot(*frame.shape) / 2)))
        csa = True if correct_solid_angle is None else bool(correct_solid_angle)
        scale = 1.0
        rr = radial_range
    elif center is not None:
        cy, cx = (float(c) for c in center)
        ai = _centre_integrator(tuple(int(s) for s in frame.shape), (cy, cx), float(pixel_size), float(distance))
        if unit not in (None, "r_px"):
            raise XRDError(f"unit={unit!r}: with only a beam centre the profile is in pixels (unit 'r_px')")
        unit = "r_mm"
        h, w = frame.shape
        rmax = max(math.hypot(cy - a, cx - b) for a in (0, h - 1) for b in (0, w - 1))
        if npt is None:
            npt = int(math.ceil(rmax))
        csa = False if correct_solid_angle is None else bool(correct_solid_angle)
        scale = 1e-3 / float(pixel_size)  # mm -> pixels
        r0, r1 = (0.0, float(math.ceil(rmax))) if radial_range is None else radial_range
        rr = (r0 / scale, r1 / scale)
    else:
        raise XRDError("azimuthal_profile needs a geometry (PONI) or a beam centre")
    if int(npt) < 2:
        raise XRDError(f"npt={npt} must be at least 2")
    try:
        res = ai.integrate1d(
            data,
            int(npt),
            mask=mask,
            unit=unit,
            error_model="poisson",
            correctSolidAngle=csa,
            radial_range=rr,
        )
    except (KeyError, RuntimeError) as e:
        raise XRDError(f"azimuthal integration failed (unit={unit!r}): {e}") from None
    radial = np.asarray(res.radial, dtype=np.float64) * scale
    intensity = np.asarray(res.intensity, dtype=np.float64).copy()
    sigma = np.asarray(res.sigma, dtype=np.float64).copy() if res.sigma is not None else np.full_like(intensity, np.nan)
    count = getattr(res, "count", None)
    if count is None:
        count = getattr(res, "sum_normalization", None)
    if count is not None:
        empty = np.asarray(count) <= 0
        intensity[empty] = np.nan
        sigma[empty] = np.nan
    return radial, intensity, sigma


def profile_error(profile_a: Any, profile_ref: Any, sigma: np.ndarray | None = None) -> float:
    """Relative L2 error ``||a - ref|| / ||ref||`` over bins finite in both.

    Profiles may be intensity arrays or ``(radial, intensity, sigma)`` tuples. With ``sigma``,
    bins are weighted by ``1 / sigma**2`` (bins with a non-positive or non-finite sigma are dropped).
    """
    a = _intensity(profile_a)
    ref = _intensity(profile_ref)
    if a.shape != ref.shape:
        raise XRDError(f"profiles have different numbers of bins ({a.size} and {ref.size})")
    ok = np.isfinite(a) & np.isfinite(ref)
    w = np.ones_like(ref)
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=np.float64)
        if sigma.shape != ref.shape:
            raise XRDError(f"sigma has {sigma.size} bins, the profiles {ref.size}")
        ok &= np.isfinite(sigma) & (sigma > 0)
        w = np.where(ok, 1.0 / np.where(ok, sigma, 1.0) ** 2, 0.0)
    if not np.any(ok):
        raise XRDError("the two profiles have no bin that is valid in both")
    den = float(np.sum(w[ok] * ref[ok] ** 2))
    if den <= 0:
        raise XRDError("the reference profile is zero on every common bin")
    return float(math.sqrt(float(np.sum(w[ok] * (a[ok] - ref[ok]) ** 2)) / den))


def _intensity(p: Any) -> np.ndarray:
    if isinstance(p, tuple) and len(p) in (2, 3):
        p = p[1]
    return np.asarray(p, dtype=np.float64).ravel()


def lab6_ring_two_theta(wavelength_angstrom: float = 0.885601, n: int = 5) -> np.ndarray:
    """Two-theta (degrees) of the first ``n`` LaB6 rings at the given wavelength."""
    d = LAB6_A / np.sqrt(np.asarray(LAB6_HKL2[:n], dtype=np.float64))
    s = wavelength_angstrom / (2 * d)
    s = s[s < 1]
    return np.degrees(2 * np.arcsin(s))


def lab6_goniometer_path() -> Path:
    """The packaged pyFAI goniometer calibration of the SSRL LaB6 scan (Pilatus 300K-W)."""
    from importlib.resources import files

    return Path(str(files("napari_xrd_denoise").joinpath("data", "lab6_goniometer_ROBL_v1.json")))


@functools.lru_cache(maxsize=4)
def _goniometer(path: str):
    from pyFAI.goniometer import Goniometer

    try:
        return Goniometer.sload(path)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise XRDError(f"{path}: not a readable pyFAI goniometer calibration ({e})") from None


def lab6_integrator(two_theta_deg: float, calibration: str | Path | None = None):
    """pyFAI integrator of the SSRL LaB6 scan frame taken at detector arm angle ``two_theta_deg``.

    Uses the pyFAI goniometer calibration (``Goniometer.sload(...).get_ai(two_theta_deg)``);
    ``calibration`` defaults to the packaged ``lab6_goniometer_ROBL_v1.json``.
    """
    path = Path(calibration) if calibration is not None else lab6_goniometer_path()
    if not path.is_file():
        raise XRDError(f"{path}: goniometer calibration not found")
    t = float(two_theta_deg)
    if not math.isfinite(t):
        raise XRDError(f"two_theta_deg={two_theta_deg} is not a number")
    return _goniometer(str(path)).get_ai(t)


def radial_map(frame_shape: tuple[int, int], geometry: Any = None, center: Any = None) -> np.ndarray:
    """Scattering angle 2theta (degrees, pyFAI, with a geometry) or radius in pixels about ``center``
    (y, x) for every pixel of a frame."""
    if geometry is not None:
        ai = make_integrator(geometry)
        return np.asarray(ai.array_from_unit(shape=tuple(frame_shape), typ="center", unit="2th_deg"), dtype=np.float64)
    if center is None:
        raise XRDError("a radial map needs a geometry (--poni) or a beam centre (--center)")
    yy, xx = np.indices(tuple(frame_shape), dtype=np.float64)
    return np.hypot(yy - float(center[0]), xx - float(center[1]))


def ring_bins(radial: np.ndarray, width_px: float | None = None) -> np.ndarray:
    """Integer ring index per pixel: equal-width bins of the radial map, about one pixel wide."""
    r = np.asarray(radial, dtype=np.float64)
    lo, hi = float(np.nanmin(r)), float(np.nanmax(r))
    n = max(8, int(np.ceil(np.hypot(*r.shape) / (width_px or 1.0))))
    return np.clip(((r - lo) / max(hi - lo, 1e-12) * n).astype(np.int64), 0, n - 1)


def preserve_profile(denoised: np.ndarray, raw: np.ndarray, valid: np.ndarray, bins: np.ndarray,
                     window: int = 1, exclude: np.ndarray | None = None) -> np.ndarray:
    """Local flux correction along the rings: scale a denoised frame so that, over every window of
    ``window`` consecutive ring bins, its total over valid pixels equals the raw total.

    ``window=1`` makes every ring's total exactly the raw one (the output's azimuthal profile is that of
    the counts, noise included). A wider window (odd, in ring bins of about one pixel) corrects the
    denoiser's flux bias on radial scales wider than the window while imprinting less of the raw rings'
    Poisson noise; the distribution along each ring stays the denoiser's. Invalid pixels stay as they
    are (NaN). Where the window's raw total is 0 the output becomes 0; where the denoiser left it at 0 it
    is unchanged. Pixels in ``exclude`` (:func:`..physics.masks.flux_outliers`: unmasked hot pixels,
    zingers) are left out of the totals and scaled like their ring.
    """
    d = np.asarray(denoised, dtype=np.float64)
    v = np.asarray(valid, dtype=bool) & np.isfinite(d)
    b = np.asarray(bins)
    n = int(b.max()) + 1
    t = v if exclude is None else v & ~np.asarray(exclude, dtype=bool)
    raw_sum = np.bincount(b[t], weights=np.asarray(raw, dtype=np.float64)[t], minlength=n)
    den_sum = np.bincount(b[t], weights=np.maximum(d[t], 0.0), minlength=n)
    w = max(1, int(window))
    if w > 1:
        kernel = np.ones(w)
        raw_sum = np.convolve(raw_sum, kernel, mode="same")
        den_sum = np.convolve(den_sum, kernel, mode="same")
    scale = np.where(den_sum > 0, raw_sum / np.where(den_sum > 0, den_sum, 1.0), 1.0)
    out = np.array(denoised, dtype=np.float32, copy=True)
    out[v] = (np.maximum(d[v], 0.0) * scale[b[v]]).astype(np.float32)
    return out
