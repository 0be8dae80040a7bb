"""Describe a detector stack for ``xrd-denoise info``: shapes, metadata, invalid pixels, count levels."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..physics.masks import describe_pixel_mask
from .readers import pixel_mask_of, sample_indices
from .stack import ScanStack


def _invalid_reasons(stack: ScanStack, raw: np.ndarray) -> dict[str, int]:
    """Pixels of sampled raw frames that are invalid, by cause (a pixel can have several causes)."""
    out: dict[str, int] = {}
    kind = raw.dtype.kind
    if kind == "f":
        out["nan/inf"] = int(np.count_nonzero(~np.isfinite(raw)))
    if kind in "if" and not stack.keep_negatives:
        with np.errstate(invalid="ignore"):
            out["negative"] = int(np.count_nonzero(raw < 0))
    if kind == "u":
        out["all-ones sentinel"] = int(np.count_nonzero(raw == np.iinfo(raw.dtype).max))
    if stack.bit_depth and 0 < stack.bit_depth < 64 and kind in "iuf":
        s = (1 << int(stack.bit_depth)) - 1
        if kind == "f" or s <= np.iinfo(raw.dtype).max:
            out[f"2**{stack.bit_depth}-1"] = int(np.count_nonzero(raw == s))
    if stack.saturation is not None:
        with np.errstate(invalid="ignore"):
            out["saturated"] = int(np.count_nonzero(raw >= stack.saturation))
    return {k: v for k, v in out.items() if v}


def _axis_summary(values: dict[str, Any]) -> dict[str, str]:
    out = {}
    for name, v in values.items():
        a = np.asarray(v)
        if a.size == 0:
            out[name] = "empty"
        elif a.dtype.kind in "biuf":
            step = ""
            if a.ndim == 1 and a.size > 1:
                d = np.diff(a.astype(np.float64))
                if np.allclose(d, d[0], rtol=1e-3, atol=1e-12):
                    step = f", step {d[0]:.6g}"
            out[name] = f"{a.size} values, {np.nanmin(a):.6g} .. {np.nanmax(a):.6g}{step}"
        else:
            out[name] = f"{a.size} values"
    return out


def describe(stack: ScanStack, sample_frames: int = 3) -> dict[str, Any]:
    """A dictionary describing ``stack``; reads only ``sample_frames`` frames (first, middle, last)."""
    idx = sample_indices(stack.n_frames, max(1, int(sample_frames)))
    flat = stack.flat()
    raws = [np.asarray(flat[i].compute()) for i in idx]
    n_pix = int(np.prod(stack.frame_shape))
    invalid_frac, reasons, vals = [], {}, []
    for raw in raws:
        v = stack.valid(raw)
        invalid_frac.append(1.0 - float(v.mean()) if v.size else 1.0)
        for k, n in _invalid_reasons(stack, raw).items():
            reasons[k] = reasons.get(k, 0) + n
        vals.append(raw[v].astype(np.float64))
    allv = np.concatenate(vals) if vals else np.zeros(0)
    counts: dict[str, Any] = {}
    if allv.size:
        counts = {
            "mean": float(allv.mean()),
            "median": float(np.median(allv)),
            "max": float(allv.max()),
            "min": float(allv.min()),
            "zero_fraction": float(np.mean(allv == 0)),
            "integer_valued": bool(np.all(allv == np.round(allv))),
        }
    static_invalid = 0
    if stack.static_valid is not None:
        static_invalid = int(np.count_nonzero(~stack.static_valid))
    pm = pixel_mask_of(stack)
    mask_reasons = describe_pixel_mask(pm) if pm is not None and pm.shape == stack.frame_shape else {}
    d: dict[str, Any] = {
        "source": stack.source,
        "format": stack.format,
        "dataset": stack.dataset,
        "shape": tuple(stack.shape),
        "scan_shape": tuple(stack.scan_shape),
        "frame_shape": tuple(stack.frame_shape),
        "frame_ndim": stack.frame_ndim,
        "n_frames": stack.n_frames,
        "dtype": str(stack.dtype),
        "size_bytes": int(stack.n_frames * n_pix * stack.dtype.itemsize),
        "chunks": tuple(int(c) for c in stack.data.chunksize),
        "sampled_frames": idx,
        "static_invalid_pixels": static_invalid,
        "static_invalid_fraction": static_invalid / n_pix if n_pix else 0.0,
        "invalid_fraction": float(np.mean(invalid_frac)) if invalid_frac else 0.0,
        "invalid_reasons": reasons,
        "mask_reasons": mask_reasons,
        "counts": counts,
        "bit_depth": stack.bit_depth,
        "saturation": stack.saturation,
        "keep_negatives": stack.keep_negatives,
        "pixel_size": stack.pixel_size,
        "beam_center": stack.beam_center,
        "geometry": stack.geometry,
        "count_time": stack.count_time,
        "axis_values": _axis_summary(stack.axis_values),
        "notes": list(stack.notes),
    }
    return d


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _shape(s: tuple) -> str:
    return " x ".join(str(int(v)) for v in s) if s else "-"


def _unit(d: dict[str, Any]) -> str:
    one = d["n_frames"] == 1
    if d["frame_ndim"] == 1:
        return "spectrum" if one else "spectra"
    return "frame" if one else "frames"


def format_info(d: dict[str, Any]) -> str:
    """Human-readable, aligned lines for a :func:`describe` dictionary."""
    rows: list[tuple[str, str]] = [
        ("file", str(d["source"])),
        ("format", str(d["format"])),
    ]
    if d.get("dataset"):
        rows.append(("dataset", str(d["dataset"])))
    rows += [
        ("shape", f"{_shape(d['shape'])}  ({d['dtype']}, {_fmt_bytes(d['size_bytes'])})"),
        ("scan shape", _shape(d["scan_shape"]) + f"  ({d['n_frames']} {_unit(d)})"),
        ("frame shape", _shape(d["frame_shape"]) + ("  (1D spectra)" if d["frame_ndim"] == 1 else "")),
        ("chunks", _shape(d["chunks"])),
    ]
    sampled = ", ".join(str(i) for i in d["sampled_frames"])
    inv = f"{100 * d['invalid_fraction']:.3g} % of pixels in frames {sampled}"
    if d["static_invalid_pixels"]:
        inv += f"; detector/user mask {d['static_invalid_pixels']} pixels ({100 * d['static_invalid_fraction']:.3g} %)"
    rows.append(("invalid", inv))
    if d["mask_reasons"]:
        rows.append(("pixel_mask", ", ".join(f"{k} {v}" for k, v in d["mask_reasons"].items())))
    if d["invalid_reasons"]:
        rows.append(("invalid values", ", ".join(f"{k} {v}" for k, v in d["invalid_reasons"].items())
                     + ("  (one pixel counts once per cause)" if len(d["invalid_reasons"]) > 1 else "")))
    c = d["counts"]
    if c:
        kind = "integer" if c["integer_valued"] else "non-integer"
        rows.append(("counts", f"mean {c['mean']:.4g}, median {c['median']:.4g}, max {c['max']:.6g}, "
                               f"min {c['min']:.4g} ({kind}; {100 * c['zero_fraction']:.3g} % zeros)"))
    else:
        rows.append(("counts", "no valid pixel in the sampled frames"))
    if d["bit_depth"] is not None:
        rows.append(("bit depth", f"{d['bit_depth']} (2**{d['bit_depth']}-1 = {(1 << int(d['bit_depth'])) - 1} is invalid)"))
    if d["saturation"] is not None:
        rows.append(("saturation", f"{d['saturation']:g} counts (at or above is invalid)"))
    if d["keep_negatives"]:
        rows.append(("negatives", "kept (background-subtracted data)"))
    if d["pixel_size"]:
        rows.append(("pixel size", " x ".join(f"{1e6 * p:.4g} um" for p in d["pixel_size"]) + "  (y x)"))
    if d["beam_center"]:
        rows.append(("beam centre", f"y {d['beam_center'][0]:.2f}, x {d['beam_center'][1]:.2f} px"))
    if d["count_time"] is not None:
        rows.append(("count time", f"{d['count_time']:.6g} s"))
    g = d["geometry"]
    if g:
        parts = [f"dist {g['dist'] * 1e3:.2f} mm" if g.get("dist") else "",
                 f"wavelength {g['wavelength'] * 1e10:.4g} A" if g.get("wavelength") else "",
                 f"rot1 {g.get('rot1', 0):.4g} rot2 {g.get('rot2', 0):.4g} rot3 {g.get('rot3', 0):.4g} rad"]
        rows.append(("geometry", ", ".join(p for p in parts if p)))
    for name, s in d["axis_values"].items():
        rows.append((f"axis {name}", s))
    for n in d["notes"]:
        rows.append(("note", n))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}} : {v}" for k, v in rows)
