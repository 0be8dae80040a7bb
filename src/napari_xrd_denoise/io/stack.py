"""The ScanStack: a lazy scan of detector frames (or spectra) with its validity mask and metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import dask.array as da
import numpy as np

from ..errors import XRDError
from ..physics.masks import valid_from_raw

MIN_FRAME = {1: 16, 2: 16}  # smallest frame side that can be denoised


def spread_indices(n: int, k: int) -> np.ndarray:
    """Flat indices of up to ``k`` frames spread evenly over ``n`` (first and last included, no repeats)."""
    return np.unique(np.linspace(0, n - 1, min(int(n), int(k))).round().astype(int))


def _cropped_geometry(geometry: dict[str, Any], y0: int, x0: int) -> dict[str, Any] | None:
    """The PONI geometry of a frame cropped from ``(y0, x0)``: the PONI moves by the crop origin. pyFAI's
    PONI is measured from the first pixel along rows (poni1) and columns (poni2) for the default detector
    orientation (3); for another orientation, or without pixel sizes, None (the stack keeps its shifted
    beam centre, and rings are then taken about it)."""
    g = dict(geometry)
    dc = g.get("detector_config") if isinstance(g.get("detector_config"), dict) else {}
    if int(dc.get("orientation", 3) or 3) != 3:
        return None
    p1, p2 = g.get("pixel1", dc.get("pixel1")), g.get("pixel2", dc.get("pixel2"))
    if p1 is None or p2 is None or "poni1" not in g or "poni2" not in g:
        return None
    g["poni1"] = float(g["poni1"]) - int(y0) * float(p1)
    g["poni2"] = float(g["poni2"]) - int(x0) * float(p2)
    return g


@dataclass
class ScanStack:
    """A lazy stack of raw frames, shape ``scan_shape + frame_shape``.

    ``data`` keeps the raw dtype (never cast before the validity mask is built). ``static_valid``
    is the detector's own validity (pixel_mask, user masks; ``True`` = usable) of shape
    ``frame_shape``; per-frame invalid pixels (sentinels, negatives, saturation, NaN) are found by
    :meth:`valid` on the raw values of each block that is read.
    """

    data: da.Array
    frame_ndim: int = 2
    static_valid: np.ndarray | None = None
    source: str = ""
    dataset: str | None = None
    format: str = ""
    bit_depth: int | None = None
    saturation: float | None = None
    keep_negatives: bool = False
    pixel_size: tuple[float, ...] | None = None  # metres, (y, x)
    beam_center: tuple[float, float] | None = None  # pixels, (y, x)
    geometry: dict[str, Any] | None = None  # pyFAI PONI parameters when known
    count_time: float | None = None  # seconds
    axis_values: dict[str, Any] = field(default_factory=dict)  # e.g. {"two_theta_deg": array}
    notes: list[str] = field(default_factory=list)
    files: tuple[str, ...] = ()  # other files the frames are read from (an Eiger master's data files)

    @property
    def input_files(self) -> tuple[str, ...]:
        """Every file the frames come from (the source and its linked data files): never an output."""
        return tuple(f for f in (self.source, *self.files) if f)

    def __post_init__(self) -> None:
        if self.frame_ndim not in (1, 2):
            raise XRDError(f"{self.source}: frame_ndim must be 1 or 2, got {self.frame_ndim}")
        if self.data.ndim < self.frame_ndim:
            hint = " (a spectrum? pass ndim=1, --ndim 1)" if self.data.ndim == 1 else ""
            raise XRDError(f"{self.source}: data of shape {self.data.shape} has fewer than {self.frame_ndim} axes{hint}")
        if self.data.dtype.kind not in "biuf":
            raise XRDError(f"{self.label}: data type {self.data.dtype} is not numeric detector data")
        if self.static_valid is not None:
            sv = np.asarray(self.static_valid, dtype=bool)
            if sv.shape != self.frame_shape:
                raise XRDError(f"{self.label}: mask shape {sv.shape} does not match frame shape {self.frame_shape}")
            self.static_valid = sv

    # --- shape ---------------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return f"{self.source}:{self.dataset}" if self.dataset else self.source

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[-self.frame_ndim :])

    @property
    def scan_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[: -self.frame_ndim])

    @property
    def n_frames(self) -> int:
        return int(math.prod(self.scan_shape)) if self.scan_shape else 1

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    def flat(self) -> da.Array:
        """All frames along one leading axis: ``(n_frames, *frame_shape)``."""
        return self.data.reshape((self.n_frames,) + self.frame_shape)

    def with_scan_shape(self, scan_shape: tuple[int, ...] | list[int] | None) -> "ScanStack":
        """Give a flat stack its scan grid (e.g. 17061 frames -> 141x121)."""
        if scan_shape is None:
            return self
        scan_shape = tuple(int(s) for s in scan_shape)
        if math.prod(scan_shape) != self.n_frames:
            raise XRDError(
                f"scan shape {'x'.join(map(str, scan_shape))} (--scan-shape) does not match {self.n_frames} frames in {self.label}"
            )
        return replace(self, data=self.flat().reshape(scan_shape + self.frame_shape))

    def check_denoisable(self) -> None:
        """Raise a one-line error if the frames are too small to denoise."""
        small = MIN_FRAME[self.frame_ndim]
        if any(s < small for s in self.frame_shape):
            hint = ""
            if self.frame_ndim == 2 and max(self.frame_shape) >= MIN_FRAME[1]:
                hint = "; rows of spectra? pass ndim=1 (--ndim 1)"
            raise XRDError(
                f"{self.label}: frames of shape {self.frame_shape} are too small to denoise (need at least {small} "
                f"pixels a side{hint})"
            )

    # --- reading -------------------------------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        """One raw frame by flat index, read from disk."""
        return np.asarray(self.flat()[index].compute())

    def frames(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.flat()[start:stop].compute())

    def valid(self, raw: np.ndarray) -> np.ndarray:
        """Validity of raw values (any leading axes, frame axes last), static mask included."""
        v = valid_from_raw(
            raw, bit_depth=self.bit_depth, saturation=self.saturation, keep_negatives=self.keep_negatives
        )
        if self.static_valid is not None:
            v &= self.static_valid
        return v

    def counts(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(float32 counts with invalid pixels set to 0, validity)`` for a raw block."""
        v = self.valid(raw)
        x = np.where(v, raw, 0).astype(np.float32)
        return x, v

    # --- derived stacks ------------------------------------------------------------------------
    def crop(self, box: list[int] | tuple[int, ...] | None) -> "ScanStack":
        """Crop the frame axes to ``[y0, y1, x0, x1]`` (2D) or ``[c0, c1]`` (1D), half-open."""
        if box is None:
            return self
        box = [int(b) for b in box]
        if len(box) != 2 * self.frame_ndim:
            raise XRDError(f"crop {box} needs {2 * self.frame_ndim} numbers for {self.frame_ndim}D frames")
        sl = []
        for ax, size in enumerate(self.frame_shape):
            a, b = box[2 * ax], box[2 * ax + 1]
            if not (0 <= a < b <= size):
                raise XRDError(f"crop {box} lies outside the frame shape {self.frame_shape} of {self.label}")
            sl.append(slice(a, b))
        lead = (slice(None),) * len(self.scan_shape)
        sv = None if self.static_valid is None else self.static_valid[tuple(sl)]
        bc = self.beam_center
        geo = self.geometry
        if self.frame_ndim == 2:
            if bc is not None:
                bc = (bc[0] - box[0], bc[1] - box[2])
            if geo is not None:
                geo = _cropped_geometry(geo, box[0], box[2])
        axes = dict(self.axis_values)
        if self.frame_ndim == 1:  # a spectrum's energy (or channel) axis is cropped with it
            n = self.frame_shape[0]
            for k, v in axes.items():
                if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == n:
                    axes[k] = v[sl[0]]
        return replace(self, data=self.data[lead + tuple(sl)], static_valid=sv, beam_center=bc, geometry=geo,
                       axis_values=axes)

    def crop_to_mask(self, valid: np.ndarray) -> "ScanStack":
        """Crop to the bounding box of a boolean ROI (``True`` = inside)."""
        idx = np.nonzero(np.asarray(valid))
        if len(idx[0]) == 0:
            raise XRDError(f"the ROI mask for {self.label} is empty")
        box = []
        for ax in idx:
            box += [int(ax.min()), int(ax.max()) + 1]
        return self.crop(box)

    def with_mask(self, valid: np.ndarray | None) -> "ScanStack":
        """Combine an extra validity mask (``True`` = usable) with the static one."""
        if valid is None:
            return self
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != self.frame_shape:
            raise XRDError(f"mask shape {valid.shape} does not match frame shape {self.frame_shape} of {self.label}")
        sv = valid if self.static_valid is None else (self.static_valid & valid)
        return replace(self, static_valid=sv)

    @classmethod
    def from_array(cls, array: np.ndarray | da.Array, frame_ndim: int = 2, **meta: Any) -> "ScanStack":
        """Wrap an in-memory or dask array (frame axes last)."""
        if not isinstance(array, da.Array):
            array = np.asarray(array)
            if array.ndim == frame_ndim:
                array = array[None]
            chunks = (1,) * (array.ndim - frame_ndim) + array.shape[-frame_ndim:]
            array = da.from_array(array, chunks=chunks)
        elif array.ndim == frame_ndim:
            array = array[None]
        meta.setdefault("source", "<array>")
        meta.setdefault("format", "array")
        return cls(data=array, frame_ndim=frame_ndim, **meta)
