"""Open detector files as lazy :class:`ScanStack` objects.

Supported: HDF5 / NeXus (DECTRIS master files with external data files, ``entry/data/data``,
``entry/instrument/detector/data``), ``.npy`` / ``.npz``, TIFF (multi-page and numbered series),
fabio formats (EDF, CBF, SPE, MCCD, IMG; single files, multi-frame EDF, numbered series), 1D spectra
(CSV, ``.mca``, ``.npy``) and Quantum Detectors Merlin ``.mib`` (also inside a ``.zip``).

Frame data are never read at open, except the first, middle and last frame used to check that some
pixel is valid. Every input is opened read-only.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import math
import os
import re
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import h5py
import hdf5plugin  # noqa: F401  (registers bitshuffle-LZ4 and friends with HDF5)
import numpy as np

from ..errors import InputFileError, XRDError
from ..physics.masks import valid_from_pixel_mask, valid_from_user_mask
from .stack import MIN_FRAME, ScanStack

HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi", ".nx"}
TIFF_SUFFIXES = {".tif", ".tiff"}
FABIO_SUFFIXES = {".edf", ".cbf", ".spe", ".mccd", ".img", ".sfrm", ".gfrm", ".mar3450", ".mar2300"}
SERIES_SUFFIXES = TIFF_SUFFIXES | FABIO_SUFFIXES | {".mca"}
SPECTRA_SUFFIXES = {".csv", ".mca", ".dat"}
ALL_SUFFIXES = HDF5_SUFFIXES | TIFF_SUFFIXES | FABIO_SUFFIXES | SPECTRA_SUFFIXES | {".npy", ".npz", ".mib", ".zip"}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
CHUNK_BYTES = 16 * 2**20  # target size of one dask chunk of frames

# well-known places of the detector's own metadata, relative to the detector group
_DETECTOR_META = {
    "pixel_mask": "pixel_mask",
    "bit_depth_image": "bit_depth",
    "saturation_value": "saturation",
    "count_time": "count_time",
    "x_pixel_size": "x_pixel_size",
    "y_pixel_size": "y_pixel_size",
    "beam_center_x": "beam_center_x",
    "beam_center_y": "beam_center_y",
}
_NOT_DETECTOR_DATA = {"pixel_mask", "flatfield", "mask", "countrate_correction_table", "dark", "background"}
_LENGTH_TO_M = {"m": 1.0, "mm": 1e-3, "um": 1e-6, "µm": 1e-6, "micrometer": 1e-6, "micrometre": 1e-6,
                "micron": 1e-6, "microns": 1e-6, "nm": 1e-9, "cm": 1e-2}
_TIME_TO_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "millisecond": 1e-3,
              "milliseconds": 1e-3, "us": 1e-6, "µs": 1e-6, "microsecond": 1e-6, "microseconds": 1e-6,
              "ns": 1e-9}


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(s))]


def _token(*parts: Any) -> str:
    h = hashlib.sha1()
    for p in parts:
        if isinstance(p, (str, Path)) and Path(p).exists():
            st = Path(p).stat()
            p = f"{Path(p).resolve()}|{st.st_mtime_ns}|{st.st_size}"
        h.update(repr(p).encode())
    return "xrd-" + h.hexdigest()[:24]


def _frames_per_chunk(frame_shape: tuple[int, ...], dtype: np.dtype, align: int = 1) -> int:
    nbytes = max(1, math.prod(frame_shape) * np.dtype(dtype).itemsize)
    k = max(1, CHUNK_BYTES // nbytes)
    if align > 1:
        k = max(align, (k // align) * align)
    return int(k)


def _lead_chunks(shape: tuple[int, ...], frame_ndim: int, dtype: np.dtype, align: int = 1) -> tuple:
    """Whole frames in each chunk; several frames along the last scan axis, one along the others."""
    lead = shape[: len(shape) - frame_ndim]
    frame = shape[len(shape) - frame_ndim :]
    if not lead:
        return frame
    k = min(lead[-1], _frames_per_chunk(frame, dtype, align))
    return (1,) * (len(lead) - 1) + (max(k, 1),) + frame


def _is_numeric(dtype: np.dtype) -> bool:
    return np.dtype(dtype).kind in "biuf"


def _frame_ndim_for(shape: tuple[int, ...], ndim: int | None) -> int:
    """Frame dimensionality: ``ndim`` when given, else 1 for 1-D data or a 2-D array with a thin side."""
    if ndim is not None:
        if ndim not in (1, 2):
            raise XRDError(f"--ndim must be 1 or 2, got {ndim}")
        return int(ndim)
    if len(shape) == 1:
        return 1
    if len(shape) == 2 and min(shape) < MIN_FRAME[2] <= max(shape):
        return 1
    return 2


def _lazy_array(source: Any, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple, name: str) -> da.Array:
    return da.from_array(
        source, chunks=chunks, name=name, lock=False, asarray=True, meta=np.empty((0,) * len(shape), dtype=dtype)
    )


def _expand_key(key: Any, ndim: int) -> tuple:
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1 :]
    return key + (slice(None),) * (ndim - len(key))


# ------------------------------------------------------------------------------------------------
# lazy sources: objects with shape / dtype / ndim / __getitem__ that dask reads chunk by chunk
# ------------------------------------------------------------------------------------------------
class _FrameSource:
    """Base for sources that read one frame (flat index along axis 0) at a time."""

    def __init__(self, n: int, frame_shape: tuple[int, ...], dtype: np.dtype, label: str):
        self.shape = (int(n),) + tuple(int(s) for s in frame_shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.label = label

    def read_frame(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key, self.ndim)
        k0, rest = key[0], key[1:]
        squeeze = False
        if isinstance(k0, (int, np.integer)):
            idx = [int(k0) % self.shape[0]]
            squeeze = True
        elif isinstance(k0, slice):
            idx = list(range(*k0.indices(self.shape[0])))
        else:
            idx = [int(i) % self.shape[0] for i in np.asarray(k0).ravel()]
        out = np.empty((len(idx),) + self.shape[1:], dtype=self.dtype)
        for j, i in enumerate(idx):
            fr = np.asarray(self.read_frame(i))
            if fr.shape != self.shape[1:]:
                raise InputFileError(
                    f"{self.label}: frame {i} has shape {fr.shape}, expected {self.shape[1:]} like the first frame"
                )
            out[j] = fr
        out = out[(slice(None),) + tuple(rest)]
        return out[0] if squeeze else out


_H5_FILES: dict[tuple, h5py.File] = {}
_H5_LOCK = threading.RLock()


def _open_h5(path: str | Path) -> h5py.File:
    """A cached read-only handle (kept open while dask graphs refer to the file).

    The cache key includes the file's inode, size and mtime, so a file replaced on disk is opened anew.
    """
    path = str(Path(path).resolve())
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    key = (path, st.st_ino, st.st_size, st.st_mtime_ns)
    with _H5_LOCK:
        f = _H5_FILES.get(key)
        if f is not None and f.id.valid:
            return f
        try:
            f = h5py.File(path, "r")
        except FileNotFoundError:
            raise InputFileError(f"{path}: no such file") from None
        except OSError as e:
            raise InputFileError(f"{path}: not a readable HDF5 file ({_short(e)})") from None
        _H5_FILES[key] = f
        return f


def close_all() -> None:
    """Close every HDF5 file this module keeps open (lazy arrays on them stop working)."""
    with _H5_LOCK:
        for f in _H5_FILES.values():
            try:
                f.close()
            except Exception:
                pass
        _H5_FILES.clear()


def _short(e: BaseException) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return s[:160]


class _H5Source:
    """One HDF5 dataset, opened read-only on first use in each process (picklable)."""

    def __init__(self, path: str | Path, dataset: str, shape: tuple[int, ...], dtype: np.dtype):
        self.path = str(Path(path).resolve())
        self.dataset = dataset
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self._ds = None

    def _get(self) -> h5py.Dataset:
        if self._ds is None or not self._ds.id.valid:
            self._ds = _open_h5(self.path)[self.dataset]
        return self._ds

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_ds"] = None
        return d

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self._get()[key]
        except XRDError:
            raise
        except (OSError, RuntimeError, ValueError) as e:
            raise InputFileError(f"{self.path}:{self.dataset}: cannot read frames ({_short(e)})") from None


class _MemmapSource:
    """A memory-mapped array (``.npy``, uncompressed TIFF, Merlin ``.mib``), mapped on first use.

    Pickles as (file, offset, dtype, shape), never as the mapped data.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, offset: int, shape: tuple[int, ...],
                 order: str = "C", field: str | None = None, record_shape: tuple[int, ...] | None = None):
        self.path = str(path)
        self.file_dtype = np.dtype(dtype)
        self.offset = int(offset)
        self.order = order
        self.field = field
        self.record_shape = tuple(record_shape) if record_shape is not None else tuple(shape)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = self.file_dtype[field] if field else self.file_dtype
        self.dtype = np.dtype(self.dtype.base) if self.dtype.subdtype else self.dtype
        self.dtype = self.dtype.newbyteorder("=")  # native byte order for the lazy array
        self.ndim = len(self.shape)
        self._arr = None

    def _get(self) -> np.ndarray:
        if self._arr is None:
            mm = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset,
                           shape=self.record_shape, order=self.order)
            self._arr = mm[self.field] if self.field else mm
        return self._arr

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_arr"] = None
        return d

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.array(self._get()[key], dtype=self.dtype)
        except (OSError, ValueError) as e:
            raise InputFileError(f"{self.path}: cannot read frames ({_short(e)})") from None


class _TiffSource(_FrameSource):
    """Pages of one TIFF file, read on demand."""

    def __init__(self, path: str, n: int, frame_shape: tuple[int, ...], dtype: np.dtype):
        super().__init__(n, frame_shape, dtype, path)
        self.path = path
        self._tif = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_tif"] = None
        d["_lock"] = None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def read_frame(self, i: int) -> np.ndarray:
        import tifffile

        with self._lock:
            try:
                if self._tif is None:
                    self._tif = tifffile.TiffFile(self.path)
                return self._tif.series[0].pages[i].asarray()
            except Exception as e:
                raise InputFileError(f"{self.path}: cannot read TIFF page {i} ({_short(e)})") from None


def _read_single_image(path: str, frame: int = 0) -> np.ndarray:
    """One 2D image from a TIFF (tifffile, else fabio) or fabio-readable file."""
    suffix = Path(path).suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                return tif.pages[frame].asarray()
        except Exception:
            pass  # e.g. some Pilatus TIFFs: let fabio try
    import fabio

    try:
        img = fabio.open(path)
        if frame:
            img = img.getframe(frame)
        return np.asarray(img.data)
    except Exception as e:
        raise InputFileError(f"{path}: cannot read image ({_short(e)})") from None


class _FileSeriesSource(_FrameSource):
    """A numbered series of image files; ``items`` are (file, frame-in-file) pairs."""

    def __init__(self, items: list[tuple[str, int]], frame_shape: tuple[int, ...], dtype: np.dtype, label: str):
        super().__init__(len(items), frame_shape, dtype, label)
        self.items = items

    def read_frame(self, i: int) -> np.ndarray:
        path, k = self.items[i]
        if not os.path.exists(path):
            raise InputFileError(f"{path}: no such file (frame {i} of the series)")
        return _read_single_image(path, k)


# ------------------------------------------------------------------------------------------------
# format detection
# ------------------------------------------------------------------------------------------------
def _magic(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(16)


def detect_format(path: str | Path) -> str:
    """Format name from the suffix, then from the first bytes; raises XRDError when unknown."""
    path = Path(path)
    if path.is_dir():
        return "series"
    if any(c in str(path) for c in "*?["):
        return "series"
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: empty file, not detector data")
    s = path.suffix.lower()
    if s in HDF5_SUFFIXES:
        return "hdf5"
    if s == ".npy":
        return "npy"
    if s == ".npz":
        return "npz"
    if s in TIFF_SUFFIXES:
        return "tiff"
    if s in FABIO_SUFFIXES:
        return "fabio"
    if s in (".csv", ".dat"):
        return "csv"
    if s == ".mca":
        return "mca"
    if s == ".mib":
        return "mib"
    if s == ".zip":
        return "zip"
    head = _magic(path)
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"MQ1,"):
        return "mib"
    if head.startswith(b"###CBF"):
        return "fabio"
    if head.lstrip().startswith(b"{"):
        return "fabio"  # EDF
    raise InputFileError(f"{path}: not a detector file (unrecognised format {s or 'without suffix'})")


# ------------------------------------------------------------------------------------------------
# HDF5 / NeXus
# ------------------------------------------------------------------------------------------------
def _walk_h5(f: h5py.File, root_dir: Path, follow_external: bool = True):
    """Yield (path, shape, dtype, external) for every numeric dataset, following existing external links."""
    seen: set = set()

    def rec(group: h5py.Group, prefix: str):
        for name in group:
            p = f"{prefix}/{name}" if prefix else name
            try:
                link = group.get(name, getlink=True)
            except Exception:
                continue
            if isinstance(link, h5py.ExternalLink):
                if not follow_external:
                    continue
                target = _external_target(root_dir, link)
                if not target.exists():
                    continue
                try:
                    obj = _open_h5(target)[link.path]
                except Exception:
                    continue
                if isinstance(obj, h5py.Dataset) and _is_numeric(obj.dtype):
                    yield p, tuple(obj.shape), obj.dtype, (str(target), link.path)
                continue
            try:
                obj = group[name]
            except Exception:
                continue  # dangling soft link
            if isinstance(obj, h5py.Group):
                try:
                    key = (obj.file.filename, h5py.h5o.get_info(obj.id).addr)
                except Exception:
                    key = (obj.file.filename, obj.name)
                if key in seen:
                    continue
                seen.add(key)
                yield from rec(obj, p)
            elif isinstance(obj, h5py.Dataset):
                if obj.dtype.fields is None and _is_numeric(obj.dtype):
                    yield p, tuple(obj.shape), obj.dtype, None

    yield from rec(f, "")


def _external_target(root_dir: Path, link: h5py.ExternalLink) -> Path:
    t = Path(link.filename)
    return t if t.is_absolute() else (root_dir / t)


def list_datasets(path: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """Numeric datasets of an HDF5 file as ``(path, shape, dtype)``, external links that exist included;
    for a ``.npz`` its arrays, for a ``.zip`` its Merlin ``.mib`` members (shape ``()``: read when opened).
    Each name is a valid ``dataset`` for :func:`open_stack`."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    if path.suffix.lower() in (".npz", ".zip"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile:
            raise InputFileError(f"{path}: not a readable zip archive") from None
        if path.suffix.lower() == ".npz" or (names and all(n.endswith(".npy") for n in names if not n.endswith("/"))):
            return [(k, shape, str(dt)) for k, (shape, dt, _) in _npz_members(path).items() if _is_numeric(dt)]
        return [(n, (), "mib") for n in sorted((n for n in names if n.lower().endswith(".mib")), key=_natural_key)]
    f = _open_h5(path)
    return [(p, s, str(np.dtype(d))) for p, s, d, _ in _walk_h5(f, path.resolve().parent)]


_DATA_LINK = re.compile(r"^data_(\d+)$")


def _eiger_links(group: h5py.Group) -> list[tuple[int, str]]:
    out = []
    for name in group:
        m = _DATA_LINK.match(name)
        if m:
            out.append((int(m.group(1)), name))
    return sorted(out)


def _h5_dataset_or_link(f: h5py.File, root: Path, dpath: str, fpath: Path) -> tuple[str, str, h5py.Dataset]:
    """Resolve ``dpath`` in ``f`` (following an external link by hand); returns (file, dataset path, dataset)."""
    parent, _, name = dpath.rstrip("/").rpartition("/")
    grp = f[parent] if parent else f
    link = grp.get(name, getlink=True) if name in grp else None
    if isinstance(link, h5py.ExternalLink):
        target = _external_target(root, link)
        if not target.exists():
            raise InputFileError(f"{target}: no such file (external link {dpath} of {fpath})")
        tf = _open_h5(target)
        if link.path not in tf:
            raise InputFileError(f"{target}: dataset {link.path} linked from {fpath}:{dpath} is missing")
        return str(target.resolve()), link.path, tf[link.path]
    obj = f[dpath]
    if not isinstance(obj, h5py.Dataset):
        raise InputFileError(f"{fpath}: {dpath} is a group, not a dataset")
    return str(fpath.resolve()), obj.name, obj


def _h5_value(obj: Any) -> tuple[Any, str | None]:
    v = obj[()]
    if isinstance(v, np.ndarray):
        if v.size == 0:
            return None, None
        v = v.ravel()[0] if v.size == 1 or v.dtype.kind in "SOU" else v
    if isinstance(v, (bytes, np.bytes_)):
        v = v.decode(errors="replace")
    units = obj.attrs.get("units")
    if isinstance(units, (bytes, np.bytes_)):
        units = units.decode(errors="replace")
    if isinstance(units, np.ndarray):
        units = str(units.ravel()[0])
    return v, (str(units).strip() if units is not None else None)


def _find_detector_group(f: h5py.File, dpath: str) -> list[str]:
    """Candidate groups holding the detector's metadata, best first."""
    cands = []
    parts = dpath.strip("/").split("/")
    for i in range(len(parts) - 1, 0, -1):
        g = "/".join(parts[:i])
        if g in f and isinstance(f[g], h5py.Group):
            cls = f[g].attrs.get("NX_class", b"")
            cls = cls.decode() if isinstance(cls, bytes) else str(cls)
            if cls == "NXdetector" or parts[i - 1] == "detector":
                cands.append(g)
    for entry in f:
        g = f"{entry}/instrument/detector"
        if g in f and g not in cands:
            cands.append(g)
    return cands


def _h5_metadata(f: h5py.File, dpath: str) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for g in _find_detector_group(f, dpath):
        for sub in ("", "/detectorSpecific"):
            grp = g + sub
            if grp not in f:
                continue
            for key, dst in _DETECTOR_META.items():
                if dst in meta or key not in f[grp]:
                    continue
                obj = f[grp][key]
                if not isinstance(obj, h5py.Dataset):
                    continue
                if key == "pixel_mask":
                    meta[dst] = (f"{grp}/{key}", obj)
                    continue
                try:
                    v, units = _h5_value(obj)
                except Exception:
                    continue
                if v is None:
                    continue
                meta[dst] = (v, units)
    return meta


def _length_m(v: float, units: str | None) -> float:
    if units is None:
        return float(v) if float(v) < 0.01 else float(v) * 1e-6  # bare numbers: metres, or micrometres if large
    return float(v) * _LENGTH_TO_M.get(units.lower(), 1.0)


def _time_s(v: float, units: str | None) -> float:
    if units is None:
        return float(v)
    return float(v) * _TIME_TO_S.get(units.lower(), 1.0)


def _axis_values(f: h5py.File, n_frames: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for entry in f:
        for base in (f"{entry}/sample", f"{entry}/instrument/positioners", f"{entry}/positioners"):
            if base not in f or not isinstance(f[base], h5py.Group):
                continue

            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and obj.ndim == 1 and _is_numeric(obj.dtype):
                    if obj.shape[0] == n_frames and n_frames > 1:
                        out.setdefault(name.split("/")[-1], np.asarray(obj[()]))

            f[base].visititems(visit)
    return out


def _pick_h5_dataset(found: list, frame_ndim_hint: int | None, fpath: Path) -> tuple[str, Any]:
    min_dims = 2 if frame_ndim_hint == 1 else 3
    cands = [c for c in found if len(c[1]) >= min_dims]
    if not cands:
        cands = [c for c in found if len(c[1]) >= 2]
    if not cands:
        raise InputFileError(f"{fpath}: no numeric dataset with 2 or more dimensions (not detector data)")

    def score(c):
        p, shape, _, _ = c
        base = p.rstrip("/").split("/")[-1]
        known = p.endswith("data/data") or p.endswith("detector/data")
        return (base not in _NOT_DETECTOR_DATA, math.prod(shape), known)

    best = max(cands, key=score)
    return best[0], best[3]


def _open_hdf5(path: Path, dataset: str | None, ndim: int | None) -> dict[str, Any]:
    f = _open_h5(path)
    root = path.resolve().parent
    resolved: list[tuple[str, str, h5py.Dataset]] = []
    dpath = dataset.strip() if dataset else None
    if dpath and dpath not in f:
        avail = [p for p, s, d, _ in _walk_h5(f, root) if len(s) >= 2][:6]
        raise InputFileError(
            f"{path}: dataset {dpath} not found (available: {', '.join(avail) if avail else 'none'})"
        )
    links_group = None
    if dpath is None:
        for entry in f:
            g = f"{entry}/data"
            if g in f and isinstance(f[g], h5py.Group) and _eiger_links(f[g]):
                links_group = g
                break
    elif isinstance(f[dpath], h5py.Group):
        if not _eiger_links(f[dpath]):
            raise InputFileError(f"{path}: {dpath} is a group, not a dataset")
        links_group = dpath.strip("/")
    if links_group is not None:
        for _, name in _eiger_links(f[links_group]):
            resolved.append(_h5_dataset_or_link(f, root, f"{links_group}/{name}", path))
        dpath = f"{links_group}/data_*"
        meta_path = f"{links_group}/data"
    else:
        if dpath is None:
            dpath, _ = _pick_h5_dataset(list(_walk_h5(f, root)), ndim, path)
        resolved.append(_h5_dataset_or_link(f, root, dpath, path))
        meta_path = dpath
    first = resolved[0][2]
    for fp, dp, ds in resolved:
        if ds.dtype.fields is not None or not _is_numeric(ds.dtype):
            raise InputFileError(f"{fp}:{dp}: data type {ds.dtype} is not numeric detector data")
        if ds.ndim == 0:
            raise InputFileError(f"{fp}:{dp}: a single number, not detector frames")
        if ds.shape[1:] != first.shape[1:] or ds.dtype != first.dtype:
            raise InputFileError(
                f"{fp}: frames {ds.shape[1:]} {ds.dtype} differ from the first data file's {first.shape[1:]} {first.dtype}"
            )
    total = (sum(ds.shape[0] for _, _, ds in resolved),) + tuple(first.shape[1:]) if first.ndim else ()
    if ndim is None:  # this package's outputs say whether they hold spectra or images
        own = first.attrs.get("frame_ndim")
        if isinstance(own, (int, np.integer)) and int(own) in (1, 2) and first.ndim >= int(own):
            ndim = int(own)
    frame_ndim = _frame_ndim_for(total if len(resolved) > 1 else tuple(first.shape), ndim)
    arrays = [_h5_array(fp, dp, ds, frame_ndim) for fp, dp, ds in resolved]
    data = da.concatenate(arrays, axis=0) if len(arrays) > 1 else arrays[0]
    grid_note = None
    if data.ndim == frame_ndim + 1:
        holders = [f[links_group]] if links_group is not None else [first, first.parent]
        grid = _h5_scan_shape(holders, data.shape[0])
        if grid is not None:
            data = data.reshape(grid + tuple(data.shape[1:]))
            grid_note = f"scan shape {'x'.join(map(str, grid))} from the file's scan_shape attribute"
    external = [fp for fp, _, _ in resolved if fp != str(path.resolve())]
    if external:
        fmt = "hdf5-master"
    elif any("NX_class" in f[e].attrs for e in f if isinstance(f[e], h5py.Group)):
        fmt = "nexus"
    else:
        fmt = "hdf5"
    out: dict[str, Any] = {"data": data, "format": fmt, "dataset": dpath, "notes": [], "frame_ndim": frame_ndim}
    if grid_note:
        out["notes"].append(grid_note)
    if external:
        out["notes"].append("data files: " + ", ".join(Path(p).name for p in external))
        out["files"] = tuple(str(p) for p in external)
    meta = _h5_metadata(f, meta_path)
    frame_shape = tuple(data.shape[-frame_ndim:])
    if "pixel_mask" in meta:
        mpath, obj = meta["pixel_mask"]
        pm = np.asarray(obj[()])
        while pm.ndim > frame_ndim and pm.shape[0] == 1:
            pm = pm[0]
        if pm.shape == frame_shape:
            out["static_valid"] = valid_from_pixel_mask(pm)
        else:
            out["notes"].append(f"{mpath} of shape {pm.shape} ignored: frames are {frame_shape}")
    for key, conv in (("bit_depth", int), ("saturation", float)):
        if key in meta:
            try:
                v = conv(meta[key][0])
                if v > 0:
                    out[key] = v
            except (TypeError, ValueError):
                pass
    if "count_time" in meta:
        try:
            out["count_time"] = _time_s(*meta["count_time"])
        except (TypeError, ValueError):
            pass
    if "x_pixel_size" in meta and "y_pixel_size" in meta:
        try:
            out["pixel_size"] = (_length_m(*meta["y_pixel_size"]), _length_m(*meta["x_pixel_size"]))
        except (TypeError, ValueError):
            pass
    if "beam_center_x" in meta and "beam_center_y" in meta:
        try:
            bx, by = float(meta["beam_center_x"][0]), float(meta["beam_center_y"][0])
            if bx == 0 and by == 0:
                out["notes"].append("beam_center_x/y are 0 in the file (not set): beam centre unknown")
            else:
                out["beam_center"] = (by, bx)
        except (TypeError, ValueError):
            pass
    n_lead = math.prod(data.shape[:-frame_ndim]) if data.ndim > frame_ndim else 1
    out["axis_values"] = _axis_values(f, n_lead)
    hint = _stem_scan_hint(path, n_lead)
    if hint:
        out["notes"].append(hint)
    return out


def _h5_scan_shape(holders: list, n_frames: int) -> tuple[int, ...] | None:
    """The 2-D scan grid a flat stack of frames declares in a ``scan_shape`` attribute (of the data set
    or of its NXdata group: rows, columns), when it is two positive integers whose product is the frame
    count; None otherwise (a wrong attribute is ignored, never trusted)."""
    for h in holders:
        raw = h.attrs.get("scan_shape")
        if raw is None:
            continue
        try:
            grid = tuple(int(v) for v in np.atleast_1d(np.asarray(raw)))
        except (TypeError, ValueError):
            continue
        if len(grid) == 2 and min(grid) > 0 and math.prod(grid) == n_frames and np.asarray(raw).dtype.kind in "iu":
            return grid
    return None


def _h5_array(fp: str, dp: str, ds: h5py.Dataset, frame_ndim: int) -> da.Array:
    shape = tuple(ds.shape)
    if ds.ndim > frame_ndim:
        align = ds.chunks[len(shape) - frame_ndim - 1] if ds.chunks else 1
        chunks = _lead_chunks(shape, frame_ndim, ds.dtype, align)
    else:
        chunks = shape
    src = _H5Source(fp, dp, shape, ds.dtype)
    return _lazy_array(src, shape, ds.dtype, chunks, _token(fp, dp))


def _stem_scan_hint(path: Path, n_frames: int) -> str | None:
    """DECTRIS ARINA writes the scan grid in a sibling ``<name>.h5`` ("STEM Metadata" attributes)."""
    name = path.name
    if not name.endswith("_master.h5"):
        return None
    sib = path.with_name(name[: -len("_master.h5")] + ".h5")
    if not sib.exists():
        return None
    try:
        with h5py.File(sib, "r") as g:
            if "STEM Metadata" not in g:
                return None
            a = g["STEM Metadata"].attrs
            nx, ny = int(np.ravel(a["NumPixelsX"])[0]), int(np.ravel(a["NumPixelsY"])[0])
    except Exception:
        return None
    if nx * ny == n_frames:
        return f"{sib.name} gives a {ny}x{nx} STEM scan: pass --scan-shape {ny}x{nx}"
    return None


# ------------------------------------------------------------------------------------------------
# numpy
# ------------------------------------------------------------------------------------------------
def _memmap_array(arr: np.ndarray, path: Path, key: str, frame_ndim: int, shape: tuple[int, ...]) -> da.Array:
    """Dask array over ``arr`` with ``shape`` (same data, maybe one more leading axis)."""
    chunks = _lead_chunks(shape, frame_ndim, arr.dtype) if len(shape) > frame_ndim else shape
    if isinstance(arr, np.memmap) and getattr(arr, "filename", None) and (arr.flags.c_contiguous or arr.flags.f_contiguous):
        order = "C" if arr.flags.c_contiguous else "F"
        src: Any = _MemmapSource(arr.filename, arr.dtype, arr.offset, shape if order == "C" else arr.shape, order)
        if order == "F" and shape != arr.shape:
            return _lazy_array(src, arr.shape, arr.dtype, arr.shape, _token(path, key)).reshape(shape)
    else:
        src = np.asarray(arr).reshape(shape)
    return _lazy_array(src, shape, arr.dtype, chunks, _token(path, key))


def _axis_row(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """A (2, N) or (N, 2) array whose first row/column is a strictly monotonic axis: (axis, values)."""
    if arr.ndim != 2 or 2 not in arr.shape or max(arr.shape) < MIN_FRAME[1]:
        return None
    a = np.asarray(arr if arr.shape[0] == 2 else arr.T, dtype=np.float64)
    d0, d1 = np.diff(a[0]), np.diff(a[1])
    mono0 = bool(np.all(d0 > 0) or np.all(d0 < 0))
    mono1 = bool(np.all(d1 > 0) or np.all(d1 < 0))
    if mono0 and not mono1:
        return a[0], (arr if arr.shape[0] == 2 else arr.T)[1:2]
    return None


def _open_npy(path: Path, ndim: int | None) -> dict[str, Any]:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise InputFileError(f"{path}: not a readable .npy array ({_short(e)})") from None
    return _numpy_result(arr, path, "", ndim, "npy")


def _numpy_result(arr: np.ndarray, path: Path, key: str, ndim: int | None, fmt: str) -> dict[str, Any]:
    label = f"{path}:{key}" if key else str(path)
    if arr.dtype.fields is not None or not _is_numeric(arr.dtype):
        raise InputFileError(f"{label}: data type {arr.dtype} is not numeric detector data")
    if arr.ndim == 0:
        raise InputFileError(f"{label}: a single number, not detector frames")
    out: dict[str, Any] = {"format": fmt, "dataset": key or None, "notes": [], "axis_values": {}}
    frame_ndim = _frame_ndim_for(arr.shape, ndim)
    if frame_ndim == 1:
        ax = _axis_row(arr)
        if ax is not None:
            axis, vals = ax
            out["axis_values"]["x"] = axis
            out["notes"].append("first row is the x axis (strictly monotonic); the other row is the spectrum")
            arr = np.ascontiguousarray(vals)
    shape = (1,) + tuple(arr.shape) if arr.ndim == frame_ndim else tuple(arr.shape)
    out["data"] = _memmap_array(arr, path, key, frame_ndim, shape)
    out["frame_ndim"] = frame_ndim
    return out


def _npz_members(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype, zipfile.ZipInfo]]:
    out = {}
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputFileError(f"{path}: not a readable .npz archive") from None
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                    else:
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            except Exception:
                continue
            out[info.filename[:-4]] = (tuple(shape), np.dtype(dtype), info)
    return out


def _open_npz(path: Path, dataset: str | None, ndim: int | None) -> dict[str, Any]:
    members = _npz_members(path)
    if dataset:
        if dataset not in members:
            raise InputFileError(f"{path}: array {dataset} not found (available: {', '.join(members) or 'none'})")
        key = dataset
    else:
        num = {k: v for k, v in members.items() if _is_numeric(v[1]) and v[1].fields is None and len(v[0]) >= 1}
        if not num:
            raise InputFileError(f"{path}: no numeric array in the archive (not detector data)")
        key = max(num, key=lambda k: math.prod(num[k][0]))
    shape, dtype, info = members[key]
    if info.compress_type == zipfile.ZIP_STORED and not dtype.hasobject:
        # uncompressed member: map it straight from the archive
        with open(path, "rb") as fh:
            fh.seek(info.header_offset)
            local = fh.read(30)
            n_name = int.from_bytes(local[26:28], "little")
            n_extra = int.from_bytes(local[28:30], "little")
            start = info.header_offset + 30 + n_name + n_extra
            fh.seek(start)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                _, fortran, _ = np.lib.format.read_array_header_1_0(fh)
            else:
                _, fortran, _ = np.lib.format.read_array_header_2_0(fh)
            offset = fh.tell()
        if math.prod(shape) == 0:
            arr = np.zeros(shape, dtype)
        else:
            arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    else:
        with np.load(path, allow_pickle=False) as z:
            arr = z[key]
    return _numpy_result(arr, path, key, ndim, "npz")


# ------------------------------------------------------------------------------------------------
# TIFF and fabio
# ------------------------------------------------------------------------------------------------
def _tiff_result_layout(tif, shape: tuple[int, ...]) -> tuple[tuple[int, ...], int | None] | None:
    """``(shape, frame_ndim)`` recorded by this package's TIFF writer (``result_shape``), if it fits."""
    try:
        meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    except Exception:
        return None
    want = meta.get("result_shape") if isinstance(meta, dict) else None
    if not isinstance(want, (list, tuple)) or not all(isinstance(x, int) and x > 0 for x in want):
        return None
    if math.prod(want) != math.prod(shape) or len(want) < 1:
        return None
    nd = meta.get("frame_ndim")
    return tuple(want), (int(nd) if nd in (1, 2) and len(want) >= nd else None)


def _open_tiff(path: Path, ndim: int | None) -> dict[str, Any]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as e:
        try:
            return _open_fabio(path, ndim)
        except XRDError:
            raise InputFileError(f"{path}: not a readable TIFF ({_short(e)})") from None
    with tif:
        series = tif.series[0]
        shape, dtype, axes = tuple(series.shape), series.dtype, series.axes
        if "S" in axes and shape[axes.index("S")] > 1:
            raise InputFileError(f"{path}: colour (RGB) TIFF, not detector data")
        if not _is_numeric(dtype):
            raise InputFileError(f"{path}: data type {dtype} is not numeric detector data")
        offset = series.dataoffset
        n_pages = len(series.pages)
        own = _tiff_result_layout(tif, shape)
    if own is not None:  # this package's output: its scan grid and frame dimensionality as written
        shape, own_ndim = own
        ndim = own_ndim if ndim is None else ndim
    frame_ndim = _frame_ndim_for(shape, ndim)
    if len(shape) == frame_ndim:
        shape = (1,) + shape
    name = _token(path, "tiff")
    if offset is not None:
        try:
            arr = tifffile.memmap(str(path), mode="r")
            data = _memmap_array(arr, path, "tiff", frame_ndim, shape)
            return {"data": data, "format": "tiff", "frame_ndim": frame_ndim, "notes": []}
        except Exception:
            pass
    frame = shape[-2:]
    n = math.prod(shape[:-2])
    if n != n_pages and n_pages != 1:
        raise InputFileError(f"{path}: TIFF series shape {shape} does not match its {n_pages} pages")
    if n_pages == 1 and n > 1:  # one page holding several frames: read it whole
        src = _TiffSource(str(path), 1, shape, dtype)
        data = _lazy_array(src, (1,) + shape, dtype, (1,) + shape, name)[0]
    else:
        src = _TiffSource(str(path), n, frame, dtype)
        flat = _lazy_array(src, (n,) + frame, dtype, _lead_chunks((n,) + frame, 2, dtype), name)
        data = flat.reshape(shape) if len(shape) > 3 else flat
    if frame_ndim == 1:
        data = data.reshape((-1, shape[-1])) if data.ndim > 2 else data
    return {"data": data, "format": "tiff", "frame_ndim": frame_ndim, "notes": []}


def _fabio_nframes(path: str) -> tuple[int, tuple[int, ...], np.dtype, dict]:
    import fabio

    if path.lower().endswith(".cbf"):
        _check_cbf(path)
    try:
        with _quiet_readers():
            img = fabio.open(path)
    except Exception as e:
        raise InputFileError(f"{path}: not a readable image file ({_short(e)})") from None
    data = np.asarray(img.data) if img.data is not None else None
    if data is None or data.ndim != 2:
        raise InputFileError(f"{path}: no 2D image found")
    header = dict(img.header) if getattr(img, "header", None) else {}
    n = int(getattr(img, "nframes", 1) or 1)
    try:
        img.close()
    except Exception:
        pass
    if path.lower().endswith(".edf"):
        _check_edf(path, header, tuple(data.shape), data.dtype, n)
    return n, tuple(data.shape), data.dtype, header


SPE_HEADER_BYTES = 4100
SPE_DTYPES = {0: np.float32, 1: np.int32, 2: np.int16, 3: np.uint16, 5: np.float64, 6: np.uint8, 8: np.uint32}


def _open_spe(path: Path) -> dict[str, Any]:
    """Princeton Instruments SPE (versions 2 and 3): a 4100-byte header, then every frame in a row.

    fabio reads the header but gives only the first frame of a series, so the frames are mapped here,
    lazily, from the header's size, data type and frame count (offsets 42, 656, 108, 1446).
    """
    size = path.stat().st_size
    if size < SPE_HEADER_BYTES:
        raise InputFileError(f"{path}: {size} bytes, shorter than the {SPE_HEADER_BYTES}-byte SPE header")
    with open(path, "rb") as f:
        head = f.read(SPE_HEADER_BYTES)
    w = int(np.frombuffer(head, "<u2", 1, 42)[0])
    h = int(np.frombuffer(head, "<u2", 1, 656)[0])
    code = int(np.frombuffer(head, "<u2", 1, 108)[0])
    n = int(np.frombuffer(head, "<i4", 1, 1446)[0])
    xml_at = int(np.frombuffer(head, "<u8", 1, 678)[0])
    if code not in SPE_DTYPES:
        raise InputFileError(f"{path}: SPE data type code {code} is not one of {sorted(SPE_DTYPES)}")
    if w < 1 or h < 1 or n < 1:
        raise InputFileError(f"{path}: SPE header gives {n} frame(s) of {h} x {w} pixels")
    dtype = np.dtype(SPE_DTYPES[code]).newbyteorder("<")
    frame_bytes = w * h * dtype.itemsize
    end = xml_at if xml_at else size  # version 3 keeps an XML footer after the frames
    have = (end - SPE_HEADER_BYTES) // frame_bytes
    if have < n:
        raise InputFileError(f"{path}: truncated SPE file: the header announces {n} frame(s) of {h} x {w}, "
                             f"the file holds {max(have, 0)}")
    src = _MemmapSource(str(path), dtype, SPE_HEADER_BYTES, (n, h, w), "C")
    data = _lazy_array(src, (n, h, w), src.dtype, _lead_chunks((n, h, w), 2, src.dtype), _token(path, "spe"))
    notes = [] if n == 1 else [f"{n} frames in one SPE file"]
    return {"data": data, "format": "spe", "frame_ndim": 2, "notes": notes}


def _open_fabio(path: Path, ndim: int | None) -> dict[str, Any]:
    if path.suffix.lower() == ".spe":
        return _open_spe(path)
    n, frame, dtype, header = _fabio_nframes(str(path))
    if not _is_numeric(dtype):
        raise InputFileError(f"{path}: data type {dtype} is not numeric detector data")
    items = [(str(path), i) for i in range(n)]
    src = _FileSeriesSource(items, frame, dtype, str(path))
    data = _lazy_array(src, (n,) + frame, dtype, _lead_chunks((n,) + frame, 2, dtype), _token(path, "fabio"))
    fmt = Path(path).suffix.lower().lstrip(".") or "fabio"
    out = {"data": data, "format": fmt, "frame_ndim": 2, "notes": []}
    out.update(_fabio_meta(header))
    return out


def _fabio_meta(header: dict) -> dict[str, Any]:
    """Pixel size, count time and saturation from a Pilatus CBF/TIFF or EDF header, where present."""
    out: dict[str, Any] = {}
    text = " ".join(str(v) for v in header.values())
    m = re.search(r"Pixel_size\s+([0-9.eE+-]+)\s*m\s*x\s*([0-9.eE+-]+)\s*m", text)
    if m:
        out["pixel_size"] = (float(m.group(2)), float(m.group(1)))
    m = re.search(r"Exposure_time\s+([0-9.eE+-]+)\s*s", text)
    if m:
        out["count_time"] = float(m.group(1))
    m = re.search(r"Count_cutoff\s+([0-9]+)\s*counts", text)
    if m:
        out["saturation"] = float(m.group(1))
    return out


def _series_files(path: Path) -> list[str]:
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SERIES_SUFFIXES]
        if not files:
            raise InputFileError(f"{path}: folder holds no frame files (.tif, .edf, .cbf, ...)")
        counts: dict[str, int] = {}
        for p in files:
            counts[p.suffix.lower()] = counts.get(p.suffix.lower(), 0) + 1
        ext = max(counts, key=lambda e: counts[e])
        files = [str(p) for p in files if p.suffix.lower() == ext]
    else:
        files = [p for p in glob.glob(str(path)) if os.path.isfile(p)]
        if not files:
            raise InputFileError(f"{path}: no files match this pattern")
    return sorted(files, key=_natural_key)


def _open_series(path: Path, ndim: int | None) -> dict[str, Any]:
    files = _series_files(path)
    suffix = Path(files[0]).suffix.lower()
    if suffix == ".mca":
        return _open_mca_files(files, str(path))
    notes = [f"{len(files)} files, {Path(files[0]).name} ... {Path(files[-1]).name}"]
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(files[0]) as tif:
                s = tif.series[0]
                frame, dtype, npages = tuple(s.shape), s.dtype, len(tif.pages)
            header: dict = {}
        except Exception:
            npages = 1
            _, frame, dtype, header = _fabio_nframes(files[0])
        if len(frame) != 2 or npages != 1:
            raise InputFileError(f"{files[0]}: a series needs one 2D image per file, this file has shape {frame}")
        items = [(f, 0) for f in files]
    else:
        n0, frame, dtype, header = _fabio_nframes(files[0])
        if n0 == 1:
            items = [(f, 0) for f in files]
        else:
            items = []
            for f in files:
                n, fr, _, _ = _fabio_nframes(f)
                items += [(f, i) for i in range(n)]
    if not _is_numeric(dtype):
        raise InputFileError(f"{files[0]}: data type {dtype} is not numeric detector data")
    for f in {files[len(files) // 2], files[-1]}:
        try:
            fr = _read_single_image(f).shape
        except XRDError:
            raise
        if fr != frame:
            raise InputFileError(f"{f}: frame shape {fr} differs from {frame} of {Path(files[0]).name}")
    src = _FileSeriesSource(items, frame, dtype, str(path))
    n = len(items)
    data = _lazy_array(src, (n,) + frame, dtype, _lead_chunks((n,) + frame, 2, dtype), _token(str(path), *files[:1], n))
    out = {"data": data, "format": f"{suffix.lstrip('.')}-series", "frame_ndim": 2, "notes": notes}
    out.update(_fabio_meta(header))
    return out


# ------------------------------------------------------------------------------------------------
# 1D spectra
# ------------------------------------------------------------------------------------------------
def _to_float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def _overflow_last(data: np.ndarray) -> bool:
    """Whether the last channel is an overflow (integral) bin.

    Rule: its mean over the spectra is above every other channel's mean and more than ten times the
    mean of the 16 channels before it (plus one count).
    """
    if data.shape[1] < 32:
        return False
    m = data.mean(axis=0)
    last, others = m[-1], m[:-1]
    return bool(last > others.max() and last > 10 * (others[-16:].mean() + 1.0))


def _open_csv(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(errors="strict")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: binary content, not a text table of spectra") from None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise InputFileError(f"{path}: no numbers in this text file")
    first = lines[0]
    delim = max([",", ";", "\t"], key=first.count)
    if first.count(delim) == 0:
        delim = None  # whitespace
    split = (lambda s: s.split(delim)) if delim else (lambda s: s.split())
    head = [c.strip().strip('"') for c in split(first)]
    header = None
    if any(_to_float(c) is None for c in head):
        header, lines = head, lines[1:]
    rows = []
    for k, ln in enumerate(lines):
        cells = split(ln)
        vals = [_to_float(c.strip().strip('"')) for c in cells]
        if any(v is None for v in vals):
            raise InputFileError(f"{path}: line {k + 1 + (header is not None)} is not numeric")
        rows.append(vals)
    if not rows:
        raise InputFileError(f"{path}: no numeric rows (a header only)")
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise InputFileError(f"{path}: rows have different numbers of columns")
    data = np.asarray(rows, dtype=np.float64)
    notes = []
    cols = list(range(width))
    # index column: 0..N-1 (or 1..N) with an empty / non-numeric header cell or no header
    c0 = data[:, 0]
    n = data.shape[0]
    idx_header = header is None or _to_float(header[0]) is None
    if width > 1 and idx_header and (np.array_equal(c0, np.arange(n)) or np.array_equal(c0, np.arange(1, n + 1))):
        if n > 1 or header is not None:
            cols = cols[1:]
            notes.append("column 0 is a row index: dropped")
    marked = header is not None and any(w in header[-1].lower() for w in ("overflow", "over", "ovf"))
    if marked or _overflow_last(data[:, cols]):
        cols = cols[:-1]
        notes.append("last column is an overflow bin: dropped")
    data = data[:, cols]
    axis: dict[str, np.ndarray] = {}
    if header is not None:
        hv = [_to_float(header[c]) if c < len(header) else None for c in cols]
        if all(v is not None for v in hv):
            axis["energy_keV"] = np.asarray(hv, dtype=np.float64)
    if np.all(np.isfinite(data)) and np.all(data == np.round(data)) and np.abs(data).max(initial=0) < 2**31:
        data = data.astype(np.int32 if data.min(initial=0) < 0 else np.uint32)
    arr = da.from_array(data, chunks=_lead_chunks(data.shape, 1, data.dtype), name=_token(path, "csv"))
    return {"data": arr, "format": "csv", "frame_ndim": 1, "axis_values": axis, "notes": notes}


def _parse_mca(path: str) -> tuple[np.ndarray, dict[str, float]]:
    try:
        text = Path(path).read_text(errors="strict")
    except UnicodeDecodeError:
        raise InputFileError(f"{path}: binary content, not an .mca spectrum") from None
    meta: dict[str, float] = {}
    if "<<DATA>>" in text:
        body = text.split("<<DATA>>", 1)[1].split("<<END>>", 1)[0]
        for key, name in (("LIVE_TIME", "live_time"), ("REAL_TIME", "real_time")):
            m = re.search(rf"^{key}\s*-\s*([0-9.eE+-]+)", text, flags=re.M)
            if m:
                meta[name] = float(m.group(1))
    else:
        body = text
    vals = []
    for ln in body.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("#", "<<")):
            continue
        v = _to_float(ln.split()[0])
        if v is None:
            raise InputFileError(f"{path}: line {ln[:30]!r} is not a number (one count a line expected)")
        vals.append(v)
    if not vals:
        raise InputFileError(f"{path}: no counts found")
    return np.asarray(vals), meta


def _open_mca_files(files: list[str], label: str) -> dict[str, Any]:
    specs, metas = [], []
    for f in files:
        s, m = _parse_mca(f)
        specs.append(s)
        metas.append(m)
    n = len(specs[0])
    for f, s in zip(files, specs):
        if len(s) != n:
            raise InputFileError(f"{f}: {len(s)} channels, {Path(files[0]).name} has {n}")
    data = np.stack(specs)
    if np.all(data == np.round(data)) and data.min() >= 0 and data.max() < 2**32 - 1:
        data = data.astype(np.uint32)
    out: dict[str, Any] = {
        "data": da.from_array(data, chunks=_lead_chunks(data.shape, 1, data.dtype), name=_token(label, *files[:1])),
        "format": "mca",
        "frame_ndim": 1,
        "notes": [],
    }
    if metas and "live_time" in metas[0]:
        out["count_time"] = metas[0]["live_time"]
    return out


# ------------------------------------------------------------------------------------------------
# Merlin .mib (4D-STEM)
# ------------------------------------------------------------------------------------------------
_MIB_DTYPES = {"U01": ">u1", "U08": ">u1", "U16": ">u2", "U32": ">u4", "U64": ">u8"}


def _mib_layout(head: bytes, label: str) -> tuple[int, tuple[int, int], np.dtype]:
    f = head.split(b",")
    if len(f) < 7 or f[0] != b"MQ1":
        raise InputFileError(f"{label}: not a Merlin .mib file (no MQ1 frame header)")
    try:
        hlen = int(f[2])
        nx, ny = int(f[4]), int(f[5])
        code = f[6].decode().strip()
    except (ValueError, UnicodeDecodeError):
        raise InputFileError(f"{label}: unreadable Merlin frame header") from None
    if code not in _MIB_DTYPES:
        raise InputFileError(f"{label}: Merlin pixel format {code} (raw) is not supported; save frames as U08/U16/U32")
    return hlen, (ny, nx), np.dtype(_MIB_DTYPES[code])


def _parse_hdr(text: str) -> dict[str, str]:
    out = {}
    for ln in text.splitlines():
        if ":" in ln:
            k, _, v = ln.partition(":")
            out[k.strip()] = v.strip()
    return out


def _open_mib_file(mib: Path, label: str, hdr_text: str | None, offset: int = 0, size: int | None = None) -> dict:
    with open(mib, "rb") as fh:
        fh.seek(offset)
        head = fh.read(768)
    hlen, frame, dtype = _mib_layout(head, label)
    size = (mib.stat().st_size - offset) if size is None else size
    rec = hlen + math.prod(frame) * dtype.itemsize
    n = size // rec
    if n < 1:
        raise InputFileError(f"{label}: shorter than one Merlin frame")
    rtype = np.dtype([("hdr", f"S{hlen}"), ("img", dtype, frame)])
    imgs = _MemmapSource(mib, rtype, offset, (n,) + frame, field="img", record_shape=(n,))
    notes = []
    if size % rec:
        notes.append(f"{size % rec} trailing bytes after {n} frames ignored")
    hdr = _parse_hdr(hdr_text) if hdr_text else {}
    out: dict[str, Any] = {"format": "mib", "frame_ndim": 2, "notes": notes}
    depth = hdr.get("Counter Depth (number)")
    try:
        depth_i = int(depth) if depth else None
    except ValueError:
        depth_i = None
    if depth_i and 1 < depth_i < dtype.itemsize * 8:
        out["bit_depth"] = depth_i  # 2**depth - 1 is the saturated count
    scan = None
    try:
        fpt = int(hdr.get("Frames per Trigger (Number)", "1"))
        if fpt > 1 and n % fpt == 0:
            scan = (n // fpt, fpt)
    except ValueError:
        pass
    name = _token(mib, offset, label)
    data = _lazy_array(imgs, imgs.shape, imgs.dtype, _lead_chunks(imgs.shape, 2, imgs.dtype), name)
    if scan is not None:
        data = data.reshape(scan + frame)
        notes.append(f"scan shape {scan[0]}x{scan[1]} from 'Frames per Trigger' in the .hdr")
    out["data"] = data
    return out


def _extract_dir(zpath: Path) -> Path:
    st = zpath.stat()
    h = hashlib.sha1(f"{zpath.resolve()}|{st.st_mtime_ns}|{st.st_size}".encode()).hexdigest()[:16]
    d = Path(tempfile.gettempdir()) / "napari-xrd-denoise-unzipped" / h
    d.mkdir(parents=True, exist_ok=True)
    return d


def _open_zip(path: Path, dataset: str | None, ndim: int | None) -> dict[str, Any]:
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise InputFileError(f"{path}: not a readable zip archive") from None
    with zf:
        names = zf.namelist()
        if all(n.endswith(".npy") for n in names if not n.endswith("/")) and names:
            return _open_npz(path, dataset, ndim)
        mibs = sorted([n for n in names if n.lower().endswith(".mib")], key=_natural_key)
        if not mibs:
            raise InputFileError(f"{path}: the archive holds no .mib or .npy data")
        if dataset:
            if dataset not in mibs:
                raise InputFileError(f"{path}: member {dataset} not found (available: {', '.join(mibs)})")
            member = dataset
        else:
            member = mibs[0]
        info = zf.getinfo(member)
        hdr_name = member[:-4] + ".hdr"
        hdr = zf.read(hdr_name).decode(errors="replace") if hdr_name in names else None
        label = f"{path}:{member}"
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as fh:
                fh.seek(info.header_offset)
                local = fh.read(30)
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            out = _open_mib_file(path, label, hdr, offset=start, size=info.file_size)
        else:
            target = _extract_dir(path) / Path(member).name
            if not target.exists() or target.stat().st_size != info.file_size:
                tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    while True:
                        b = src.read(2**22)
                        if not b:
                            break
                        dst.write(b)
                os.replace(tmp, target)
            out = _open_mib_file(target, label, hdr)
            out["notes"].append(f"{member} extracted to {target}")
    out["dataset"] = member
    if len(mibs) > 1:
        out["notes"].append("other acquisitions in the archive: " + ", ".join(m for m in mibs if m != member))
    return out


def _open_mib(path: Path) -> dict[str, Any]:
    hdr_path = path.with_suffix(".hdr")
    hdr = hdr_path.read_text(errors="replace") if hdr_path.exists() else None
    return _open_mib_file(path, str(path), hdr)


# ------------------------------------------------------------------------------------------------
# masks and geometry
# ------------------------------------------------------------------------------------------------
def _read_mask_array(path: Path) -> np.ndarray:
    s = path.suffix.lower()
    try:
        if s == ".npy":
            return np.load(path, allow_pickle=False)
        if s == ".npz":
            with np.load(path, allow_pickle=False) as z:
                key = max(z.files, key=lambda k: z[k].size)
                return z[key]
        if s in HDF5_SUFFIXES:
            f = _open_h5(path)
            found = [c for c in _walk_h5(f, path.resolve().parent) if len(c[1]) >= 2]
            if not found:
                raise InputFileError(f"{path}: no 2D mask dataset")
            named = [c for c in found if "mask" in c[0].rsplit("/", 1)[-1].lower()]
            p = (named or found)[0][0]
            return np.asarray(f[p][()])
        if s in TIFF_SUFFIXES:
            import tifffile

            try:
                return tifffile.imread(path)
            except Exception:
                pass
        import fabio

        return np.asarray(fabio.open(str(path)).data)
    except XRDError:
        raise
    except FileNotFoundError:
        raise InputFileError(f"{path}: no such file") from None
    except Exception as e:
        raise InputFileError(f"{path}: not a readable mask file ({_short(e)})") from None


def load_mask(path: str | Path, frame_shape: Sequence[int] | None = None, *, nonzero_is_valid: bool = False) -> np.ndarray:
    """Validity (``True`` = usable) from a mask file: npy, npz, TIFF, EDF, HDF5.

    Convention of pyFAI and Dioptas masks: nonzero = masked. ``nonzero_is_valid=True`` reads masks
    in the opposite convention (e.g. scikit-ued beam-block masks, nonzero = keep).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such mask file (--mask)")
    m = np.asarray(_read_mask_array(path))
    if not _is_numeric(m.dtype):
        raise InputFileError(f"{path}: mask of type {m.dtype} is not numeric")
    while m.ndim > 2 and m.shape[0] == 1:
        m = m[0]
    if frame_shape is not None and tuple(m.shape) != tuple(frame_shape):
        raise InputFileError(f"{path}: mask shape {m.shape} does not match frame shape {tuple(frame_shape)} (--mask)")
    valid = (m != 0) if nonzero_is_valid else valid_from_user_mask(m)
    if m.dtype.kind == "f":
        valid &= np.isfinite(m)
    return valid


def load_poni(path: str | Path, frame_shape: Sequence[int]) -> tuple[dict[str, Any], tuple[float, float]]:
    """PONI parameters and the direct-beam position ``(y, x)`` in array-index pixels (pixel i centred at i).

    Uses :mod:`napari_xrd_denoise.physics.geometry` (pyFAI's Fit2D centre less half a pixel, tilts
    and detector orientation included).
    """
    from ..physics.geometry import beam_center_from_poni
    from ..physics.geometry import load_poni as _read_poni

    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file (--poni)")
    geo = _read_poni(path)
    try:
        center = beam_center_from_poni(geo, tuple(int(s) for s in frame_shape[-2:]))
    except XRDError:
        raise
    except Exception as e:
        raise InputFileError(f"{path}: cannot compute the beam centre from this PONI file ({_short(e)})") from None
    geo = {k: (int(v) if k == "orientation" else v) for k, v in geo.items()}
    cfg = geo.get("detector_config")
    if isinstance(cfg, dict):
        geo["detector_config"] = {k: (int(v) if k == "orientation" and v is not None else v) for k, v in cfg.items()}
        geo.setdefault("pixel1", cfg.get("pixel1"))
        geo.setdefault("pixel2", cfg.get("pixel2"))
    geo["file"] = str(path)
    return geo, (float(center[0]), float(center[1]))


def _check_poni_detector(path: str | Path, geo: dict[str, Any], stack: ScanStack) -> None:
    """Refuse a PONI file of another detector: its detector's shape (when the PONI names one) must be the
    frames', its pixel size (within 2 %) the file's own when the file states one; rings computed with
    another detector's geometry would be wrong everywhere."""
    from ..physics.geometry import make_integrator

    try:
        det = make_integrator(geo).detector
        shape = tuple(int(x) for x in det.max_shape) if getattr(det, "max_shape", None) else None
        pix = (float(det.pixel1), float(det.pixel2))
    except Exception:
        return  # nothing to compare
    frame = tuple(int(x) for x in stack.frame_shape)
    if shape is not None and shape != frame:
        raise InputFileError(f"{path}: the PONI's detector is {shape[0]}x{shape[1]} pixels but the frames of "
                             f"{stack.label} are {frame[0]}x{frame[1]} (a PONI of another detector? --poni)")
    own = stack.pixel_size
    if own is not None and all(p > 0 for p in pix) and any(abs(a / b - 1) > 0.02 for a, b in zip(pix, own)):
        raise InputFileError(f"{path}: the PONI's pixels are {pix[0] * 1e6:.1f}x{pix[1] * 1e6:.1f} um but "
                             f"{stack.label} states {own[0] * 1e6:.1f}x{own[1] * 1e6:.1f} um (a PONI of another "
                             "detector? --poni)")


# ------------------------------------------------------------------------------------------------
# the entry point
# ------------------------------------------------------------------------------------------------
def _dispatch(fmt: str, path: Path, dataset: str | None, ndim: int | None) -> dict[str, Any]:
    """Open ``path`` with the reader of its format."""
    if fmt == "hdf5":
        return _open_hdf5(path, dataset, ndim)
    elif fmt == "npy":
        return _open_npy(path, ndim)
    elif fmt == "npz":
        return _open_npz(path, dataset, ndim)
    elif fmt == "tiff":
        return _open_tiff(path, ndim)
    elif fmt == "fabio":
        return _open_fabio(path, ndim)
    elif fmt == "series":
        return _open_series(path, ndim)
    elif fmt == "csv":
        return _open_csv(path)
    elif fmt == "mca":
        return _open_mca_files([str(path)], str(path))
    elif fmt == "mib":
        return _open_mib(path)
    elif fmt == "zip":
        return _open_zip(path, dataset, ndim)
    else:  # pragma: no cover - detect_format returns only the names above
        raise InputFileError(f"{path}: unsupported format {fmt}")


def open_stack(
    path: str | Path,
    dataset: str | None = None,
    scan_shape: Sequence[int] | None = None,
    ndim: int | None = None,
    keep_negatives: bool = False,
    poni: str | Path | None = None,
    mask: str | Path | None = None,
    saturation: float | None = None,
) -> ScanStack:
    """Open a detector file, folder or file pattern as a lazy :class:`ScanStack`.

    ``dataset``: HDF5 path, npz key or zip member (None picks the detector data). ``ndim``: 2 for
    frames, 1 for spectra (None: from the data). ``poni``/``mask``: geometry and user mask files.
    ``saturation`` overrides the file's saturation value.
    """
    path = Path(os.fspath(path)).expanduser()
    fmt = detect_format(path)
    if fmt == "series" and not path.is_dir() and not any(c in str(path) for c in "*?["):
        raise InputFileError(f"{path}: no such file")
    label = str(path)
    if dataset and fmt not in ("hdf5", "npz", "zip"):
        raise InputFileError(f"{path}: --dataset {dataset} applies only to HDF5, .npz and .zip inputs")
    try:
        with _quiet_readers():
            r = _dispatch(fmt, path, dataset, ndim)
    except XRDError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # third-party readers raise anything (ZeroDivisionError, struct.error, ...)
        raise InputFileError(f"{label}: cannot read ({_short(e)})") from None
    frame_ndim = r.pop("frame_ndim", 2)
    if ndim == 2 and frame_ndim == 1 and fmt in ("csv", "mca"):
        r["notes"].append("spectra files are read as 1D frames")
    r.pop("pixel_mask", None)
    data = r.pop("data")
    if data.ndim == frame_ndim:
        data = data[None]
    stack = ScanStack(
        data=data,
        frame_ndim=frame_ndim,
        source=str(path),
        keep_negatives=keep_negatives,
        **{k: v for k, v in r.items() if k in _STACK_FIELDS},
    )
    if saturation is not None:
        stack.saturation = float(saturation)
    if mask is not None:
        stack = stack.with_mask(load_mask(mask, stack.frame_shape))
        stack.notes.append(f"user mask {Path(mask).name}: nonzero = excluded")
    if poni is not None:
        if stack.frame_ndim != 2:
            raise InputFileError(f"{poni}: a PONI geometry needs 2D frames, {stack.label} holds 1D spectra (--poni)")
        geo, center = load_poni(poni, stack.frame_shape)
        _check_poni_detector(poni, geo, stack)
        stack.geometry = geo
        stack.beam_center = center
        if stack.pixel_size is None and geo.get("pixel1") and geo.get("pixel2"):
            stack.pixel_size = (float(geo["pixel1"]), float(geo["pixel2"]))
        stack.notes.append(
            f"geometry from {Path(poni).name}; a Dioptas-made PONI fits the image flipped vertically (Dioptas flips on load)"
        )
    if scan_shape is not None:
        stack = stack.with_scan_shape(scan_shape)
    stack.check_denoisable()
    try:
        with _quiet_readers():
            _check_some_valid(stack)
    except (XRDError, MemoryError):
        raise
    except Exception as e:  # a frame that cannot be decoded
        raise InputFileError(f"{label}: cannot read its frames ({_short(e)})") from None
    return stack


@contextlib.contextmanager
def _quiet_readers():
    """Keep tifffile/fabio/PIL log lines and warnings off stderr: our error is the one line users see."""
    loggers = [logging.getLogger(n) for n in ("tifffile", "fabio", "PIL")]
    before = [lg.level for lg in loggers]
    for lg in loggers:  # child loggers (fabio.edfimage, ...) inherit this level
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, b in zip(loggers, before):
            lg.setLevel(b)


def _check_cbf(path: str) -> None:
    """fabio loops forever on a CBF whose binary section lacks its starter bytes: refuse it first."""
    with open(path, "rb") as fh:
        data = fh.read()
    if b"_array_data.data" in data and b"\x0c\x1a\x04\xd5" not in data:
        raise InputFileError(f"{path}: CBF binary section has no starter bytes (truncated or corrupt file)")


def _check_edf(path: str, header: dict, frame: tuple[int, ...], dtype: np.dtype, nframes: int) -> None:
    """fabio pads a truncated EDF with zeros (invented counts): refuse a file shorter than its header says."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    end = head.find(b"}")
    if end < 0:
        raise InputFileError(f"{path}: EDF header is not terminated")
    start = head.find(b"\n", end) + 1 or end + 1
    try:
        size = int(header.get("Size", 0)) or int(np.prod(frame)) * np.dtype(dtype).itemsize
    except (TypeError, ValueError):
        size = int(np.prod(frame)) * np.dtype(dtype).itemsize
    if nframes == 1 and os.path.getsize(path) - start < size:
        raise InputFileError(f"{path}: EDF data is shorter than its header says (truncated file)")


_STACK_FIELDS = {
    "dataset", "format", "bit_depth", "saturation", "pixel_size", "beam_center", "geometry", "count_time",
    "axis_values", "notes", "static_valid", "files",
}


def sample_indices(n: int, k: int = 3) -> list[int]:
    """``k`` frame indices spread over ``n`` frames (first, middle, last for k=3)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i * (n - 1) / (k - 1))) for i in range(k)})


def _check_some_valid(stack: ScanStack) -> None:
    if stack.static_valid is not None and not stack.static_valid.any():
        raise InputFileError(f"{stack.label}: no valid pixel (the detector mask excludes every pixel)")
    flat = stack.flat()
    any_valid = np.zeros(stack.frame_shape, dtype=bool)
    for i in sample_indices(stack.n_frames):
        try:
            raw = np.asarray(flat[i].compute())
        except XRDError:
            raise
        except Exception as e:
            raise InputFileError(f"{stack.label}: cannot read frame {i} ({_short(e)})") from None
        any_valid |= stack.valid(raw)
        if any_valid.any():
            return
    raise InputFileError(
        f"{stack.label}: no valid pixel in the first, middle and last frames (all NaN, negative, sentinel or masked)"
    )


def pixel_mask_of(stack: ScanStack) -> np.ndarray | None:
    """The raw NeXus ``pixel_mask`` of an HDF5 stack (read again from its file), or None."""
    if not stack.source or not str(stack.format).startswith(("hdf5", "nexus")):
        return None
    try:
        f = _open_h5(stack.source)
        dpath = (stack.dataset or "").replace("data_*", "data")
        meta = _h5_metadata(f, dpath or "entry/data/data")
        if "pixel_mask" not in meta:
            return None
        pm = np.asarray(meta["pixel_mask"][1][()])
        while pm.ndim > stack.frame_ndim and pm.shape[0] == 1:
            pm = pm[0]
        return pm
    except Exception:
        return None
