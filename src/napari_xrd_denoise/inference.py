"""Streaming prediction over a whole scan with bounded memory.

The flat stack is read in chunks of ``infer.chunk_frames`` frames, denoised in batches of
``infer.batch_size`` by the model's method (single pass, J-invariant, flip TTA, neighbour input...),
frames larger than ``infer.tile`` are tiled and blended, outputs are converted back to counts with the
exact unbiased inverse and written chunk by chunk (NaN where invalid).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .config import InferConfig
from .errors import Cancelled, XRDError
from .io.stack import ScanStack
from .physics.masks import flux_outliers
from .methods.base import FrameSource, stack_arrays
from .model_file import DenoiserModel

_log = logging.getLogger("napari_xrd_denoise")


def data_center(model: DenoiserModel, stack: ScanStack,
                center: tuple[float, float] | list[float] | None = None) -> tuple[float, float] | None:
    """The beam centre of the data being denoised: ``center`` when given, else the data's own (file
    metadata, PONI). A symmetry model, which cannot predict without a centre, falls back on its own (the
    centre of the data it was trained on), with a warning; other models do not, since that centre describes
    other data. Says so in the log when the data's own centre replaces a different one of a symmetry model's."""
    if center is not None:
        return float(center[0]), float(center[1])
    own = stack.beam_center
    mc = model.config.method.center if model.config.method.name == "symmetry" else None
    if own is not None:
        own = (float(own[0]), float(own[1]))
        if mc is not None and tuple(map(float, mc)) != own:
            _log.info(f"beam centre ({own[0]:.1f}, {own[1]:.1f}) from {stack.label}, not the model's "
                      f"({float(mc[0]):.1f}, {float(mc[1]):.1f}); --center chooses another")
        return own
    if mc is None:
        return None
    _log.warning(f"{stack.label} has no beam centre of its own: the symmetry model's ({float(mc[0]):.1f}, "
                 f"{float(mc[1]):.1f}), from the data it was trained on, is used; --center gives this scan's")
    return float(mc[0]), float(mc[1])


def warn_notes(messages, notes: list[str] | None = None) -> None:
    """Log each message as a warning and append it to ``notes`` (the result's notes) when given."""
    for msg in messages:
        _log.warning(msg)
        if notes is not None:
            notes.append(msg)


def borrowed_grid(model: DenoiserModel, stack: ScanStack, notes: list[str] | None = None) -> tuple[int, int] | None:
    """A neighbours model applied to a flat stack (no scan grid): the grid it was trained with (from
    ``--scan-shape`` at training) when the frame count fits, said in a warning (and ``notes``); one line
    naming ``--scan-shape`` when it does not. None for other models and for stacks with their own grid."""
    if model.config.method.name != "neighbors" or len(stack.scan_shape) == 2:
        return None
    from .methods.neighbors import scan_grid

    g = scan_grid(model.config, FrameSource(stack, cache_frames=1))
    warn_notes([f"{stack.label}: {stack.n_frames} frames without a scan grid; the model's {g[0]}x{g[1]} (from its "
                "training data) places the neighbours: give --scan-shape if this scan's grid is another"], notes)
    return g


#: why the flux correction along the rings cannot be made for 2D frames
NO_RINGS = "--preserve-profile needs a geometry (--poni) or a beam centre (--center)"


def check_profile_possible(stack: ScanStack, center=None) -> None:
    """One-line error when the flux correction along the rings (``--preserve-profile``) cannot be made:
    spectra, or 2D frames with neither a geometry nor a beam centre (given, or the data's own)."""
    if stack.frame_ndim != 2:
        raise XRDError("--preserve-profile applies to 2D frames (azimuthal profiles), not spectra")
    if stack.geometry is None and center is None and stack.beam_center is None:
        raise XRDError(NO_RINGS)


def profile_rings(model: DenoiserModel, stack: ScanStack, infer: InferConfig,
                  center: tuple[float, float] | list[float] | None = None) -> np.ndarray | None:
    """Ring index per pixel for the flux correction along the rings (``infer.preserve_profile``), or
    ``None`` when it is off.

    ``None`` (auto) turns it on for 2D frames whenever the rings are known: a geometry (``--poni``), or a
    beam centre (``center``, e.g. drawn in the GUI after training; else the file's own, as ``xrd-denoise
    info`` shows it; else a symmetry model's: :func:`data_center`). ``True`` requires one (error without); ``False``
    turns it off.
    """
    from .physics.geometry import radial_map, ring_bins

    want = getattr(infer, "preserve_profile", None)
    if want is False:
        return None
    if center is None:
        center = data_center(model, stack)
    known = stack.frame_ndim == 2 and (stack.geometry is not None or center is not None)
    if not known:
        if want is None:
            return None
        check_profile_possible(stack, center)  # raises: spectra, or no geometry and no centre
        raise XRDError(NO_RINGS)
    src = "the PONI geometry" if stack.geometry is not None else f"the beam centre ({center[0]:.1f}, {center[1]:.1f})"
    _log.info(f"flux correction along the rings from {src}, windows of {int(infer.profile_window)} one-pixel "
              "rings" + (" (on by default; --no-preserve-profile turns it off)" if want is None else ""))
    return ring_bins(radial_map(stack.frame_shape, geometry=stack.geometry, center=center))


#: The whole-frame flux correction leaves frames with fewer counts than this as the network gave them:
#: their total is then known to worse than 1 % (Poisson), no better than a network's own flux bias.
MIN_FRAME_COUNTS = 10_000


def whole_frame_flux(stack: ScanStack, infer: InferConfig, rings: np.ndarray | None) -> bool:
    """Whether the whole-frame flux correction applies: in auto mode (``infer.preserve_profile`` None)
    when no rings are known, for 2D frames of integer counts."""
    return (rings is None and getattr(infer, "preserve_profile", None) is None and stack.frame_ndim == 2
            and np.dtype(stack.dtype).kind in "biu")


def frame_totals(counts: np.ndarray, denoised: np.ndarray, valid: np.ndarray,
                 exclude: np.ndarray | None = None) -> tuple[float, float]:
    """``(counts, denoised)`` totals of one frame over its valid pixels where the estimate is finite,
    those in ``exclude`` left out (negative estimates count as 0): the totals every flux correction
    compares."""
    d = np.asarray(denoised)
    t = np.asarray(valid, dtype=bool) & np.isfinite(d)
    if exclude is not None:
        t &= ~np.asarray(exclude, dtype=bool)
    return (float(np.sum(np.asarray(counts, dtype=np.float64)[t])),
            float(np.sum(np.maximum(d[t].astype(np.float64), 0.0))))


def keep_frame_counts(denoised: np.ndarray, counts: np.ndarray, valid: np.ndarray,
                      min_counts: float = MIN_FRAME_COUNTS, exclude: np.ndarray | None = None,
                      sparse_factor: float | Callable[[], float | None] | None = None) -> np.ndarray:
    """Whole-frame flux correction: scale a denoised frame so that its total over valid pixels equals the
    counts' total. A network trained for a fixed time ends with a flux bias of a few per cent that is
    nearly the same on every frame (docs/methods.md); a frame's total counts ``N`` are known to
    ``1 / sqrt(N)``. Frames with fewer than ``min_counts`` counts are scaled by ``sparse_factor`` (the
    scan's own, :func:`sample_flux_factor`; a number or a function that gives it), or returned unchanged
    without one, as are frames with a
    denoised total of 0; invalid pixels stay as they are. Pixels in ``exclude``
    (:func:`.physics.masks.flux_outliers`: unmasked hot pixels, zingers) are left out of both totals
    and scaled like the rest."""
    d = np.asarray(denoised)
    v = np.asarray(valid, dtype=bool) & np.isfinite(d)
    raw_total, den_total = frame_totals(counts, d, valid, exclude)
    out = np.array(d, dtype=np.float32, copy=True)
    if raw_total < min_counts:
        return scale_sparse(out, valid, sparse_factor)
    if den_total <= 0:
        return out
    out[v] = (np.maximum(d[v], 0.0) * (raw_total / den_total)).astype(np.float32)
    return out


def scale_sparse(denoised: np.ndarray, valid: np.ndarray,
                 factor: float | Callable[[], float | None] | None) -> np.ndarray:
    """A sparse frame's flux correction: its valid pixels times the scan's shared ``factor`` (a number,
    or a function that gives it, called only here); unchanged without one."""
    out = np.array(denoised, dtype=np.float32, copy=True)
    f = factor() if callable(factor) else factor  # measured when first needed
    if f is not None and f > 0:
        v = np.asarray(valid, dtype=bool) & np.isfinite(out)
        out[v] = (np.maximum(out[v], 0.0) * float(f)).astype(np.float32)
    return out


#: frames spread over a scan whose denoised totals give the flux factor of its sparse frames (more,
#: ``POOL_FRAMES_MAX``, when these hold under ``MIN_FRAME_COUNTS`` counts)
POOL_FRAMES = 16
POOL_FRAMES_MAX = 128


def pooled_flux_factor(counts, denoised, valid) -> float | None:
    """``sum(counts) / sum(denoised)`` over the valid pixels of several frames (unmasked hot pixels left
    out: :func:`flux_outliers`), or None when they hold under ``MIN_FRAME_COUNTS`` counts."""
    raw_t = den_t = 0.0
    for c, d, v in zip(counts, denoised, valid):
        r, e = frame_totals(c, d, v, flux_outliers(c, d, v))
        raw_t, den_t = raw_t + r, den_t + e
    if raw_t < MIN_FRAME_COUNTS or den_t <= 0:
        return None
    return raw_t / den_t


def pool_indices(n_frames: int, k: int = POOL_FRAMES) -> np.ndarray:
    from .io.stack import spread_indices

    return spread_indices(int(n_frames), int(k))


def sample_flux_factor(stack: ScanStack, denoise: Callable[[list[int]], list[np.ndarray]]) -> float | None:
    """The flux factor of a scan's sparse frames (under ``MIN_FRAME_COUNTS`` counts each, too few to fix
    their own total): the network's flux bias is nearly the same on every frame, so it is measured once,
    on ``POOL_FRAMES`` frames spread over the scan (up to ``POOL_FRAMES_MAX`` when those hold too few
    counts), whose denoised frames ``denoise(indices)`` gives (:func:`model_frames`). The same frames
    whatever the chunks, workers or resume point, so every path gives the same factor. None when even
    those frames hold under ``MIN_FRAME_COUNTS`` counts."""
    done: dict[int, np.ndarray] = {}
    for k in (POOL_FRAMES, POOL_FRAMES_MAX):
        idx = [int(i) for i in pool_indices(stack.n_frames, k)]
        todo = [i for i in idx if i not in done]
        for i, o in zip(todo, denoise(todo)):
            done[i] = np.asarray(o)
        raws = [stack.counts(stack.frame(i)) for i in idx]
        f = pooled_flux_factor([c for c, _ in raws], [done[i] for i in idx], [v for _, v in raws])
        if f is not None or len(idx) >= stack.n_frames:
            return f
    return None


def model_frames(model: DenoiserModel, stack: ScanStack, infer: InferConfig) -> Callable[[list[int]], list[np.ndarray]]:
    """``denoise(indices)``: the network's output for those frames, before any flux correction, exactly
    as ``predict_stack`` makes it (same method, batches of ``infer.batch_size``)."""
    from .methods import get_method

    def denoise(ids: list[int]) -> list[np.ndarray]:
        method = get_method(model.config.method.name)(model.config, frame_ndim=model.frame_ndim, norm=model.normalizer)
        run = model.runner(infer)
        bs = max(1, int(infer.batch_size))
        source = FrameSource(stack, cache_frames=4 * bs + 64)
        outs: list[np.ndarray] = []
        for b0 in range(0, len(ids), bs):
            part = ids[b0:b0 + bs]
            outs += list(method.denoise(run, stack_arrays([method.load_infer(i, source) for i in part]), infer))
        return outs

    return denoise


def is_sparse(counts: np.ndarray, denoised: np.ndarray, valid: np.ndarray, exclude: np.ndarray | None = None) -> bool:
    """Whether a frame holds under ``MIN_FRAME_COUNTS`` counts (valid pixels, unmasked hot pixels left
    out: ``exclude``, else :func:`flux_outliers`), so that :func:`keep_frame_counts` scales it by the
    scan's shared factor."""
    if exclude is None:
        exclude = flux_outliers(counts, denoised, valid)
    return frame_totals(counts, denoised, valid, exclude)[0] < MIN_FRAME_COUNTS


def chunk_outliers(counts: np.ndarray, out: np.ndarray, valid: np.ndarray, tally: CountsTally,
                   rings: np.ndarray | None, whole_frame: bool) -> np.ndarray | None:
    """A chunk's :func:`outlier_masks` when the count tally or a flux correction uses them, else None."""
    if tally.active or rings is not None or whole_frame:
        return outlier_masks(counts, out, valid)
    return None


def outlier_masks(counts: np.ndarray, out: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """:func:`flux_outliers` of each frame of a chunk (the network's output, before any correction), made
    once for the count tally and the flux correction."""
    v = np.broadcast_to(np.asarray(valid, dtype=bool), np.shape(out))
    if not len(out):
        return np.zeros(np.shape(out), dtype=bool)
    return np.stack([flux_outliers(counts[j], out[j], v[j]) for j in range(len(out))])


class _Once:
    """A value computed on the first call, then kept."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.func, self.done, self.value = func, False, None

    def __call__(self) -> Any:
        if not self.done:
            self.value, self.done = self.func(), True
        return self.value


class CountsTally:
    """Input and output totals over the valid pixels of the frames denoised, for integer counts.

    A network that has not learnt the data's signal level (too little training for very sparse frames,
    a model from other data) returns frames that hold far fewer or more counts than the input. The
    totals are taken before the flux correction, which would hide such a failure (or cannot repair it:
    an output of zeros, frames under ``MIN_FRAME_COUNTS``); :meth:`message` then says so.
    """

    #: totals below this are too noisy (or too few) to judge
    MIN_TOTAL = 1000.0
    #: the output/input ratio outside this range is reported
    RANGE = (0.5, 2.0)

    def __init__(self, stack: ScanStack):
        self.active = np.dtype(stack.dtype).kind in "biu"
        self.label = stack.label
        self.raw = 0.0
        self.den = 0.0
        self.pixels = 0

    def add(self, counts: np.ndarray, valid: np.ndarray, out: np.ndarray, exclude: np.ndarray | None = None) -> None:
        """Add a chunk's totals; ``exclude``: its :func:`outlier_masks`, when already made."""
        if not self.active:
            return
        v = np.asarray(valid, dtype=bool) & np.isfinite(out)
        c = np.asarray(counts, dtype=np.float64)
        d = np.asarray(out, dtype=np.float64)
        # hot pixels (which a denoiser rightly removes, or repeats) left out
        v &= ~(outlier_masks(counts, out, valid) if exclude is None else exclude)
        self.raw += float(np.sum(c[v]))
        self.den += float(np.sum(d[v]))
        self.pixels += int(v.sum())

    def add_totals(self, raw: float, den: float, pixels: int) -> None:
        """Add totals counted elsewhere (a dask worker's chunk)."""
        if self.active:
            self.raw, self.den, self.pixels = self.raw + float(raw), self.den + float(den), self.pixels + int(pixels)

    def report(self, notes: list[str] | None = None) -> None:
        """Log :meth:`message` as a warning (and append it to ``notes``) when there is one."""
        msg = self.message()
        if msg is not None:
            warn_notes([msg], notes)

    def message(self) -> str | None:
        if not self.active or self.raw < self.MIN_TOTAL or not self.pixels:
            return None
        ratio = self.den / self.raw
        if self.RANGE[0] <= ratio <= self.RANGE[1]:
            return None
        return (f"{self.label}: the denoised frames hold {ratio:.0%} of the input's {self.raw:.0f} counts "
                "(the network's own output, hot pixels left out) "
                f"({self.raw / self.pixels:.2g} counts per valid pixel): the model has not learnt this signal "
                "level; train longer on these data (--epochs, --max-minutes) and check the result before using it")


def flux_provenance(rings: np.ndarray | None, infer: InferConfig, whole_frame: bool = False) -> str:
    """The output provenance's ``flux_correction`` entry."""
    if rings is not None:
        return f"along the rings, windows of {int(infer.profile_window)} ring bins"
    if whole_frame:
        return (f"whole frame (each frame's total counts kept; frames under {MIN_FRAME_COUNTS} counts, if any, "
                f"scaled by one factor measured on up to {POOL_FRAMES} frames spread over the scan)")
    return "off"


def correct_profile(out: np.ndarray, counts: np.ndarray, valid: np.ndarray, rings: np.ndarray | None,
                    infer: InferConfig, whole_frame: bool = False,
                    sparse_factor: float | Callable[[], float | None] | None = None,
                    exclude: np.ndarray | None = None) -> np.ndarray:
    """Apply the flux correction along the rings (or, with ``whole_frame`` and no rings, over each whole
    frame) to a chunk of denoised frames (in place). ``sparse_factor`` (a number, or a function that
    gives it when first needed: :func:`sample_flux_factor`) scales the frames too sparse to fix their own
    flux (:func:`keep_frame_counts`)."""
    if rings is None and not whole_frame:
        return out
    from .physics.geometry import preserve_profile

    window = int(infer.profile_window)
    for j in range(out.shape[0]):
        # unmasked hot pixels set no scale (``exclude``: outlier_masks of this chunk, when already made)
        skip = flux_outliers(counts[j], out[j], valid[j]) if exclude is None else exclude[j]
        if rings is not None:
            out[j] = preserve_profile(out[j], counts[j], valid[j], rings, window=window, exclude=skip)
            continue
        out[j] = keep_frame_counts(out[j], counts[j], valid[j], exclude=skip, sparse_factor=sparse_factor)
    return out


def output_provenance(model: DenoiserModel, stack: ScanStack, infer: InferConfig, provenance: dict | None,
                      rings: np.ndarray | None, whole_frame: bool, model_grid: tuple[int, int] | None) -> dict:
    """The provenance an output of ``predict_stack`` or the dask path records: ``provenance`` (else
    :func:`default_provenance`), the model's fingerprint (a resumed output continues only with this
    model), the flux correction and, where a flat file borrowed it, the model's scan grid."""
    prov = dict(provenance) if provenance is not None else default_provenance(model, stack, infer)
    if "model_sha256" not in prov:  # default_provenance has it already: the weights are hashed once
        prov["model_sha256"] = model.fingerprint()
    prov["flux_correction"] = flux_provenance(rings, infer, whole_frame)
    if model_grid is not None:
        prov["scan_grid"] = f"{model_grid[0]}x{model_grid[1]} (the model's, from its training data)"
    return prov


def default_provenance(model: DenoiserModel, stack: ScanStack, infer: InferConfig) -> dict:
    """What produced an output: package version, model config and normalisation, input file."""
    cfg = model.config
    return {
        "software": "napari-xrd-denoise",
        "version": __version__,
        "model_version": model.version,
        "method": cfg.method.name,
        "config": cfg.to_json(indent=None),
        "infer": {k: getattr(infer, k) for k in infer.__dataclass_fields__},
        "norm": dict(model.norm),
        "source": stack.source,
        "dataset": stack.dataset or "",
        "best_epoch": model.history.get("best_epoch"),
        "best_val": model.history.get("best_val"),
        "model_sha256": model.fingerprint(),
    }


def result_target(stack: ScanStack, output: str | Path | None, provenance: dict | None, *, overwrite: bool,
                  resume: bool, notes: list[str] | None = None) -> tuple[Any, np.ndarray | None, int]:
    """Where a prediction's frames go: ``(None, float32 array of the flat frames, 0)`` without ``output``,
    else ``(ResultWriter, None, first frame to write)`` (past the frames a resumed ``.part`` holds; its
    notes, such as a ``.part`` of another run started again, are warnings and go into ``notes``)."""
    if output is None:
        return None, np.empty((stack.n_frames,) + stack.frame_shape, dtype=np.float32), 0
    from .io.writers import ResultWriter

    writer = ResultWriter(Path(output), stack.shape, stack.frame_ndim, provenance=provenance, overwrite=overwrite,
                          resume=resume)
    start = int(writer.n_done) if resume else 0
    warn_notes(writer.notes, notes)
    if writer.resumed:
        _log.info(f"resuming {Path(output).name}: {start} of {stack.n_frames} frames already written")
    return writer, None, start


def predict_stack(
    model: DenoiserModel,
    stack: ScanStack,
    output: str | Path | None = None,
    *,
    infer: InferConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    overwrite: bool = False,
    resume: bool = False,
    provenance: dict | None = None,
    device: str | None = None,
    center: tuple[float, float] | list[float] | None = None,
    notes: list[str] | None = None,
) -> np.ndarray | Path:
    """Denoise every frame of ``stack``.

    ``output=None``: returns a float32 array of ``stack.shape`` (counts, NaN where invalid).
    ``output`` path (``.h5``/``.npy``/``.tif``): streams through ``io.writers.ResultWriter`` and returns
    the path; ``resume=True`` continues an interrupted output from the writer's ``n_done``.
    ``progress(done, total)`` is called after every chunk; setting ``cancel`` stops between batches,
    aborts the writer (no output file is left) and raises :class:`~napari_xrd_denoise.errors.Cancelled`;
    a ``KeyboardInterrupt`` keeps ``<output>.part`` (HDF5, npy) so that ``resume=True`` continues it.
    ``center``: beam centre of these data, overriding the model's, for the flux correction along the rings
    and the symmetry method's partner image.
    ``notes``: a list that receives warnings about the result (also logged), such as an output that holds
    far fewer counts than the input (:class:`CountsTally`).
    """
    inf = infer or model.config.infer
    if device is not None:
        model.to(device)
    center = data_center(model, stack, center)
    model = model.with_center(center)  # the data's centre also places the symmetry partner
    if stack.frame_ndim != model.frame_ndim:
        raise XRDError(f"{stack.label}: the model denoises {model.frame_ndim}D frames but the data have {stack.frame_ndim}D frames")
    stack.check_denoisable()
    method = model.method
    n = stack.n_frames
    chunk = max(1, int(inf.chunk_frames))
    bs = max(1, int(inf.batch_size))
    extra = 2 * chunk if method.needs_context else 0
    source = FrameSource(stack, cache_frames=chunk + extra + 16)
    model_grid = borrowed_grid(model, stack, notes)
    run = model.runner(inf)
    flat = stack.flat()
    rings = profile_rings(model, stack, inf, center)
    whole = whole_frame_flux(stack, inf, rings)
    if whole:
        _log.info("flux correction over each whole frame: its total counts are kept (no rings known; "
                  "--no-preserve-profile turns it off)")
    sparse = _Once(lambda: sample_flux_factor(stack, model_frames(model, stack, inf)))  # only if a sparse frame comes

    prov = None if output is None else output_provenance(model, stack, inf, provenance, rings, whole, model_grid)
    writer, result, start = result_target(stack, output, prov, overwrite=overwrite, resume=resume, notes=notes)
    done = start
    tally = CountsTally(stack)
    try:
        if progress is not None:
            progress(done, n)
        for c0 in range(start, n, chunk):
            c1 = min(n, c0 + chunk)
            raw = np.asarray(flat[c0:c1].compute())
            counts, valid = stack.counts(raw)
            for i in range(c1 - c0):
                source.put(c0 + i, counts[i], valid[i])
            out = np.empty(counts.shape, dtype=np.float32)
            for b0 in range(c0, c1, bs):
                if cancel is not None and cancel.is_set():
                    raise Cancelled("prediction cancelled")
                b1 = min(c1, b0 + bs)
                batch = stack_arrays([method.load_infer(i, source) for i in range(b0, b1)])
                out[b0 - c0 : b1 - c0] = method.denoise(run, batch, inf)
            skip = chunk_outliers(counts, out, valid, tally, rings, whole)
            tally.add(counts, valid, out, skip)  # the network's own output: a flux correction can hide a failure
            correct_profile(out, counts, valid, rings, inf, whole, sparse_factor=sparse, exclude=skip)
            if writer is not None:
                writer.write(c0, out, valid)
            else:
                result[c0:c1] = out
            done = c1
            if progress is not None:
                progress(done, n)
            if cancel is not None and cancel.is_set() and done < n:
                raise Cancelled("prediction cancelled")
    except KeyboardInterrupt:
        if writer is not None:
            writer.suspend()  # an interrupted run keeps its complete frames for resume=True
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    tally.report(notes)
    if writer is not None:
        writer.close()
        return Path(output)
    return result.reshape(stack.shape)
