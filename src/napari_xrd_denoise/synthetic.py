"""Deterministic synthetic scans and spectra with known ground truth.

:func:`make_scan` builds a scan of powder-diffraction-like frames: rings with a Gaussian radial
profile (some only 1-2 pixels wide) and azimuthal texture, Bragg spots that drift and fade across
the scan, a diffuse background falling with radius, a beam stop (disc + arm), detector gaps, dead and
hot pixels, and Poisson counting noise. ``truth`` is the Poisson mean of every pixel, so any
denoiser can be scored exactly on the valid pixels.

Centrosymmetry: rings, even texture harmonics and spot pairs are symmetric under a 180-degree
rotation about the sub-pixel ``center``; ``friedel_symmetric=False`` adds an odd texture harmonic
and weakens the partner spots, so the symmetry method can be tested on patterns where it should not
be trusted.

:func:`make_spectra` gives repeated 1D XRF-like spectra (lines on a smooth background).
:func:`write_scan` writes a scan as an Eiger-style HDF5 master (with optional external data files),
or as ``.npy``, so readers can be tested on it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import XRDError
from .io.atomic import atomic_path, check_output

#: named dose levels: the median expected counts of a ring pixel
DOSES = {"low": 1.0, "mid": 10.0, "high": 100.0}

EIGER_SENTINEL = np.uint32(2**32 - 1)
PILATUS_GAP = -1
PILATUS_BAD = -2

# NeXus pixel_mask bits used here
GAP_BIT = 1 << 0
DEAD_BIT = 1 << 1
NOISY_BIT = 1 << 4
USER_BIT = 1 << 8


@dataclass
class SyntheticScan:
    """A synthetic scan with ground truth.

    ``counts``: raw detector values, shape ``scan_shape + frame_shape``; uint32 with 2**32-1 at gap
    and dead pixels (``detector="eiger"``) or int32 with -1 at gaps and -2 at dead pixels
    (``detector="pilatus"``); hot pixels hold huge counts, the beam stop holds 0.
    ``truth``: float32 Poisson mean of every pixel (0 under the beam stop).
    ``valid``: static validity of the frame (gaps, dead, hot and beam-stop pixels are False).
    ``center``: (y, x) beam centre in pixel-index coordinates (sub-pixel).
    ``spot_positions``: ``scan_shape + (n_spots, 2)`` (y, x) of every Bragg spot;
    ``spot_intensities``: their peak expected counts (same leading shape).
    """

    counts: np.ndarray
    truth: np.ndarray
    valid: np.ndarray
    center: tuple[float, float]
    ring_radii: np.ndarray
    ring_widths: np.ndarray
    spot_positions: np.ndarray
    spot_intensities: np.ndarray
    spot_widths: np.ndarray
    pixel_mask: np.ndarray
    gaps: np.ndarray
    beam_stop: np.ndarray
    dead: np.ndarray
    hot: np.ndarray
    detector: str
    dose: float
    seed: int
    friedel_symmetric: bool
    pixel_size: float
    distance: float
    wavelength: float

    @property
    def scan_shape(self) -> tuple[int, ...]:
        return tuple(self.counts.shape[:-2])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.counts.shape[-2:])

    @property
    def sentinel(self) -> int:
        """The value of gap pixels in ``counts``."""
        return PILATUS_GAP if self.detector == "pilatus" else int(EIGER_SENTINEL)

    def frame_valid(self) -> np.ndarray:
        """Validity of every pixel of every frame (the static mask broadcast over the scan)."""
        return np.broadcast_to(self.valid, self.counts.shape)

    def geometry(self) -> dict[str, Any]:
        """A pyFAI geometry (PONI dictionary) with the beam at ``center``, no tilt."""
        cy, cx = self.center
        h, w = self.frame_shape
        return {
            "poni_version": 2.1,
            "dist": float(self.distance),
            "poni1": (cy + 0.5) * self.pixel_size,
            "poni2": (cx + 0.5) * self.pixel_size,
            "rot1": 0.0,
            "rot2": 0.0,
            "rot3": 0.0,
            "detector": "Detector",
            "detector_config": {
                "pixel1": self.pixel_size,
                "pixel2": self.pixel_size,
                "max_shape": [h, w],
                "orientation": 3,
            },
            "wavelength": float(self.wavelength),
        }

    def metadata(self) -> dict[str, Any]:
        """JSON-friendly description (no arrays of frame size)."""
        return {
            "generator": "napari_xrd_denoise.synthetic.make_scan",
            "seed": self.seed,
            "dose": self.dose,
            "detector": self.detector,
            "scan_shape": list(self.scan_shape),
            "frame_shape": list(self.frame_shape),
            "center": [float(c) for c in self.center],
            "ring_radii": [float(r) for r in self.ring_radii],
            "ring_widths": [float(s) for s in self.ring_widths],
            "friedel_symmetric": self.friedel_symmetric,
            "pixel_size": self.pixel_size,
            "distance": self.distance,
            "wavelength": self.wavelength,
        }

    def to_stack(self):
        """The scan as a :class:`~napari_xrd_denoise.io.stack.ScanStack` with the full static validity."""
        from .io.stack import ScanStack

        return ScanStack.from_array(
            self.counts,
            frame_ndim=2,
            static_valid=self.valid.copy(),
            source="<synthetic>",
            format="synthetic",
            bit_depth=32 if self.detector == "eiger" else None,
            pixel_size=(self.pixel_size, self.pixel_size),
            beam_center=tuple(float(c) for c in self.center),
            geometry=self.geometry(),
            count_time=1.0,
        )


@dataclass
class SyntheticSpectra:
    """Repeated 1D spectra: ``counts`` (uint32) and ``truth`` (float32 Poisson mean), shape (n, channels)."""

    counts: np.ndarray
    truth: np.ndarray
    energy_kev: np.ndarray
    peak_energies_kev: np.ndarray
    peak_channels: np.ndarray
    dose: float
    seed: int


def _dose_value(dose: float | str) -> float:
    if isinstance(dose, str):
        if dose not in DOSES:
            raise XRDError(f"dose={dose!r} must be one of {', '.join(DOSES)} or a positive number")
        return DOSES[dose]
    try:
        d = float(dose)
    except (TypeError, ValueError):
        raise XRDError(f"dose={dose!r} must be one of {', '.join(DOSES)} or a positive number") from None
    if not (d > 0 and math.isfinite(d)):
        raise XRDError(f"dose={dose!r} must be a positive number")
    return d


def _shape(name: str, shape: Any, ndim: int | None, minimum: int) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise XRDError(f"{name}={shape!r} must be a tuple of integers") from None
    if ndim is not None and len(shape) != ndim:
        raise XRDError(f"{name}={shape} must have {ndim} dimensions")
    if any(s < minimum for s in shape):
        raise XRDError(f"{name}={shape}: every size must be at least {minimum}")
    return shape


def _scan_coords(scan_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (u, v) in [0, 1] of every scan position (first two scan axes; 0.5 when absent)."""
    n = int(np.prod(scan_shape)) if scan_shape else 1
    idx = np.unravel_index(np.arange(n), scan_shape) if scan_shape else ()
    coords = []
    for ax in range(2):
        if ax < len(scan_shape) and scan_shape[ax] > 1:
            coords.append(idx[ax] / (scan_shape[ax] - 1))
        else:
            coords.append(np.full(n, 0.5))
    return coords[0].astype(np.float64), coords[1].astype(np.float64)


def _scan_steps(scan_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance in scan steps from the middle of the scan, along the first two scan axes."""
    n = int(np.prod(scan_shape)) if scan_shape else 1
    idx = np.unravel_index(np.arange(n), scan_shape) if scan_shape else ()
    out = []
    for ax in range(2):
        if ax < len(scan_shape):
            out.append(idx[ax] - (scan_shape[ax] - 1) / 2)
        else:
            out.append(np.zeros(n))
    return out[0].astype(np.float64), out[1].astype(np.float64)


def make_scan(
    scan_shape: tuple[int, ...] = (4, 4),
    frame_shape: tuple[int, int] = (256, 256),
    dose: float | str = "low",
    seed: int = 0,
    *,
    center: tuple[float, float] | None = None,
    n_rings: int = 6,
    n_spots: int = 6,
    friedel_symmetric: bool = True,
    asymmetry: float = 0.4,
    background: float = 0.35,
    detector: str = "eiger",
    beam_stop: bool = True,
    gaps: bool = True,
    n_dead: int | None = None,
    n_hot: int | None = None,
    pixel_size: float = 75e-6,
    distance: float = 0.1,
    wavelength: float = 1.0e-10,
) -> SyntheticScan:
    """A deterministic synthetic diffraction scan with ground truth.

    ``dose``: the median expected counts of a ring pixel; "low" = 1, "mid" = 10, "high" = 100, or a
    number. ``n_spots`` Bragg spots (each with a Friedel partner, so ``2 * n_spots`` in
    ``spot_positions``) drift by up to ~0.6 px per scan step along the ring and ~0.15 px per step
    in radius, and fade in and out smoothly over the scan; ring texture and sample thickness also
    change smoothly, so neighbouring frames are similar but not equal.
    ``asymmetry`` (0 to 0.5) is the amplitude of the odd texture harmonic used when
    ``friedel_symmetric`` is False. All random choices come from ``seed``; the frame layout (centre,
    rings, masks) does not depend on ``scan_shape``, and the symmetric and asymmetric variants share
    the same layout and noise stream.
    """
    scan_shape = _shape("scan_shape", scan_shape, None, 1)
    frame_shape = _shape("frame_shape", frame_shape, 2, 32)
    dose_v = _dose_value(dose)
    if detector not in ("eiger", "pilatus"):
        raise XRDError(f"detector={detector!r} must be 'eiger' or 'pilatus'")
    if not 0.0 <= float(asymmetry) <= 0.5:
        raise XRDError(f"asymmetry={asymmetry} must be within [0, 0.5]")
    if int(n_rings) < 1 or int(n_spots) < 0:
        raise XRDError("n_rings must be >= 1 and n_spots >= 0")
    if background < 0:
        raise XRDError(f"background={background} must be >= 0")
    H, W = frame_shape
    ss = np.random.SeedSequence(int(seed))
    s_layout, s_noise = ss.spawn(2)
    rng = np.random.default_rng(s_layout)

    # --- layout (drawn in a fixed order, independent of scan_shape and of the symmetry flag) ----
    off = rng.uniform(-0.04, 0.04, size=2)
    frac = rng.uniform(0.15, 0.85, size=2)  # keeps the centre off the pixel grid
    if center is None:
        cy = (H - 1) / 2 + round(off[0] * H) + frac[0]
        cx = (W - 1) / 2 + round(off[1] * W) + frac[1]
    else:
        cy, cx = (float(c) for c in center)
        if not (0 <= cy <= H - 1 and 0 <= cx <= W - 1):
            raise XRDError(f"center={center} lies outside the frame of shape {frame_shape}")
    smin = min(H, W)
    bs_r = max(3.0, 0.045 * smin)
    arm_w = max(3.0, 0.02 * smin)
    arm_angle = rng.uniform(0.15, 0.35) * np.pi  # pointing down-right
    edge = min(cy, H - 1 - cy, cx, W - 1 - cx)
    r_lo, r_hi = bs_r + 5.0, max(bs_r + 8.0, 0.93 * edge)

    n_rings = int(n_rings)
    base = np.linspace(r_lo, r_hi, n_rings)
    spacing = (r_hi - r_lo) / max(n_rings - 1, 1)
    radii = np.sort(base + rng.uniform(-0.25, 0.25, n_rings) * spacing)
    radii = np.clip(radii, r_lo, r_hi)
    narrow = rng.uniform(0.55, 0.85, n_rings)  # FWHM 1.3-2 px
    broad = rng.uniform(1.2, 2.5, n_rings)
    widths = np.where(np.arange(n_rings) % 2 == 0, narrow, broad)
    amps = rng.uniform(0.5, 1.6, n_rings)
    tex2 = rng.uniform(0.15, 0.5, n_rings)
    ph2 = rng.uniform(0, np.pi, n_rings)
    ph1 = rng.uniform(0, 2 * np.pi, n_rings)
    thick_k = rng.uniform(0.5, 1.2, 2)
    thick_ph = rng.uniform(0, 2 * np.pi)

    n_spots = int(n_spots)
    sp_r = rng.uniform(r_lo, r_hi, n_spots)
    sp_phi = rng.uniform(0, 2 * np.pi, n_spots)
    sp_wu = rng.uniform(-0.6, 0.6, n_spots)  # tangential drift, pixels per scan step (axis 0)
    sp_wv = rng.uniform(-0.6, 0.6, n_spots)  # (axis 1)
    sp_dr = rng.uniform(-0.15, 0.15, n_spots)  # radial drift, pixels per scan step (axis 0)
    sp_uc = rng.uniform(0, 1, (n_spots, 2))
    sp_L = rng.uniform(0.3, 0.6, n_spots)
    sp_amp = rng.uniform(8.0, 40.0, n_spots)
    sp_sig = rng.uniform(0.9, 1.8, n_spots)
    sp_partner = rng.uniform(0.0, 0.3, n_spots)

    n_px = H * W
    n_dead = max(3, round(2e-4 * n_px)) if n_dead is None else int(n_dead)
    n_hot = max(3, round(1e-4 * n_px)) if n_hot is None else int(n_hot)
    order = rng.permutation(n_px)
    hot_level = rng.uniform(2e4, 2e6, n_hot)

    # --- static maps -------------------------------------------------------------------------
    yy = (np.arange(H, dtype=np.float64) - cy)[:, None]
    xx = (np.arange(W, dtype=np.float64) - cx)[None, :]
    r = np.hypot(yy, xx)
    phi = np.arctan2(yy, xx)
    c2, s2 = np.cos(2 * phi), np.sin(2 * phi)

    g = np.exp(-0.5 * ((r[None] - radii[:, None, None]) / widths[:, None, None]) ** 2)  # (K,H,W)
    G0 = np.tensordot(amps, g, axes=1)
    Gc = np.tensordot(amps * tex2 * np.cos(2 * ph2), g, axes=1)
    Gs = np.tensordot(amps * tex2 * np.sin(2 * ph2), g, axes=1)
    if friedel_symmetric:
        Ga = np.zeros_like(G0)
    else:
        Ga = float(asymmetry) * sum(amps[k] * g[k] * np.cos(phi - ph1[k]) for k in range(n_rings))
    bg = float(background) * (0.25 + 0.75 / (1.0 + (r / (0.3 * smin)) ** 2))

    bs = np.zeros((H, W), dtype=bool)
    if beam_stop:
        along = yy * np.sin(arm_angle) + xx * np.cos(arm_angle)
        across = -yy * np.cos(arm_angle) + xx * np.sin(arm_angle)
        bs = (r <= bs_r) | ((along > 0) & (np.abs(across) <= arm_w / 2))
    gap = np.zeros((H, W), dtype=bool)
    if gaps:
        gy, gh = int(round(0.31 * H)), max(2, H // 64)
        gx, gw = int(round(0.68 * W)), max(2, W // 128)
        gap[gy : gy + gh, :] = True
        gap[:, gx : gx + gw] = True
    free = order[~(bs | gap).ravel()[order]]
    if n_dead + n_hot > free.size:
        raise XRDError(f"n_dead={n_dead} and n_hot={n_hot} do not fit in a frame of shape {frame_shape}")
    dead = np.zeros(n_px, dtype=bool)
    dead[free[:n_dead]] = True
    dead = dead.reshape(H, W)
    hot_idx = free[n_dead : n_dead + n_hot]
    hot = np.zeros(n_px, dtype=bool)
    hot[hot_idx] = True
    hot = hot.reshape(H, W)
    valid = ~(bs | gap | dead | hot)

    # normalise so that the median ring pixel (texture-free, thickness 1) has `dose` counts
    ring_px = np.zeros((H, W), dtype=bool)
    for k in range(n_rings):
        ring_px |= np.abs(r - radii[k]) <= max(widths[k], 0.75)
    ring_px &= ~bs
    scale = dose_v / float(np.median((G0 + bg)[ring_px]))

    # --- per scan position ---------------------------------------------------------------------
    u, v = _scan_coords(scan_shape)
    su, sv = _scan_steps(scan_shape)
    n_frames = u.size
    thick = 1.0 + 0.15 * np.sin(2 * np.pi * (thick_k[0] * u + thick_k[1] * v) + thick_ph)
    delta = 0.35 * (u - 0.5) + 0.25 * (v - 0.5)  # texture rotation across the scan

    n_all = 2 * n_spots
    pos = np.zeros((n_frames, n_all, 2))
    inten = np.zeros((n_frames, n_all))
    sig_all = np.concatenate([sp_sig, sp_sig])
    partner = np.ones(n_spots) if friedel_symmetric else sp_partner
    truth = np.empty((n_frames, H, W), dtype=np.float32)
    for f in range(n_frames):
        cd, sd = math.cos(2 * delta[f]), math.sin(2 * delta[f])
        frame = G0 + c2 * (Gc * cd - Gs * sd) + s2 * (Gs * cd + Gc * sd) + Ga + bg
        frame *= thick[f] * scale
        rad = sp_r + sp_dr * su[f]
        ang = sp_phi + (sp_wu * su[f] + sp_wv * sv[f]) / rad
        amp = sp_amp * scale * np.exp(-((u[f] - sp_uc[:, 0]) ** 2 + (v[f] - sp_uc[:, 1]) ** 2) / (2 * sp_L**2))
        for s in range(n_spots):
            for j, (a, p) in enumerate(((ang[s], amp[s]), (ang[s] + np.pi, amp[s] * partner[s]))):
                y0, x0 = cy + rad[s] * math.sin(a), cx + rad[s] * math.cos(a)
                pos[f, s + j * n_spots] = (y0, x0)
                inten[f, s + j * n_spots] = p
                _add_spot(frame, y0, x0, sp_sig[s], p)
        truth[f] = frame
    truth[:, bs] = 0.0

    rng_noise = np.random.default_rng(s_noise)
    noisy = rng_noise.poisson(truth)
    noisy[:, hot] = rng_noise.poisson(np.broadcast_to(hot_level, (n_frames, n_hot)))
    if detector == "eiger":
        counts = noisy.astype(np.uint32)
        counts[:, gap | dead] = EIGER_SENTINEL
    else:
        counts = noisy.astype(np.int32)
        counts[:, gap] = PILATUS_GAP
        counts[:, dead] = PILATUS_BAD
    pm = np.zeros((H, W), dtype=np.uint32)
    pm[gap] |= GAP_BIT
    pm[dead] |= DEAD_BIT

    lead = tuple(scan_shape)
    return SyntheticScan(
        counts=counts.reshape(lead + (H, W)),
        truth=truth.reshape(lead + (H, W)),
        valid=valid,
        center=(float(cy), float(cx)),
        ring_radii=radii.astype(np.float64),
        ring_widths=widths.astype(np.float64),
        spot_positions=pos.reshape(lead + (n_all, 2)),
        spot_intensities=inten.reshape(lead + (n_all,)),
        spot_widths=sig_all,
        pixel_mask=pm,
        gaps=gap,
        beam_stop=bs,
        dead=dead,
        hot=hot,
        detector=detector,
        dose=dose_v,
        seed=int(seed),
        friedel_symmetric=bool(friedel_symmetric),
        pixel_size=float(pixel_size),
        distance=float(distance),
        wavelength=float(wavelength),
    )


def _add_spot(frame: np.ndarray, y0: float, x0: float, sigma: float, amp: float) -> None:
    """Add a Gaussian spot of peak ``amp`` centred at (y0, x0), in place, clipped to the frame."""
    if amp <= 0:
        return
    H, W = frame.shape
    half = int(math.ceil(4 * sigma))
    ya, yb = max(0, int(y0) - half), min(H, int(y0) + half + 2)
    xa, xb = max(0, int(x0) - half), min(W, int(x0) + half + 2)
    if ya >= yb or xa >= xb:
        return
    gy = np.exp(-0.5 * ((np.arange(ya, yb) - y0) / sigma) ** 2)
    gx = np.exp(-0.5 * ((np.arange(xa, xb) - x0) / sigma) ** 2)
    frame[ya:yb, xa:xb] += amp * gy[:, None] * gx[None, :]


# XRF lines (keV) and their relative weights within an element
_LINES = {
    "Ca": ((3.69, 1.0), (4.01, 0.13)),
    "Ti": ((4.51, 1.0), (4.93, 0.14)),
    "Fe": ((6.40, 1.0), (7.06, 0.15)),
    "Cu": ((8.05, 1.0), (8.90, 0.16)),
    "Zn": ((8.64, 1.0), (9.57, 0.16)),
    "Pb": ((10.55, 1.0), (12.61, 0.8)),
    "Sr": ((14.16, 1.0), (15.84, 0.18)),
}


def charge_shared_counts(mean: np.ndarray, q: float | tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Counts of mean ``mean`` from a detector that shares charge between adjacent pixels.

    Each photon event (Poisson, rate ``mean / (1 + qy + qx)``) counts in its pixel and, independently,
    once more in the pixel to its right with probability ``qx`` and in the one below with probability
    ``qy`` (the last axis and the one before it); ``q`` is ``(qy, qx)`` or one value for both. Every
    pixel's mean is then ``mean`` (away from the first row and column, which receive no shares) and each
    pixel's count is still Poisson (a sum of independent thinned streams), but adjacent counts are
    correlated by ``qx / (1 + qy + qx)`` along x (``qy / ...`` along y): the model behind
    ``physics.binomial.adjacent_correlation``; with one ``q``, ``q = rho / (1 - 2 rho)`` gives a measured
    correlation ``rho``. Leading axes are frames.
    """
    qy, qx = (q, q) if np.ndim(q) == 0 else tuple(q)
    qy, qx = float(qy), float(qx)
    for v in (qy, qx):
        if not 0.0 <= v < 1.0:
            raise XRDError(f"charge sharing q={v} must be in [0, 1)")
    lam = np.asarray(mean, dtype=np.float64)
    if lam.ndim < 2:
        raise XRDError(f"charge sharing needs 2-D frames, got an array of shape {lam.shape}")
    e = rng.poisson(np.maximum(lam, 0.0) / (1.0 + qy + qx))
    n = e.copy()
    if qx > 0:
        n[..., :, 1:] += rng.binomial(e, qx)[..., :, :-1]
    if qy > 0:
        n[..., 1:, :] += rng.binomial(e, qy)[..., :-1, :]
    return n


def make_spectra(
    n: int = 32,
    channels: int = 1024,
    seed: int = 0,
    *,
    dose: float = 50.0,
    kev_per_channel: float = 0.02,
    vary: float = 0.0,
) -> SyntheticSpectra:
    """``n`` repeated XRF-like spectra with Poisson noise and their truth.

    Lines of a few elements (K alpha / K beta, Pb L) with energy-dependent width on a
    bremsstrahlung-like background, plus elastic and Compton scatter peaks. ``dose`` is the
    expected counts at the strongest line maximum. ``vary`` > 0 lets the line intensities change
    smoothly from spectrum to spectrum (a line scan); 0 gives identical repeats.
    """
    n = int(n)
    channels = int(channels)
    if n < 1 or channels < 16:
        raise XRDError(f"make_spectra needs n >= 1 and channels >= 16 (got n={n}, channels={channels})")
    dose_v = _dose_value(dose)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(2)[0])
    e = (np.arange(channels) + 0.5) * kev_per_channel
    emax = e[-1]
    names = sorted(_LINES)
    present = rng.uniform(0, 1, len(names)) < 0.7
    weights = rng.uniform(0.1, 1.0, len(names))
    phase = rng.uniform(0, 2 * np.pi, len(names))
    peaks, amps = [], []
    for name, on, w in zip(names, present, weights):
        for en, rel in _LINES[name]:
            if on and en < emax * 0.92:
                peaks.append(en)
                amps.append(w * rel)
    e_in = 0.85 * emax  # incident energy: elastic and Compton lines near the top of the range
    peaks += [e_in, e_in * 0.96]
    amps += [0.4, 0.25]
    peaks_a, amps_a = np.array(peaks), np.array(amps)
    sig = np.sqrt(0.03**2 + 0.00045 * peaks_a)
    sig[-1] *= 2.5  # Compton is broad
    lines = amps_a[:, None] * np.exp(-0.5 * ((e[None] - peaks_a[:, None]) / sig[:, None]) ** 2)
    bgr = 0.04 * np.exp(-e / (0.35 * emax)) * (1 - np.exp(-e / 1.5)) + 0.004
    t = np.linspace(0, 1, n)
    line_names = [nm for nm, on in zip(names, present) for en, _ in _LINES[nm] if on and en < emax * 0.92]
    mod = np.ones((n, len(peaks_a)))
    if vary > 0:
        for j, nm in enumerate(line_names):
            k = names.index(nm)
            mod[:, j] = 1 + vary * np.sin(2 * np.pi * t + phase[k])
        mod = np.maximum(mod, 0)
    truth = mod @ lines + bgr[None]
    truth *= dose_v / float(lines.sum(axis=0).max())
    noisy = np.random.default_rng(np.random.SeedSequence(int(seed)).spawn(2)[1]).poisson(truth)
    return SyntheticSpectra(
        counts=noisy.astype(np.uint32),
        truth=truth.astype(np.float32),
        energy_kev=e,
        peak_energies_kev=peaks_a,
        peak_channels=peaks_a / kev_per_channel - 0.5,
        dose=dose_v,
        seed=int(seed),
    )


def _eiger_raw(scan: SyntheticScan, bit_depth: int, pixel_mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Counts as an Eiger with ``pixel_mask_applied`` would store them at ``bit_depth``."""
    dtype = {8: np.uint8, 12: np.uint16, 16: np.uint16, 32: np.uint32}[bit_depth]
    sentinel = (1 << bit_depth) - 1
    c = scan.counts.astype(np.int64)
    c = np.clip(c, 0, sentinel - 1)
    c[..., pixel_mask != 0] = sentinel
    return c.astype(dtype), sentinel


def write_scan(
    path: str | Path,
    scan: SyntheticScan,
    format: str = "eiger",
    *,
    external: bool = True,
    frames_per_file: int = 100,
    compression: str | None = "gzip",
    bit_depth: int = 32,
    mask: str = "detector",
    overwrite: bool = False,
) -> Path:
    """Write ``scan`` to ``path`` and return the path of the file to open.

    ``format="eiger"``: a DECTRIS-style master file. Frames are stored flat, ``(n_frames, H, W)``,
    in ``{stem}_data_NNNNNN.h5`` files (``frames_per_file`` each) linked from the master as
    ``entry/data/data_NNNNNN`` when ``external``, else in the master as ``entry/data/data``.
    Masked pixels hold ``2**bit_depth - 1`` (``pixel_mask_applied`` = 1); ``bit_depth`` 8, 12, 16
    or 32 (12 is stored as uint16). ``mask="detector"`` puts gaps (bit 0) and dead pixels (bit 1)
    into ``pixel_mask``; ``mask="all"`` also hot pixels (bit 4) and the beam stop (bit 8).
    ``compression``: "gzip", "bslz4" (bitshuffle-LZ4 through hdf5plugin) or None.
    ``format="npy"``: the raw ``counts`` array, scan-shaped, with its own sentinels.
    """
    path = Path(path)
    if format == "npy":
        if path.suffix != ".npy":
            raise XRDError(f"{path}: an npy output needs the .npy suffix")
        with atomic_path(path, overwrite=overwrite) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, scan.counts)
        return path
    if format != "eiger":
        raise XRDError(f"format={format!r} must be 'eiger' or 'npy'")
    if bit_depth not in (8, 12, 16, 32):
        raise XRDError(f"bit_depth={bit_depth} must be 8, 12, 16 or 32")
    if mask not in ("detector", "all"):
        raise XRDError(f"mask={mask!r} must be 'detector' or 'all'")
    if compression not in ("gzip", "bslz4", None):
        raise XRDError(f"compression={compression!r} must be 'gzip', 'bslz4' or None")
    if int(frames_per_file) < 1:
        raise XRDError(f"frames_per_file={frames_per_file} must be >= 1")
    import h5py

    pm = scan.pixel_mask.copy()
    if mask == "all":
        pm[scan.hot] |= NOISY_BIT
        pm[scan.beam_stop] |= USER_BIT
    raw, sentinel = _eiger_raw(scan, bit_depth, pm)
    H, W = scan.frame_shape
    flat = raw.reshape((-1, H, W))
    comp: dict[str, Any] = {}
    if compression == "gzip":
        comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    elif compression == "bslz4":
        import hdf5plugin

        comp = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    chunks = (1, H, W)

    stem = path.name[: -len("_master.h5")] if path.name.endswith("_master.h5") else path.stem
    check_output(path, overwrite)
    data_files: list[tuple[str, Path, int, int]] = []
    if external:
        fpf = int(frames_per_file)
        for i, start in enumerate(range(0, flat.shape[0], fpf)):
            name = f"data_{i + 1:06d}"
            dpath = path.with_name(f"{stem}_{name}.h5")
            block = flat[start : start + fpf]
            with atomic_path(dpath, overwrite=overwrite) as tmp:
                with h5py.File(tmp, "w") as fh:
                    e = fh.create_group("entry")
                    e.attrs["NX_class"] = "NXentry"
                    d = e.create_group("data")
                    d.attrs["NX_class"] = "NXdata"
                    ds = d.create_dataset("data", data=block, chunks=chunks, **comp)
                    ds.attrs["image_nr_low"] = np.uint64(start + 1)
                    ds.attrs["image_nr_high"] = np.uint64(start + block.shape[0])
            data_files.append((name, dpath, start, block.shape[0]))

    cy, cx = scan.center
    with atomic_path(path, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.attrs["default"] = "entry"
            fh.attrs["provenance"] = json.dumps(scan.metadata())
            e = fh.create_group("entry")
            e.attrs["NX_class"] = "NXentry"
            e.attrs["default"] = "data"
            d = e.create_group("data")
            d.attrs["NX_class"] = "NXdata"
            if external:
                for name, dpath, _, _ in data_files:
                    d[name] = h5py.ExternalLink(dpath.name, "/entry/data/data")
                d.attrs["signal"] = data_files[0][0]
            else:
                d.create_dataset("data", data=flat, chunks=chunks, **comp)
                d.attrs["signal"] = "data"
            d.attrs["scan_shape"] = np.asarray(scan.scan_shape, dtype=np.int64)
            ins = e.create_group("instrument")
            ins.attrs["NX_class"] = "NXinstrument"
            beam = ins.create_group("beam")
            beam.attrs["NX_class"] = "NXbeam"
            beam["incident_wavelength"] = scan.wavelength * 1e10
            beam["incident_wavelength"].attrs["units"] = "angstrom"
            det = ins.create_group("detector")
            det.attrs["NX_class"] = "NXdetector"
            det["description"] = f"synthetic {scan.detector} (napari-xrd-denoise)"
            det["bit_depth_image"] = np.uint16(bit_depth)
            det["pixel_mask_applied"] = np.int8(1)
            det["saturation_value"] = np.int64(sentinel - 1)
            det["count_time"] = 1.0
            det["count_time"].attrs["units"] = "s"
            for key, val, unit in (
                ("x_pixel_size", scan.pixel_size, "m"),
                ("y_pixel_size", scan.pixel_size, "m"),
                ("detector_distance", scan.distance, "m"),
                ("beam_center_x", cx, "pixel"),
                ("beam_center_y", cy, "pixel"),
            ):
                det[key] = float(val)
                det[key].attrs["units"] = unit
            spec = det.create_group("detectorSpecific")
            spec.attrs["NX_class"] = "NXcollection"
            spec.create_dataset("pixel_mask", data=pm, compression="gzip", shuffle=True)
            spec["nimages"] = np.uint64(flat.shape[0])
            spec["ntrigger"] = np.uint64(1)
            spec["x_pixels_in_detector"] = np.uint64(W)
            spec["y_pixels_in_detector"] = np.uint64(H)
            spec["compression"] = compression or "none"
    return path
