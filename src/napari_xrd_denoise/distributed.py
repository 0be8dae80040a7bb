"""Denoise a scan on a dask cluster: a local one (``workers=N``) or an existing one (``scheduler=ADDRESS``).

The client cuts the flat stack into the same chunks of ``infer.chunk_frames`` frames as
:func:`~napari_xrd_denoise.inference.predict_stack` and sends one task per chunk. Each worker loads the
model once (its bytes are broadcast once; the loaded :class:`DenoiserModel` is cached in the worker
process, keyed by the SHA-256 of the bytes) on ``cuda:{worker index % GPUs}`` when it has GPUs, else on
the CPU. Frames are not sent when the input can be reopened: the worker opens the file itself with the
same ``open_stack`` arguments and reads its chunk (and any context frames the method needs). A stack
that cannot be reopened (an in-memory array, a crop) is sent whole when its pickle is small, otherwise
the client reads each chunk and sends exactly the frames the method reads for it. Inside a chunk the
frames are batched exactly as ``predict_stack`` batches them, so the result is the same array.

The client takes finished chunks as they complete, keeps them in a reorder buffer bounded by the number
of chunks in flight, and writes them in order through :class:`~napari_xrd_denoise.io.writers.ResultWriter`
(atomic ``<output>.part``, resumable), so memory stays bounded whatever the scan size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import pickle
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .config import InferConfig
from .errors import Cancelled, XRDError
from .io.stack import ScanStack
from .inference import (
    CountsTally,
    _Once,
    borrowed_grid,
    chunk_outliers,
    correct_profile,
    data_center,
    is_sparse,
    model_frames,
    output_provenance,
    profile_rings,
    result_target,
    sample_flux_factor,
    scale_sparse,
    whole_frame_flux,
)
from .methods.base import FrameSource, stack_arrays

SHIP_STACK_BYTES = 16 * 2**20  # a non-reopenable stack whose pickle is at most this is sent whole
CONNECT_TIMEOUT_S = 20.0
_WORKER_CACHE = 4  # models / opened stacks kept per worker process


# --------------------------------------------------------------------------------------------------
# What the workers are sent
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ReopenSpec:
    """The ``open_stack`` arguments that give a worker the same stack as the client's."""

    path: str
    dataset: str | None
    ndim: int
    keep_negatives: bool
    saturation: float | None
    scan_shape: tuple[int, ...]
    static_valid: np.ndarray | None
    stamp: tuple[int, int] = (0, 0)  # (mtime_ns, size) of the file: a replaced file is opened anew
    geometry: dict | None = None  # from --poni (not in the file): the flux correction along the rings needs it
    beam_center: tuple[float, float] | None = None

    def key(self) -> str:
        sv = self.static_valid
        h = hashlib.sha256(repr((self.path, self.dataset, self.ndim, self.keep_negatives, self.saturation,
                                 self.scan_shape, self.stamp, None if sv is None else sv.shape,
                                 sorted((self.geometry or {}).items()), self.beam_center)).encode())
        if sv is not None:
            h.update(np.packbits(sv).tobytes())
        return h.hexdigest()

    def open(self) -> ScanStack:
        from .io.readers import open_stack

        # a DECTRIS master's stack is labelled "entry/data/data_*", which open_stack finds by itself
        ds = None if self.dataset and "*" in self.dataset else self.dataset
        s = open_stack(self.path, dataset=ds, ndim=self.ndim, keep_negatives=self.keep_negatives,
                       saturation=self.saturation)
        s = s.with_scan_shape(self.scan_shape) if s.n_frames == math.prod(self.scan_shape or (1,)) else s
        return replace(s, static_valid=self.static_valid, geometry=self.geometry or s.geometry,
                       beam_center=self.beam_center or s.beam_center)


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = Path(path).stat()
    except OSError:
        return (0, 0)
    return (int(st.st_mtime_ns), int(st.st_size))


def reopen_spec(stack: ScanStack) -> ReopenSpec | None:
    """The arguments that reopen ``stack`` from its file, or None if the reopened stack would differ.

    Checked on the client: same shape, dtype and frame axes, and the same raw values in the first and
    last frames (a crop or an in-memory array gives None).
    """
    src = stack.source
    if not src or src.startswith("<") or stack.format == "array":
        return None
    spec = ReopenSpec(
        path=str(src), dataset=stack.dataset, ndim=int(stack.frame_ndim), keep_negatives=bool(stack.keep_negatives),
        saturation=stack.saturation, scan_shape=tuple(stack.scan_shape) or (1,),
        static_valid=None if stack.static_valid is None else np.asarray(stack.static_valid, dtype=bool),
        stamp=_stamp(src), geometry=stack.geometry,
        beam_center=None if stack.beam_center is None else tuple(float(c) for c in stack.beam_center),
    )
    try:
        other = spec.open()
    except Exception:  # noqa: BLE001 - any failure only means "send the data instead"
        return None
    if other.shape != stack.shape or other.dtype != stack.dtype or other.frame_ndim != stack.frame_ndim:
        return None
    if other.bit_depth != stack.bit_depth:
        return None
    for i in sorted({0, stack.n_frames - 1}):
        a, b = stack.frame(i), other.frame(i)
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
            return None
    return spec


def _skeleton(stack: ScanStack) -> ScanStack:
    """The stack's metadata over a lazy array of zeros (a few bytes to send, never read)."""
    import dask.array as da

    zeros = da.zeros(stack.shape, dtype=stack.dtype, chunks=(1,) * len(stack.scan_shape) + stack.frame_shape)
    return replace(stack, data=zeros, axis_values={}, notes=[], geometry=stack.geometry)


class _Prefilled(FrameSource):
    """A FrameSource holding exactly the frames the client sent; reading any other frame is an error."""

    def __init__(self, stack: ScanStack, indices: np.ndarray, raw: np.ndarray):
        super().__init__(stack, cache_frames=len(indices) + 1)
        counts, valid = stack.counts(raw)
        for j, i in enumerate(indices):
            self.put(int(i), counts[j], valid[j])

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._cache.get(int(index))
        if hit is None:
            raise RuntimeError(f"frame {index} was not sent to the worker")
        return hit


class _Recorder(FrameSource):
    """A FrameSource stand-in that records which frames a method reads (and returns zeros)."""

    def __init__(self, stack: ScanStack):
        super().__init__(_skeleton(stack), cache_frames=1)
        self.seen: set[int] = set()
        z = np.zeros(stack.frame_shape, dtype=np.float32)
        v = np.zeros(stack.frame_shape, dtype=bool)
        z.setflags(write=False)
        v.setflags(write=False)
        self._zero = (z, v)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = int(index)
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} outside 0..{self.n_frames - 1}")
        self.seen.add(index)
        return self._zero


# --------------------------------------------------------------------------------------------------
# Worker side
# --------------------------------------------------------------------------------------------------
_LOCK = threading.Lock()
_MODELS: OrderedDict[tuple[str, str], Any] = OrderedDict()
_STACKS: OrderedDict[str, ScanStack] = OrderedDict()
_THREADS_SET = False


def _remember(cache: OrderedDict, key, value) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _WORKER_CACHE:
        cache.popitem(last=False)


def worker_index() -> int:
    """The index of this dask worker: its name when numeric (LocalCluster), else the last number in it."""
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return 0
    name = str(w.name)
    digits = re.findall(r"\d+", name)
    if digits:
        return int(digits[-1])
    return int(hashlib.sha1(str(w.address).encode()).hexdigest(), 16) % 1024


def worker_device(requested: str | None = None) -> str:
    """``requested`` if given, else ``cuda:{worker index % GPUs}`` where this worker sees GPUs, else ``cpu``."""
    if requested:
        return requested
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return f"cuda:{worker_index() % torch.cuda.device_count()}"
    return "cpu"


def _worker_threads() -> None:
    """Use as many torch threads as the dask worker has threads (once per process)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    import torch

    try:
        from distributed import get_worker

        w = get_worker()
        n = int(getattr(w, "nthreads", 0) or getattr(w.state, "nthreads", 0))
    except Exception:  # noqa: BLE001 - outside a worker keep torch's own setting
        n = 0
    if n > 0:
        torch.set_num_threads(n)
    _THREADS_SET = True


def _worker_model(key: str, blob: bytes, device: str | None):
    """The model for ``key``, loaded once per worker process and device."""
    dev = worker_device(device)
    with _LOCK:
        hit = _MODELS.get((key, dev))
        if hit is not None:
            _MODELS.move_to_end((key, dev))
            return hit
    import torch

    from .model_file import DenoiserModel

    if hashlib.sha256(blob).hexdigest() != key:
        raise RuntimeError("model bytes damaged in transfer")
    d = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    model = DenoiserModel.from_dict(d, device=dev, label="<model sent to the worker>")
    with _LOCK:
        _remember(_MODELS, (key, dev), model)
    return model


def _worker_stack(spec: ReopenSpec | ScanStack) -> ScanStack:
    if isinstance(spec, ScanStack):
        return spec
    key = spec.key()
    with _LOCK:
        hit = _STACKS.get(key)
        if hit is not None:
            return hit
    s = spec.open()
    with _LOCK:
        _remember(_STACKS, key, s)
    return s


def denoise_chunk(
    model_key: str,
    model_blob: bytes,
    stack_spec: ReopenSpec | ScanStack,
    c0: int,
    c1: int,
    infer: dict,
    device: str | None = None,
    frames: tuple[np.ndarray, np.ndarray] | None = None,
    rings: np.ndarray | None = None,
    whole_frame: bool = False,
) -> tuple[int, np.ndarray, np.ndarray, tuple, list[int]]:
    """Worker task: denoise flat frames ``c0:c1``; returns ``(c0, counts float32, valid, totals, sparse)``,
    where ``totals`` are the input's and the output's counts and the valid pixels (``inference.CountsTally``)
    and ``sparse`` the frames (chunk positions) too sparse for their own flux factor, left for the client
    to scale by the scan's shared one (``inference.sample_flux_factor``).

    ``frames``: ``(indices, raw frames)`` sent by the client (every frame the method reads); without
    it the worker reads from ``stack_spec`` itself. Batches are those of ``predict_stack``. ``rings``:
    the ring map of the flux correction (``inference.profile_rings``, made once by the client), or None;
    ``whole_frame``: without rings, keep each frame's total counts (``inference.whole_frame_flux``).
    """
    from .methods import get_method

    _worker_threads()
    model = _worker_model(model_key, model_blob, device)
    stack = _worker_stack(stack_spec)
    inf = InferConfig(**infer)
    k = c1 - c0
    if frames is None:
        raw = np.asarray(stack.flat()[c0:c1].compute())
        counts, valid = stack.counts(raw)
        source = FrameSource(stack, cache_frames=3 * k + 16)
        for i in range(k):
            source.put(c0 + i, counts[i], valid[i])
    else:
        idx, raw_sent = frames
        source = _Prefilled(stack, idx, raw_sent)
        valid = np.stack([source.get(c0 + i)[1] for i in range(k)])
    # a fresh method object per chunk: method caches are keyed by the source they were filled from
    method = get_method(model.config.method.name)(model.config, frame_ndim=model.frame_ndim, norm=model.normalizer)
    run = model.runner(inf)
    bs = max(1, int(inf.batch_size))
    out = np.empty((k,) + stack.frame_shape, dtype=np.float32)
    for b0 in range(c0, c1, bs):
        b1 = min(c1, b0 + bs)
        batch = stack_arrays([method.load_infer(i, source) for i in range(b0, b1)])
        out[b0 - c0 : b1 - c0] = method.denoise(run, batch, inf)
    counts = np.stack([source.get(c0 + i)[0] for i in range(k)])
    valid = np.asarray(valid, dtype=bool)
    tally = CountsTally(stack)
    skip = chunk_outliers(counts, out, valid, tally, rings, whole_frame)
    tally.add(counts, valid, out, skip)  # before the flux correction, as predict_stack counts
    sparse: list[int] = []
    if rings is None and whole_frame:  # frames too sparse for their own factor: the client scales them
        sparse = [j for j in range(k) if is_sparse(counts[j], out[j], valid[j], skip[j])]
    if rings is not None or whole_frame:
        correct_profile(out, counts, valid, rings, inf, whole_frame, exclude=skip)  # sparse frames left as they are
    return c0, out, valid, (tally.raw, tally.den, tally.pixels), sparse


# --------------------------------------------------------------------------------------------------
# Client side
# --------------------------------------------------------------------------------------------------
def _model_bytes(model) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(model.to_dict(), buf)
    return buf.getvalue()


def _pickled_size(obj: Any) -> float:
    """Bytes of ``obj`` pickled (array buffers counted, not copied); ``inf`` if it cannot be pickled."""
    bufs: list = []
    try:
        main = pickle.dumps(obj, protocol=5, buffer_callback=bufs.append)
    except Exception:  # noqa: BLE001 - e.g. an open file handle in a custom source
        return math.inf
    return len(main) + sum(b.raw().nbytes for b in bufs)


def _check_address(scheduler: str) -> None:
    """One-line error for a scheduler address that cannot be one (no port, unknown protocol)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, loc = parse_address(str(scheduler))
        if scheme in ("tcp", "tls", "ucx", "ws", "wss"):
            parse_host_port(loc)
    except (ValueError, TypeError) as e:
        raise XRDError(f"--scheduler {scheduler}: not a dask scheduler address ({e}); e.g. tcp://host:8786") from None


def _connect(workers: int, scheduler: str | None, timeout: float):
    """``(client, cluster or None)``; XRDError naming the address when the scheduler cannot be reached."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - distributed is a dependency
        raise XRDError("--workers/--scheduler need the 'distributed' package (pip install distributed)") from None
    if scheduler:
        _check_address(scheduler)  # before a Client exists (a half-made one hangs for 40 s at exit)
        try:
            client = Client(scheduler, timeout=timeout, set_as_default=False)
        except Exception as e:  # noqa: BLE001 - OSError, TimeoutError, ValueError for a bad address
            msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else f"no answer, {type(e).__name__}"
            raise XRDError(f"--scheduler {scheduler}: cannot reach a dask scheduler ({msg})") from None
        try:
            client.wait_for_workers(1, timeout=timeout)
        except Exception:  # noqa: BLE001
            client.close()
            raise XRDError(f"--scheduler {scheduler}: no dask worker connected within {timeout:g} s") from None
        return client, None
    n = int(workers)
    if n < 1:
        raise XRDError(f"--workers {workers} must be at least 1")
    cores = os.cpu_count() or 1
    if n > 4 * cores:  # each worker is a process with torch loaded: hundreds of them only thrash
        raise XRDError(f"--workers {n}: more than 4 per CPU core of this machine ({cores}); a local cluster of "
                       f"at most {4 * cores} workers, or --scheduler ADDRESS for a real cluster")
    # no dashboard; the scheduler's small HTTP server on a free port (never a warning about port 8787)
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                           scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR)
    try:
        client = Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise
    return client, cluster


def _n_workers(client) -> int:
    try:
        return max(1, len(client.scheduler_info()["workers"]))
    except Exception:  # noqa: BLE001
        return 1


def _close_quietly(*things) -> None:
    """Close the client and the local cluster. Connections that close while the cluster shuts down make
    dask log tracebacks (``CommClosedError``) that say nothing about the result: silenced for the close."""
    loggers = [logging.getLogger(n) for n in ("distributed", "tornado.application", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        for t in things:
            if t is not None:
                with contextlib.suppress(Exception):
                    t.close()
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def predict_distributed(
    model,
    stack: ScanStack,
    output: str | Path | None = None,
    *,
    infer: InferConfig | None = None,
    workers: int = 0,
    scheduler: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    provenance: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    device: str | None = None,
    connect_timeout: float | None = None,
    center: tuple[float, float] | list[float] | None = None,
) -> np.ndarray | Path:
    """Denoise every frame of ``stack`` on dask workers; same result and outputs as ``predict_stack``.

    ``workers=N`` starts a local cluster of N single-threaded processes (closed afterwards);
    ``scheduler="tcp://host:8786"`` uses an existing cluster (``connect_timeout`` seconds to reach it and
    see a worker; default ``CONNECT_TIMEOUT_S``). ``device``: force every worker onto one
    device (default: the worker's GPU, ``cuda:{index % GPUs}``, else the CPU). ``output=None`` returns
    the float32 array; otherwise the path of the output (written atomically, ``resume`` as in
    ``predict_stack``). ``cancel`` stops between chunks and leaves no output. ``center``: the data's beam
    centre, as in ``predict_stack``.
    """
    from .methods import get_method

    if not workers and not scheduler:
        raise XRDError("predict_distributed needs --workers N or --scheduler ADDRESS")
    inf = infer or model.config.infer
    center = data_center(model, stack, center)
    model = model.with_center(center)
    if stack.frame_ndim != model.frame_ndim:
        raise XRDError(f"{stack.label}: the model denoises {model.frame_ndim}D frames but the data have {stack.frame_ndim}D frames")
    stack.check_denoisable()
    model_grid = borrowed_grid(model, stack)  # a flat file and a neighbours model: its grid, said
    n = stack.n_frames
    chunk = max(1, int(inf.chunk_frames))
    infer_dict = {k: getattr(inf, k) for k in inf.__dataclass_fields__}

    # how the workers get their frames
    spec: Any = reopen_spec(stack)
    send_frames = False
    if spec is None:
        if _pickled_size(stack) <= SHIP_STACK_BYTES:
            spec = stack
        else:
            spec = _skeleton(stack)
            send_frames = True
    mode = "reopen" if isinstance(spec, ReopenSpec) else ("frames" if send_frames else "stack")

    model_blob = _model_bytes(model)
    model_key = hashlib.sha256(model_blob).hexdigest()
    rings = profile_rings(model, stack, inf, center)  # decided (and refused) here, sent once to every worker
    whole = whole_frame_flux(stack, inf, rings)

    prov = None
    if output is not None:
        prov = output_provenance(model, stack, inf, provenance, rings, whole, model_grid)
        where = f"scheduler {scheduler}" if scheduler else f"local cluster of {int(workers)} worker processes"
        prov["distributed"] = f"dask {where}; frames {'read by the workers' if mode == 'reopen' else 'sent by the client'}"
    writer, result, start = result_target(stack, output, prov, overwrite=overwrite, resume=resume)

    client = cluster = None
    futures: dict = {}
    try:
        timeout = CONNECT_TIMEOUT_S if connect_timeout is None else float(connect_timeout)
        client, cluster = _connect(workers, scheduler, timeout)
        from distributed import as_completed

        n_workers = _n_workers(client)
        model_future = client.scatter(model_blob, broadcast=True)
        spec_future = client.scatter(spec, broadcast=True)
        rings_future = None if rings is None else client.scatter(rings, broadcast=True)
        flat = stack.flat()
        chunks = iter([(c0, min(n, c0 + chunk)) for c0 in range(start, n, chunk)])
        limit = max(2, 2 * n_workers)
        buffer: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
        ac = as_completed(loop=client.loop)
        done = start
        tally = CountsTally(stack)
        pool = _Once(lambda: sample_flux_factor(stack, model_frames(model, stack, inf)))
        if progress is not None:
            progress(done, n)

        def submit_next() -> bool:
            nxt = next(chunks, None)
            if nxt is None:
                return False
            c0, c1 = nxt
            frames = None
            if send_frames:
                rec = _Recorder(stack)
                # a fresh method: its caches are keyed by id(source), which a new recorder may reuse
                recorder = get_method(model.config.method.name)(model.config, frame_ndim=model.frame_ndim,
                                                                norm=model.normalizer)
                for i in range(c0, c1):
                    recorder.load_infer(i, rec)
                extra = sorted(rec.seen - set(range(c0, c1)))  # context frames outside the chunk
                raw = np.asarray(flat[c0:c1].compute())
                if extra:
                    raw = np.concatenate([raw, np.stack([np.asarray(flat[i].compute()) for i in extra])])
                frames = (np.array(list(range(c0, c1)) + extra, dtype=int), raw)
            fut = client.submit(denoise_chunk, model_key, model_future, spec_future, c0, c1, infer_dict, device,
                                frames, rings_future, whole, pure=False)
            futures[fut] = (c0, c1)
            ac.add(fut)
            return True

        more = True
        while done < n:
            while more and len(futures) + len(buffer) < limit:
                more = submit_next()
            if not futures:
                raise RuntimeError("no chunk in flight but frames remain")  # pragma: no cover - guard
            fut = next(ac)
            c0, c1 = futures.pop(fut)
            try:
                r0, out, valid, totals, sparse = fut.result()
            except XRDError:
                raise
            except Exception as e:  # a worker died or a task failed
                name = type(e).__name__
                if name == "KilledWorker":
                    raise XRDError(
                        f"{stack.label}: a dask worker died while denoising frames {c0}..{c1 - 1} "
                        "(out of memory? try a smaller infer.chunk_frames or infer.batch_size)"
                    ) from None
                raise
            tally.add_totals(*totals)
            for j in sparse:  # as predict_stack: the scan's shared factor, measured here when first needed
                out[j] = scale_sparse(out[j], valid[j], pool)
            buffer[r0] = (c1, out, valid)
            while done in buffer:
                e1, out, valid = buffer.pop(done)
                if writer is not None:
                    writer.write(done, out, valid)
                else:
                    result[done:e1] = out
                done = e1
                if progress is not None:
                    progress(done, n)
            if cancel is not None and cancel.is_set() and done < n:
                raise Cancelled("prediction cancelled")
    except BaseException as e:
        for f in list(futures):
            with contextlib.suppress(Exception):
                f.cancel()
        if writer is not None:
            if isinstance(e, KeyboardInterrupt):
                writer.suspend()  # complete leading frames are kept for resume=True
            else:
                writer.abort()
        raise
    finally:
        _close_quietly(client, cluster)
    tally.report()
    if writer is not None:
        writer.close()
        return Path(output)
    return result.reshape(stack.shape)
