"""Pure numpy helpers behind the widgets (no Qt): masks from shapes, hot/dead pixels, mask files, maps, metrics."""

from __future__ import annotations


import numpy as np

from ..errors import XRDError



def shapes_mask(vertices: list[np.ndarray], shape_types: list[str], frame_shape: tuple[int, int],
                offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Boolean mask (True inside any shape) of 2D shapes given by world vertices (last two axes used).

    ``offset`` is the frame's origin in world pixels (the crop origin), subtracted from the vertices.
    Polygons, rectangles, ellipses (and paths/lines, which cover no area) are rasterised by napari's
    Shapes model, so the result matches what the user sees.
    """
    from napari.layers import Shapes

    if not vertices:
        raise XRDError("ROI: the Shapes layer has no shapes")
    data = [np.asarray(v, dtype=float)[:, -2:] - np.asarray(offset, dtype=float) for v in vertices]
    layer = Shapes(data, shape_type=list(shape_types), ndim=2)
    masks = np.asarray(layer.to_masks(mask_shape=np.asarray(frame_shape)))
    if masks.ndim == 2:
        masks = masks[None]
    return masks.astype(bool).any(axis=0)






def place_in_frame(small: np.ndarray, full_shape: tuple[int, ...], origin: tuple[int, ...], fill=0) -> np.ndarray:
    """Put a cropped frame-shaped array back into the full detector frame at ``origin``."""
    out = np.full(full_shape, fill, dtype=small.dtype)
    sl = tuple(slice(int(o), int(o) + s) for o, s in zip(origin, small.shape))
    out[sl] = small
    return out


def crop_frame(full: np.ndarray, frame_shape: tuple[int, ...], origin: tuple[int, ...]) -> np.ndarray:
    sl = tuple(slice(int(o), int(o) + s) for o, s in zip(origin, frame_shape))
    out = full[sl]
    if out.shape != tuple(frame_shape):
        where = f"the cropped frame {tuple(frame_shape)} at {tuple(origin)}" if any(origin) else f"the frame {tuple(frame_shape)}"
        raise XRDError(f"mask of shape {full.shape} does not cover {where}")
    return out


def psnr_sqrt(estimate: np.ndarray, reference: np.ndarray, valid: np.ndarray | None = None) -> float:
    """PSNR (dB) on the Anscombe (square-root) scale over valid, finite pixels; data range from the reference."""
    e = np.asarray(estimate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    m = np.isfinite(e) & np.isfinite(r)
    if valid is not None:
        m &= np.asarray(valid, dtype=bool)
    if not m.any():
        return float("nan")
    te = 2.0 * np.sqrt(np.maximum(e[m], 0) + 0.375)
    tr = 2.0 * np.sqrt(np.maximum(r[m], 0) + 0.375)
    mse = float(np.mean((te - tr) ** 2))
    rng = float(tr.max() - tr.min())
    if mse == 0:
        return float("inf")
    if rng <= 0:
        return float("nan")
    return 10.0 * np.log10(rng * rng / mse)


def roi_sums(raw_counts: np.ndarray, denoised: np.ndarray, roi: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ROI-integrated intensity of raw and denoised frames ``(n, *frame)``.

    Both sums use the same pixels: inside the ROI and finite in both arrays, so they are comparable.
    """
    r = np.asarray(raw_counts, dtype=np.float64)
    d = np.asarray(denoised, dtype=np.float64)
    m = np.isfinite(r) & np.isfinite(d)
    if roi is not None:
        m &= np.asarray(roi, dtype=bool)
    axes = tuple(range(1, r.ndim))
    return np.where(m, r, 0).sum(axis=axes), np.where(m, d, 0).sum(axis=axes)
