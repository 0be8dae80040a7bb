"""napari-xrd-denoise: self-supervised denoising of scanning X-ray diffraction and 4D-STEM data.

Python API (the same verbs as the ``xrd-denoise`` command line)::

    import napari_xrd_denoise as xd
    stack = xd.open_stack("scan_master.h5", scan_shape=(141, 121))
    model = xd.train(stack, method="n2s", epochs=20)
    result = xd.predict(stack, model, output="denoised.h5")
    # or in one go
    xd.denoise("scan_master.h5", output="denoised.h5")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

from .config import Config  # noqa: E402
from .errors import XRDError  # noqa: E402
from .io.stack import ScanStack  # noqa: E402

_LAZY = {
    "open_stack": ("napari_xrd_denoise.io.readers", "open_stack"),
    "denoise": ("napari_xrd_denoise.api", "denoise"),
    "train": ("napari_xrd_denoise.api", "train"),
    "predict": ("napari_xrd_denoise.api", "predict"),
    "load_model": ("napari_xrd_denoise.api", "load_model"),
}

__all__ = ["Config", "ScanStack", "XRDError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:  # lazy, so `import napari_xrd_denoise` stays light (no torch)
    if name in _LAZY:
        mod, attr = _LAZY[name]
        return getattr(import_module(mod), attr)
    raise AttributeError(f"module 'napari_xrd_denoise' has no attribute {name!r}")
