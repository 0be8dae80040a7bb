"""Write denoised results: streaming, atomic, resumable (HDF5 / NeXus, ``.npy``, TIFF).

A :class:`ResultWriter` writes into ``<output>.part`` beside the output and renames it onto the
output only in :meth:`ResultWriter.close`, so a file with the output's name is always complete.
Results are float32 counts, same shape as the input, NaN where a pixel is invalid.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import XRDError
from .atomic import RunLock, atomic_write_text, check_output

H5_SUFFIXES = {".h5", ".hdf5", ".nxs", ".nx5", ".hdf"}
NPY_SUFFIXES = {".npy"}
TIFF_SUFFIXES = {".tif", ".tiff"}


def output_kind(path: str | Path) -> str:
    s = Path(path).suffix.lower()
    if s in H5_SUFFIXES:
        return "hdf5"
    if s in NPY_SUFFIXES:
        return "npy"
    if s in TIFF_SUFFIXES:
        return "tiff"
    raise XRDError(f"{path}: unsupported output format {s or '(no suffix)'}; use .h5, .nxs, .npy or .tif")


def part_path(path: str | Path) -> Path:
    """The deterministic temporary name of an output being written."""
    path = Path(path)
    return path.with_name(path.name + ".part")


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    s = str(e)
    return "No space left" in s or "errno = 28" in s


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _prov_value(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool, np.integer, np.floating)):
        return v
    return json.dumps(v, default=_json_default)


class ResultWriter:
    """Stream float32 results frame block by frame block into an output file.

    ``shape`` is the full output shape (scan axes then frame axes). :meth:`write` takes a block of
    frames at flat frame index ``start``; ``valid_block`` (``True`` = valid) sets NaN where invalid
    and is stored (HDF5: ``entry/data/valid``). ``valid_shape`` may be the frame shape for one
    static validity mask (the AND over all frames written). With ``resume=True`` an existing
    ``<output>.part`` written with the same configuration is reopened; :attr:`n_done` then says how
    many leading frames are already complete (HDF5 and npy; TIFF restarts).
    """

    def __init__(
        self,
        path: str | Path,
        shape: tuple[int, ...],
        frame_ndim: int,
        *,
        valid_shape: tuple[int, ...] | None = None,
        provenance: dict | None = None,
        overwrite: bool = False,
        resume: bool = False,
    ):
        self.path = check_output(Path(path), overwrite)
        self.kind = output_kind(self.path)
        self.part = part_path(self.path)
        self.shape = tuple(int(s) for s in shape)
        if frame_ndim not in (1, 2) or len(self.shape) < frame_ndim:
            raise XRDError(f"{self.path}: cannot write shape {self.shape} with {frame_ndim}D frames")
        self.frame_ndim = int(frame_ndim)
        self.frame_shape = self.shape[len(self.shape) - frame_ndim :]
        self.scan_shape = self.shape[: len(self.shape) - frame_ndim]
        self.n_frames = int(math.prod(self.scan_shape)) if self.scan_shape else 1
        vs = tuple(valid_shape) if valid_shape is not None else self.shape
        if vs not in (self.shape, self.frame_shape):
            raise XRDError(f"{self.path}: valid_shape {vs} must be {self.shape} or the frame shape {self.frame_shape}")
        self.static_valid = vs == self.frame_shape and vs != self.shape
        self.valid_shape = vs
        self.provenance = dict(provenance or {})
        self.provenance.setdefault("package", "napari-xrd-denoise")
        self.provenance.setdefault("version", _version())
        self.provenance.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.provenance["resume_key"] = resume_key(self.provenance)
        self.notes: list[str] = []
        self._ranges: list[tuple[int, int]] = []
        self.n_done = 0
        self.resumed = False
        self._closed = False
        self._h5 = None
        self._mm = None
        self._tw = None
        self._buffer: np.ndarray | None = None
        self._static: np.ndarray | None = None
        self._lockf = None
        self._lock()  # one run at a time per output: never two writers on one .part
        try:
            if resume and self.part.exists() and self._try_resume():
                self.resumed = True
            else:
                if resume and self.part.exists():
                    self.notes.append(f"{self.part.name} was written with another configuration: starting again")
                self._remove_part()
                self._create()
        except XRDError:
            self._unlock()
            raise
        except (OSError, RuntimeError) as e:
            self._fail(e)
        except BaseException:
            self.abort()  # no part and no lock left behind
            raise

    # --- creation / resume -----------------------------------------------------------------------
    def _chunks(self) -> tuple[int, ...]:
        lead = len(self.scan_shape)
        if not lead:
            return self.shape
        if self.frame_ndim == 2:
            return (1,) * lead + self.frame_shape
        k = max(1, min(self.scan_shape[-1], 2**20 // max(1, 4 * self.frame_shape[0])))
        return (1,) * (lead - 1) + (k,) + self.frame_shape

    def _create(self) -> None:
        if self.kind != "npy":
            self._room(0)  # a new file's headers need room too
        if self.kind == "hdf5":
            import h5py

            f = h5py.File(self.part, "w")
            self._h5 = f
            entry = f.create_group("entry")
            entry.attrs["NX_class"] = "NXentry"
            entry.attrs["default"] = "data"
            entry.attrs["n_done"] = 0
            entry.attrs["complete"] = 0
            grp = entry.create_group("data")
            grp.attrs["NX_class"] = "NXdata"
            grp.attrs["signal"] = "data"
            chunks = self._chunks()
            d = grp.create_dataset(
                "data", shape=self.shape, dtype=np.float32, chunks=chunks, compression="gzip",
                compression_opts=4, shuffle=True, fillvalue=np.nan,
            )
            d.attrs["units"] = "counts"
            d.attrs["long_name"] = "denoised counts (NaN = invalid pixel)"
            d.attrs["frame_ndim"] = self.frame_ndim  # spectra (1) or images (2): read back as written
            vchunks = chunks if not self.static_valid else self.frame_shape
            v = grp.create_dataset(
                "valid", shape=self.valid_shape, dtype=np.uint8, chunks=vchunks, compression="gzip",
                compression_opts=4, shuffle=True, fillvalue=0 if not self.static_valid else 1,
            )
            v.attrs["long_name"] = "1 = valid pixel, 0 = invalid"
            prov = entry.create_group("provenance")
            prov.attrs["NX_class"] = "NXnote"
            for k, val in self.provenance.items():
                val = _prov_value(val)
                if not isinstance(val, str) or len(val) < 32000:
                    prov.attrs[k] = val
                prov.create_dataset(k, data=val)
            f.flush()
        elif self.kind == "npy":
            self._mm = np.lib.format.open_memmap(self.part, mode="w+", dtype=np.float32, shape=self.shape)
            # a memory map is a sparse file: reserve its blocks now, so a full disk is an ENOSPC error
            # here instead of a SIGBUS while writing
            fd = os.open(self.part, os.O_RDWR)
            try:
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            finally:
                os.close(fd)
            if self.static_valid:
                self._static = np.ones(self.frame_shape, dtype=bool)
            self._save_state()
        else:
            import tifffile

            if self.frame_ndim == 1 or not self.scan_shape:
                self._buffer = np.full(self.shape, np.nan, dtype=np.float32)
            else:
                big = self.n_frames * math.prod(self.frame_shape) * 4 > 2**31
                self._tw = tifffile.TiffWriter(self.part, bigtiff=big)
            self.notes.append("TIFF outputs cannot resume; they are written from the first frame")

    def _state_path(self) -> Path:
        return self.part.with_name(self.part.name + ".json")

    def _save_state(self) -> None:
        state = {"shape": list(self.shape), "n_done": self.n_done, "resume_key": self.provenance["resume_key"],
                 "provenance": {k: _prov_value(v) for k, v in self.provenance.items()}}
        if self._static is not None:
            state["static_invalid"] = np.argwhere(~self._static).tolist()
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, default=_json_default))
        os.replace(tmp, self._state_path())

    def _try_resume(self) -> bool:
        want = self.provenance["resume_key"]  # same configuration, model, input and shape, or start again
        if self.kind == "hdf5":
            import h5py

            try:
                f = h5py.File(self.part, "r+")
            except OSError:
                return False
            try:
                entry = f["entry"]
                have = entry["provenance/resume_key"][()] if "provenance/resume_key" in entry else None
                if isinstance(have, bytes):
                    have = have.decode()
                same = (have == want and tuple(entry["data/data"].shape) == self.shape
                        and tuple(entry["data/valid"].shape) == self.valid_shape)
            except Exception:
                same = False
            if not same:
                f.close()
                return False
            self._h5 = f
            self.n_done = int(entry.attrs.get("n_done", 0))
        elif self.kind == "npy":
            sp = self._state_path()
            try:
                state = json.loads(sp.read_text())
                if state.get("resume_key") != want or tuple(state.get("shape", ())) != self.shape:
                    return False
                self._mm = np.lib.format.open_memmap(self.part, mode="r+")
            except (OSError, ValueError):
                return False
            if self._mm.shape != self.shape or self._mm.dtype != np.float32:
                self._mm = None
                return False
            self.n_done = int(state.get("n_done", 0))
            if self.static_valid:
                self._static = np.ones(self.frame_shape, dtype=bool)
                for idx in state.get("static_invalid", []):
                    self._static[tuple(idx)] = False
        else:
            return False
        self._ranges = [(0, self.n_done)] if self.n_done else []
        return True

    # --- writing ---------------------------------------------------------------------------------
    def _segments(self, start: int, stop: int):
        """Yield (index into the output, slice of the block) runs along the last scan axis."""
        if not self.scan_shape:
            yield (), slice(0, 1)
            return
        pos = start
        last = self.scan_shape[-1]
        while pos < stop:
            idx = np.unravel_index(pos, self.scan_shape)
            run = min(stop - pos, last - int(idx[-1]))
            key = tuple(int(i) for i in idx[:-1]) + (slice(int(idx[-1]), int(idx[-1]) + run),)
            yield key, slice(pos - start, pos - start + run)
            pos += run

    def write(self, start: int, block: np.ndarray, valid_block: np.ndarray | None = None) -> None:
        """Write frames ``start .. start+len(block)`` (flat frame index); NaN where ``valid_block`` is False."""
        if self._closed:
            raise RuntimeError("ResultWriter is closed")
        block = np.asarray(block, dtype=np.float32).reshape((-1,) + self.frame_shape)
        k = block.shape[0]
        if start < 0 or start + k > self.n_frames:
            raise ValueError(f"frames {start}..{start + k} outside 0..{self.n_frames}")
        if valid_block is None:
            valid = np.isfinite(block)
        else:
            valid = np.asarray(valid_block, dtype=bool)
            if valid.shape == self.frame_shape:
                valid = np.broadcast_to(valid, block.shape)
            valid = valid.reshape(block.shape) & np.isfinite(block)
        block = np.where(valid, block, np.float32(np.nan)).astype(np.float32, copy=False)
        try:
            self._write(start, block, valid)
        except XRDError:
            raise
        except (OSError, RuntimeError) as e:  # h5py reports a full disk as RuntimeError("... errno = 28")
            self._fail(e)
        self._mark(start, start + k)
        try:
            self._flush_progress()
        except (OSError, RuntimeError) as e:
            self._fail(e)

    def _room(self, nbytes: int) -> None:
        """Refuse to write (one 'disk full' line, no output kept) when the output's filesystem has less free
        space than ``nbytes`` (the data uncompressed) and ``HEADROOM``: HDF5 and TIFF writers that hit a full
        disk fail late and badly (the HDF5 library may crash the process at exit), so they never get there.
        ``.npy`` outputs reserve all their blocks when created instead."""
        try:
            free = shutil.disk_usage(self.part.parent).free
        except OSError:
            return
        if free < int(nbytes) + HEADROOM:
            self._fail(OSError(errno.ENOSPC, f"{free} bytes free, {int(nbytes) + HEADROOM} needed"))

    def _write(self, start: int, block: np.ndarray, valid: np.ndarray) -> None:
        k = block.shape[0]
        if self.kind != "npy" and self._buffer is None:
            self._room(block.nbytes + (0 if self.static_valid else valid.size))
        if self.kind == "hdf5":
            d = self._h5["entry/data/data"]
            v = self._h5["entry/data/valid"]
            for key, sl in self._segments(start, start + k):
                if key == ():
                    d[...] = block[0]
                else:
                    d[key] = block[sl]
                if not self.static_valid:
                    if key == ():
                        v[...] = valid[0].astype(np.uint8)
                    else:
                        v[key] = valid[sl].astype(np.uint8)
            if self.static_valid:
                v[...] = (v[...].astype(bool) & valid.all(axis=0)).astype(np.uint8)
        elif self.kind == "npy":
            flat = self._mm.reshape((self.n_frames,) + self.frame_shape)
            flat[start : start + k] = block
            if self._static is not None:
                self._static &= valid.all(axis=0)
        else:
            if self._buffer is not None:
                flat = self._buffer.reshape((self.n_frames,) + self.frame_shape)
                flat[start : start + k] = block
                return
            if start != self.n_done:
                raise ValueError(f"TIFF frames must be written in order: expected frame {self.n_done}, got {start}")
            for i in range(k):
                meta = self._tiff_metadata() if start + i == 0 else None
                self._tw.write(block[i], contiguous=True, photometric="minisblack", metadata=meta)

    def _tiff_metadata(self) -> dict:
        """What a TIFF output records (first page): its layout, read back by ``readers._open_tiff``, and
        the provenance."""
        return {"result_shape": list(self.shape), "frame_ndim": self.frame_ndim,
                "provenance": _json_safe(self.provenance)}

    def _mark(self, a: int, b: int) -> None:
        rs = sorted(self._ranges + [(a, b)])
        merged: list[tuple[int, int]] = []
        for s, e in rs:
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
            else:
                merged.append((s, e))
        self._ranges = merged
        self.n_done = merged[0][1] if merged and merged[0][0] == 0 else 0

    def _flush_progress(self) -> None:
        if self.kind == "hdf5":
            self._h5["entry"].attrs["n_done"] = self.n_done
            self._h5.flush()
        elif self.kind == "npy":
            self._mm.flush()
            self._save_state()

    # --- finishing -------------------------------------------------------------------------------
    def close(self) -> Path:
        """Finalise and rename ``<output>.part`` onto the output; returns the output path."""
        if self._closed:
            return self.path
        try:
            if self.n_done < self.n_frames:
                self.notes.append(f"only {self.n_done} of {self.n_frames} frames were written")
            if self.kind == "hdf5":
                self._h5["entry"].attrs["n_done"] = self.n_done
                self._h5["entry"].attrs["complete"] = int(self.n_done >= self.n_frames)
                self._h5.close()
                self._h5 = None
                self._verify_h5()
            elif self.kind == "npy":
                self._mm.flush()
                del self._mm
                self._mm = None
                prov = dict(self.provenance)
                if self._static is not None:
                    np.save(self.path.with_name(self.path.name + ".valid.npy"), self._static.astype(np.uint8))
                atomic_write_text(self.path.with_name(self.path.name + ".provenance.json"),
                                  json.dumps(prov, indent=2, default=_json_default))
                self._state_path().unlink(missing_ok=True)
            else:
                if self._buffer is not None:
                    import tifffile

                    self._room(self._buffer.nbytes)
                    tifffile.imwrite(self.part, self._buffer, photometric="minisblack", metadata=self._tiff_metadata())
                    self._buffer = None
                else:
                    self._tw.close()
                    self._tw = None
            os.replace(self.part, self.path)
            self._unlock()
        except XRDError:
            raise
        except (OSError, RuntimeError) as e:
            self._fail(e)
        self._closed = True
        return self.path

    def _verify_h5(self) -> None:
        """HDF5 may report a failed write only later (or never): check the closed file before renaming it."""
        import shutil

        import h5py

        if shutil.disk_usage(self.part.parent).free < 64 * 1024:
            raise OSError(errno.ENOSPC, "No space left on device after writing")
        with h5py.File(self.part, "r") as f:
            d = f["entry/data/data"]
            if int(f["entry"].attrs.get("n_done", -1)) != self.n_done:
                raise OSError(errno.EIO, "the written file does not hold the frames that were written")
            if d.size:
                d[(-1,) * (d.ndim - self.frame_ndim)] if d.ndim > self.frame_ndim else d[...]

    def abort(self) -> None:
        """Stop and remove every temporary file; no output is left."""
        with contextlib.suppress(Exception):
            if self._h5 is not None:
                self._h5.close()
        with contextlib.suppress(Exception):
            if self._tw is not None:
                self._tw.close()
        self._h5 = self._tw = self._mm = self._buffer = None
        self._remove_part()
        self._closed = True
        self._unlock()

    def suspend(self) -> Path | None:
        """Stop without finishing, keeping ``<output>.part`` for a later ``resume=True``.

        HDF5 and ``.npy`` parts record the frames already complete, so they are closed and kept; returns
        the part's path. A TIFF output cannot resume: it is aborted like :meth:`abort` and None returned.
        """
        if self._closed:
            return self.part if self.part.exists() else None
        if self.kind not in ("hdf5", "npy"):
            self.abort()
            return None
        try:
            self._flush_progress()
            if self._h5 is not None:
                self._h5.close()
            if self._mm is not None:
                self._mm.flush()
        except (OSError, RuntimeError):
            self.abort()
            return None
        self._h5 = self._mm = None
        self._closed = True
        self._unlock()
        return self.part

    def _lock_path(self) -> Path:
        return self.part.with_name(self.part.name + ".lock")

    def _lock(self) -> None:
        """One run at a time per output: two runs on one ``.part`` left a half-written file under the
        output's name."""
        self._lockf = RunLock(self._lock_path(), self.path).acquire()

    def _unlock(self) -> None:
        f, self._lockf = self._lockf, None
        if f is not None:
            f.release()

    def _remove_part(self) -> None:
        for p in (self.part, self._state_path(), self._state_path().with_suffix(".tmp")):
            with contextlib.suppress(OSError):
                p.unlink()

    def _fail(self, e: BaseException) -> None:
        self.abort()
        if _disk_full(e):
            raise XRDError(f"{self.path}: disk full while writing; no output was kept") from None
        raise XRDError(f"{self.path}: cannot write ({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})") from None

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


#: provenance entries that must agree for an interrupted output to be continued (``resume=True``)
RESUME_KEYS = ("config", "model_sha256", "input_file", "input_dataset", "input_shape", "source", "dataset")


def resume_key(provenance: dict) -> str:
    """A digest of what decides an output's frames: the configuration, the model's weights
    (``model_sha256``) and the input (file, dataset, shape). A ``.part`` written with another is never
    continued: frames of two models or two inputs would be mixed in one output."""
    import hashlib

    ident = {k: provenance.get(k) for k in RESUME_KEYS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


#: free space an HDF5/TIFF output keeps beyond the data it writes (headers, chunk index, provenance)
HEADROOM = 1 << 20


def _json_safe(d: dict) -> dict:
    return json.loads(json.dumps(d, default=_json_default))


def _version() -> str:
    from .. import __version__

    return __version__


def write_array(
    path: str | Path,
    data: Any,
    valid: Any = None,
    provenance: dict | None = None,
    overwrite: bool = False,
    frame_ndim: int = 2,
) -> Path:
    """Write an in-memory (or dask) array with optional validity (``True`` = valid) in one call."""
    shape = tuple(int(s) for s in data.shape)
    if len(shape) < frame_ndim:
        raise XRDError(f"{path}: data of shape {shape} has fewer than {frame_ndim} axes")
    frame_shape = shape[len(shape) - frame_ndim :]
    n = int(math.prod(shape[: len(shape) - frame_ndim])) if len(shape) > frame_ndim else 1
    vshape = None
    if valid is not None and tuple(valid.shape) == frame_shape and frame_shape != shape:
        vshape = frame_shape
    flat = data.reshape((n,) + frame_shape)
    vflat = None
    if valid is not None:
        vflat = valid if vshape is not None else valid.reshape((n,) + frame_shape)
    step = max(1, (64 * 2**20) // max(1, 4 * math.prod(frame_shape)))
    with ResultWriter(path, shape, frame_ndim, valid_shape=vshape, provenance=provenance, overwrite=overwrite) as w:
        for s in range(0, n, step):
            e = min(n, s + step)
            blk = np.asarray(flat[s:e])
            vb = None
            if vflat is not None:
                vb = np.asarray(vflat) if vshape is not None else np.asarray(vflat[s:e])
            w.write(s, blk, vb)
    return Path(path)


def read_result(path: str | Path) -> tuple[Any, Any, dict]:
    """Read an output back: ``(data, valid, provenance)``.

    HDF5: h5py datasets (read lazily; the file stays open while they are referenced).
    npy / TIFF: arrays, validity from the NaNs (or the saved static mask).
    """
    path = Path(path)
    if not path.exists():
        raise XRDError(f"{path}: no such file")
    kind = output_kind(path)
    if kind == "hdf5":
        import h5py

        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise XRDError(f"{path}: not a readable HDF5 result ({str(e).splitlines()[0][:120]})") from None
        if "entry/data/data" not in f:
            raise XRDError(f"{path}: no entry/data/data (not a napari-xrd-denoise result)")
        prov: dict = {}
        if "entry/provenance" in f:
            g = f["entry/provenance"]
            for k in g:
                if isinstance(g[k], h5py.Dataset) and g[k].shape == ():
                    v = g[k][()]
                    prov[k] = v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
            for k, v in g.attrs.items():
                if k not in prov and k != "NX_class":
                    prov[k] = v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)
        data = f["entry/data/data"]
        valid = f["entry/data/valid"] if "entry/data/valid" in f else None
        return data, valid, prov
    if kind == "npy":
        data = np.load(path, mmap_mode="r")
        pj = path.with_name(path.name + ".provenance.json")
        prov = json.loads(pj.read_text()) if pj.exists() else {}
        vp = path.with_name(path.name + ".valid.npy")
        valid = np.load(vp).astype(bool) if vp.exists() else np.isfinite(data)
        return data, valid, prov
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        meta = tif.shaped_metadata[0] if tif.shaped_metadata else {}
    shape = meta.get("result_shape")
    if shape and math.prod(shape) == data.size:
        data = data.reshape(shape)
    prov = meta.get("provenance", {}) or {}
    return data, np.isfinite(data), prov


MASK_SUFFIXES = (".npy", ".tif", ".tiff", ".edf")

def save_mask(path: str | Path, excluded: np.ndarray, overwrite: bool = True) -> Path:
    """Write a mask file in the pyFAI / Dioptas convention (nonzero = masked): npy, TIFF or EDF."""
    from .atomic import atomic_path

    path = Path(path)
    suf = path.suffix.lower()
    if suf not in MASK_SUFFIXES:
        raise XRDError(f"{path}: mask files must end in {', '.join(MASK_SUFFIXES)}")
    m = np.asarray(excluded).astype(np.uint8)
    with atomic_path(path, overwrite=overwrite) as tmp:
        if suf == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, m)
        elif suf in (".tif", ".tiff"):
            import tifffile

            with open(tmp, "wb") as fh:
                tifffile.imwrite(fh, m)
        else:
            import fabio

            fabio.edfimage.EdfImage(data=m.astype(np.int8)).write(str(tmp))
    return path
