"""Sample data: packaged real LaB6 frames and synthetic scans, as files and as napari layers.

The napari sample-data contributions (:func:`synthetic_scan`, :func:`lab6_scan`) return layer
data tuples and need no napari import.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from .errors import XRDError

_PACKAGED = {
    "lab6": "lab6_frames.h5",
    "lab6_goniometer": "lab6_goniometer_ROBL_v1.json",
}

LAB6_DATASET = "entry/data/data"
LAB6_PIXEL_MASK = "entry/instrument/detector/detectorSpecific/pixel_mask"
LAB6_TWO_THETA = "entry/sample/positioners/two_theta_deg"


def sample_path(name: str = "lab6") -> Path:
    """Path of a packaged sample file: "lab6" (6 real Pilatus frames, HDF5) or "lab6_goniometer" (pyFAI JSON)."""
    if name not in _PACKAGED:
        raise XRDError(f"unknown sample {name!r}; choose one of {', '.join(_PACKAGED)}")
    p = Path(str(files("napari_xrd_denoise").joinpath("data", _PACKAGED[name])))
    if not p.is_file():
        raise XRDError(f"{p}: packaged sample file is missing from the installation")
    return p


def synthetic_path(tmpdir: str | Path, name: str = "synthetic", overwrite: bool = True, **scan_kwargs: Any) -> Path:
    """Write a synthetic scan (:func:`~napari_xrd_denoise.synthetic.make_scan` keywords) as an
    Eiger master + data file in ``tmpdir`` and return the master's path."""
    from .synthetic import make_scan, write_scan

    d = Path(tmpdir)
    if not d.is_dir():
        raise XRDError(f"{d}: folder does not exist")
    scan = make_scan(**scan_kwargs)
    return write_scan(d / f"{name}_master.h5", scan, format="eiger", overwrite=overwrite)


def load_lab6() -> dict[str, Any]:
    """The packaged LaB6 frames: ``data`` (uint32, frames x 195 x 1475), ``valid`` (bool frame mask),
    ``two_theta_deg``, ``wavelength_angstrom``, ``pixel_size`` (m) and ``provenance``."""
    import h5py

    p = sample_path("lab6")
    with h5py.File(p, "r") as fh:
        data = fh[LAB6_DATASET][()]
        pm = fh[LAB6_PIXEL_MASK][()]
        tth = fh[LAB6_TWO_THETA][()]
        wl = float(fh["entry/instrument/beam/incident_wavelength_angstrom"][()])
        px = float(fh["entry/instrument/detector/x_pixel_size"][()])
        prov = json.loads(fh.attrs["provenance"])
    return {
        "data": data,
        "valid": pm == 0,
        "two_theta_deg": tth,
        "wavelength_angstrom": wl,
        "pixel_size": px,
        "provenance": prov,
    }


def _contrast(data: np.ndarray, valid: np.ndarray, percentile: float) -> list[float]:
    """``[0, percentile of the valid values]``, so sentinels and hot pixels do not set the scale."""
    vals = data[..., valid]
    hi = float(np.percentile(vals, percentile)) if vals.size else 1.0
    return [0.0, max(hi, 1.0)]


def synthetic_scan() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: a 4x4 synthetic scan at low dose (raw counts), its ground truth and its invalid pixels."""
    from .io.napari_io import STACK_KEY
    from .synthetic import make_scan

    scan = make_scan(scan_shape=(4, 4), frame_shape=(256, 256), dose="low", seed=0)
    meta = scan.metadata()
    invalid = (~scan.valid).astype(np.uint8)
    lims = _contrast(scan.truth, scan.valid, 99.9)
    stack = scan.to_stack()
    return [
        (
            stack.data,  # the stack's own array: the Load widget then opens it with its mask and centre
            {
                "name": "synthetic scan (noisy)",
                "colormap": "magma",
                "contrast_limits": lims,
                "gamma": 0.5,
                "metadata": {**meta, STACK_KEY: stack},
            },
            "image",
        ),
        (
            scan.truth,
            {
                "name": "synthetic scan (truth)",
                "colormap": "magma",
                "contrast_limits": lims,
                "gamma": 0.5,
                "metadata": meta,
                "visible": False,
            },
            "image",
        ),
        (invalid, {"name": "synthetic scan (invalid pixels)", "opacity": 0.5}, "labels"),
    ]


def lab6_scan() -> list[tuple[Any, dict[str, Any], str]]:
    """napari sample: 6 real LaB6 Pilatus 300K-W frames (SSRL BL 7-2) and their invalid (gap) pixels."""
    from .io.napari_io import STACK_KEY
    from .io.readers import open_stack

    s = load_lab6()
    meta = {
        "two_theta_deg": [float(t) for t in s["two_theta_deg"]],
        "wavelength_angstrom": s["wavelength_angstrom"],
        "pixel_size": s["pixel_size"],
        "source": str(sample_path("lab6")),
        "provenance": s["provenance"],
        STACK_KEY: open_stack(sample_path("lab6")),  # as the reader opens the file: gaps masked, lazy
    }
    return [
        (
            meta[STACK_KEY].data,  # the stack's own (lazy) array, so that the Load widget keeps its mask
            {
                "name": "LaB6 Pilatus 300K-W (SSRL BL 7-2)",
                "colormap": "magma",
                "contrast_limits": _contrast(s["data"], s["valid"], 99.5),
                "gamma": 0.4,
                "metadata": meta,
            },
            "image",
        ),
        ((~s["valid"]).astype(np.uint8), {"name": "LaB6 invalid pixels", "opacity": 0.5}, "labels"),
    ]
