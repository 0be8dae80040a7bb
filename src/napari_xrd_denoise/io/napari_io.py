"""npe2 reader and writer hooks (napari is not imported here).

The reader returns the stack's lazy dask array (never computed) as an image layer, plus a labels
layer of the detector's invalid pixels when the file has a static mask.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import XRDError
from .readers import ALL_SUFFIXES, SERIES_SUFFIXES, detect_format, open_stack
from .stack import ScanStack
from .writers import output_kind, write_array

LayerData = tuple[Any, dict, str]


def _readable(path: str) -> bool:
    p = Path(path)
    if any(c in str(p) for c in "*?["):
        return True
    if p.is_dir():
        return any(c.suffix.lower() in SERIES_SUFFIXES for c in p.iterdir() if c.is_file())
    if not p.is_file():
        return False
    if p.suffix.lower() in ALL_SUFFIXES:
        return True
    try:
        detect_format(p)
    except XRDError:
        return False
    return True


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for detector files, folders of frames or file patterns; None otherwise.

    A single file is opened here (lazily: its metadata and a sample frame), so that a file this plugin
    cannot read (an RGB photo saved as .tif, an HDF5 file without detector frames, a table that holds no
    spectra) is declined and napari can offer it to another reader; the one-line reason is kept as a
    warning. The stack opened here is the one the reader returns.
    """
    if isinstance(path, (list, tuple)):
        if not path or not all(isinstance(p, (str, os.PathLike)) and _readable(str(p)) for p in path):
            return None
        return read_layers
    if not isinstance(path, (str, os.PathLike)) or not _readable(str(path)):
        return None
    p = str(path)
    if not Path(p).is_file():  # a folder or a file pattern: opened when read
        return read_layers
    try:
        stack = open_stack(p)
    except XRDError as e:
        warnings.warn(f"napari-xrd-denoise does not read it: {e}", stacklevel=2)
        return None

    def read_opened(arg: str | list[str]) -> list[LayerData]:
        return _layers_for(stack, p) if isinstance(arg, (str, os.PathLike)) and str(arg) == p else read_layers(arg)

    return read_opened


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Layer data tuples for one path, or for a list of paths as one stack of all their frames (napari
    hands a reader a list only to stack it: File > Open Files as Stack)."""
    if isinstance(path, (str, os.PathLike)):
        return _layers_for(open_stack(path), str(path))
    paths = [str(p) for p in path]
    if len(paths) == 1:
        return _layers_for(open_stack(paths[0]), paths[0])
    return _layers_for(stack_files(paths), paths[0], n_files=len(paths))


def stack_files(paths: list[str]) -> ScanStack:
    """The frames of several files as one lazy stack (in the order given): the first file's metadata,
    the detector masks of all combined; frames of another shape, type or kind are refused in one line."""
    import dask.array as da

    stacks = [open_stack(p) for p in paths]
    first = stacks[0]
    for p, st in zip(paths[1:], stacks[1:]):
        if (st.frame_shape, st.frame_ndim, st.dtype) != (first.frame_shape, first.frame_ndim, first.dtype):
            raise XRDError(f"{p}: frames {st.frame_shape} {st.dtype} cannot be stacked with {paths[0]}'s "
                           f"{first.frame_shape} {first.dtype}")
    masks = [st.static_valid for st in stacks if st.static_valid is not None]
    static = np.logical_and.reduce(masks) if masks else None
    files = tuple(dict.fromkeys(f for st in stacks for f in st.input_files if f != first.source))
    return dataclasses.replace(first, data=da.concatenate([st.flat() for st in stacks], axis=0),
                               static_valid=static, files=files,
                               notes=list(first.notes) + [f"{len(paths)} files stacked: {', '.join(Path(p).name for p in paths)}"])


def _layers_for(stack: ScanStack, path: str, n_files: int = 1) -> list[LayerData]:
    name = Path(path).stem or Path(path).name
    if n_files > 1:
        name = f"{name} (+{n_files - 1} files)"
    meta = {
        "source": stack.source,
        "dataset": stack.dataset,
        "format": stack.format,
        "frame_ndim": stack.frame_ndim,
        "scan_shape": list(stack.scan_shape),
        "bit_depth": stack.bit_depth,
        "saturation": stack.saturation,
        "pixel_size": stack.pixel_size,
        "beam_center": stack.beam_center,
        "count_time": stack.count_time,
        "notes": list(stack.notes),
        STACK_KEY: stack,
    }
    layers: list[LayerData] = [(stack.data, {"name": name, "metadata": meta,
                                             "contrast_limits": _limits(stack)}, "image")]
    if stack.static_valid is not None and stack.frame_ndim == 2 and not stack.static_valid.all():
        invalid = (~stack.static_valid).astype(np.uint8)
        layers.append((invalid, {"name": f"{name} invalid pixels", "opacity": 0.5,
                                 "metadata": {"source": stack.source, "kind": "invalid pixels"}}, "labels"))
    return layers


#: layer metadata key under which the reader and the sample data keep the layer's :class:`ScanStack`
STACK_KEY = "xrd_stack"


def _limits(stack: ScanStack) -> list[float]:
    """Contrast limits from the valid pixels of the first frame (0.5th to 99.8th percentile), so that
    sentinels (2**32-1), gap values (-1) and hot pixels do not set the scale; one frame is read."""
    raw = stack.frame(0)
    v = stack.valid(raw)
    vals = np.asarray(raw, dtype=np.float64)[v]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return [0.0, 1.0]
    lo, hi = (float(x) for x in np.percentile(vals, [0.5, 99.8]))
    return [lo, hi] if hi > lo else [lo, lo + 1.0]


def _own_stack(data: Any, metadata: dict | None) -> ScanStack | None:
    """The stack the reader or the sample data stored in a layer's metadata, while the layer still shows
    that stack's own array (not data put into the layer afterwards); else None."""
    st = (metadata or {}).get(STACK_KEY)
    if not isinstance(st, ScanStack) or st.shape != tuple(getattr(data, "shape", ())):
        return None
    if data is st.data:
        return st
    name = getattr(data, "name", None)
    return st if isinstance(name, str) and name == getattr(st.data, "name", None) else None


def layer_stack(data: Any, metadata: dict | None, name: str, *, frame_ndim: int = 2, keep_negatives: bool = False,
                saturation: float | None = None) -> ScanStack:
    """The :class:`ScanStack` behind an image layer: the one the reader or the sample data stored in the
    layer's metadata (with its detector mask, saturation, pixel size and beam centre) when it still has
    the layer still shows that stack's array, else the layer's data as a bare array (edited or replaced
    data are taken as they are). ``saturation`` / ``keep_negatives`` (the user's settings) override the
    stored stack's when given."""
    st = _own_stack(data, metadata)
    if st is not None:
        changes: dict[str, Any] = {}
        if saturation is not None:
            changes["saturation"] = float(saturation)
        if keep_negatives and not st.keep_negatives:
            changes["keep_negatives"] = True
        return dataclasses.replace(st, **changes) if changes else st
    return ScanStack.from_array(data, frame_ndim=frame_ndim, source=f"layer '{name}'", format="napari layer",
                                keep_negatives=keep_negatives, saturation=saturation)


def _layer_inputs(meta: dict) -> tuple[str, ...]:
    """The files a layer's data were read from (the reader's stack, the source, a result's input)."""
    files: list[str] = []
    st = meta.get(STACK_KEY)
    if isinstance(st, ScanStack):
        files += st.input_files
    prov = meta.get("provenance") if isinstance(meta.get("provenance"), dict) else {}
    for f in (meta.get("source"), prov.get("source"), prov.get("input_file")):
        if isinstance(f, str) and f and not f.startswith("<"):
            files.append(f)
    return tuple(dict.fromkeys(files))


def write_image(path: str, data: Any, attributes: dict) -> list[str]:
    """npe2 single-layer writer: HDF5 (.h5/.nxs), .npy or TIFF, float32 with provenance.

    napari asks before replacing a file, so an existing file is overwritten, except the files the layer's
    data were read from (never an output). A layer the reader opened keeps its invalid pixels invalid
    (NaN, and the HDF5 validity dataset): sentinels, gaps, the detector mask.
    """
    from .atomic import check_output

    output_kind(path)  # one-line error for an unsupported suffix
    if isinstance(data, list):  # multiscale: write the full-resolution level
        data = data[0]
    meta = dict(attributes.get("metadata") or {})
    check_output(Path(path), True, inputs=_layer_inputs(meta))
    valid = None
    st = _own_stack(data, meta)
    if st is not None:
        whole = st.data.rechunk({a: -1 for a in range(st.data.ndim - st.frame_ndim, st.data.ndim)})
        valid = whole.map_blocks(st.valid, dtype=bool)  # lazily, whole frames, as the frames are written
    if isinstance(meta.get("provenance"), dict):  # a denoised layer of the Predict widget: its full record
        prov = {str(k): v for k, v in meta["provenance"].items()}
        prov.update(layer_name=str(attributes.get("name", "")), saved_by="napari: save layer")
    else:
        prov = {
            "layer_name": str(attributes.get("name", "")),
            "input_file": str(meta.get("source", "")),
            "input_dataset": str(meta.get("dataset") or ""),
            "method": str(meta.get("method", "")),
            "command_line": "napari: save layer",
        }
        if "config" in meta:
            prov["config"] = meta["config"] if isinstance(meta["config"], str) else str(meta["config"])
    frame_ndim = int(meta.get("frame_ndim", 2 if getattr(data, "ndim", 2) >= 2 else 1))
    out = write_array(path, data, valid=valid, provenance=prov, overwrite=True, frame_ndim=frame_ndim)
    return [str(out)]
