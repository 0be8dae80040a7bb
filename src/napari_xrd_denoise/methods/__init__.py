"""Denoising strategies by name (``config.METHODS``), all implementing :class:`methods.base.Method`.

``get_method(name)`` returns the class; ``resolve_auto(config, stack)`` turns ``"auto"`` into a name.
The symmetry and neighbour-scan methods live in their own modules and are registered when importable.
"""

from __future__ import annotations

import importlib

import numpy as np

from ..config import Config
from ..errors import XRDError
from ..io.stack import ScanStack
from .base import FrameSource, Method, Normalizer, Sample  # noqa: F401

_BUILTIN = {
    "n2s": ("napari_xrd_denoise.methods.n2s", "Noise2Self"),
    "n2v": ("napari_xrd_denoise.methods.n2v", "Noise2Void"),
    "n2n-frames": ("napari_xrd_denoise.methods.n2n", "Noise2NoiseFrames"),
    "n2n-split": ("napari_xrd_denoise.methods.n2n", "Noise2NoiseSplit"),
    "supervised": ("napari_xrd_denoise.methods.supervised", "Supervised"),
    # written separately; registered only if the module exists
    "symmetry": ("napari_xrd_denoise.methods.symmetry", None),
    "neighbors": ("napari_xrd_denoise.methods.neighbors", None),
}


def _find_class(module, name: str) -> type[Method] | None:
    for obj in vars(module).values():
        if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method and getattr(obj, "name", None) == name:
            return obj
    return None


def available_methods() -> list[str]:
    """Names whose implementation can be imported here (``auto`` excluded)."""
    out = []
    for name in _BUILTIN:
        try:
            get_method(name)
        except XRDError:
            continue
        out.append(name)
    return out


def get_method(name: str) -> type[Method]:
    """The Method class registered as ``name`` (XRDError naming ``method.name`` if unknown)."""
    if name not in _BUILTIN:
        raise XRDError(f"method.name={name!r} is not one of: {', '.join(_BUILTIN)}")
    mod_name, cls_name = _BUILTIN[name]
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        if e.name == mod_name:
            raise XRDError(f"method.name={name!r} is not available in this installation") from None
        raise
    cls = getattr(mod, cls_name) if cls_name else _find_class(mod, name)
    if cls is None:
        raise XRDError(f"method.name={name!r}: {mod_name} defines no Method subclass named {name!r}")
    return cls


def _is_integer_data(stack: ScanStack, source: FrameSource | None = None, n: int = 2) -> bool:
    if stack.dtype.kind in "iu":
        return True
    if stack.dtype.kind != "f":
        return False
    src = source or FrameSource(stack, cache_frames=n)
    for i in np.unique(np.linspace(0, stack.n_frames - 1, min(n, stack.n_frames)).round().astype(int)):
        c, v = src.get(int(i))
        vals = c[v]
        if vals.size and not np.allclose(vals, np.round(vals), atol=1e-6):
            return False
    return True


def resolve_auto(config: Config, stack: ScanStack) -> str:
    """The method ``"auto"`` stands for, given the data.

    Rules (measured on synthetic ring patterns with Poisson noise, 64x64-128x128 crops, same short
    training budget; PSNR on the square-root scale, see tests/test_methods.py):

    * 1D spectra with several rows -> ``n2n-frames``: repeated realisations of one spectrum are the
      textbook Noise2Noise case and beat blind-spot methods, which cannot use the other rows.
    * Integer (photon-counting) data with ``transform`` Anscombe/GAT -> ``n2n-split``: binomial
      splitting turns every frame into an independent input/target pair, so every pixel enters the
      loss (blind-spot methods use 1/16 of them) and the network sees the pixel itself at inference.
      On the synthetic benchmark it gained clearly more PSNR than Noise2Self in the same time.
    * Anything else (float data, background-subtracted data, ``transform='none'``) -> ``n2s``:
      binomial splitting needs counts; Noise2Self only assumes pixel-independent zero-mean noise.
    """
    if config.method.name != "auto":
        return config.method.name
    if stack.frame_ndim == 1 and stack.n_frames >= 2:
        return "n2n-frames"
    if config.data.transform in ("anscombe", "gat") and not stack.keep_negatives and _is_integer_data(stack):
        return "n2n-split"
    return "n2s"


def build_method(config: Config, stack: ScanStack | None = None, *, frame_ndim: int | None = None,
                 norm: Normalizer | None = None) -> Method:
    """Instantiate the configured method (``auto`` resolved against ``stack`` when given)."""
    name = config.method.name
    if name == "auto":
        if stack is None:
            raise XRDError("method.name='auto' needs the data to choose a method")
        name = resolve_auto(config, stack)
    cls = get_method(name)
    nd = frame_ndim if frame_ndim is not None else (stack.frame_ndim if stack is not None else config.data.ndim)
    return cls(config, frame_ndim=nd, norm=norm)
