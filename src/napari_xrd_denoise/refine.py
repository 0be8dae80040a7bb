"""Leak-free iterative refinement of the neighbour-scan blind spot (``method.cycles > 1``).

Idea (founding method): after a first training, feed the network *denoised* neighbours instead of
raw ones, which are cleaner inputs, and train again, for several cycles. Done naively this leaks:
the denoised neighbour ``j`` of position ``i`` was predicted from ``j``'s neighbours, which include
``i`` itself, so the raw noise of frame ``i`` reaches the input that predicts frame ``i`` (and with
targets that mix in previous outputs, the network ends up fitting itself).

Here the scan is partitioned into interleaved sub-lattices (:func:`physics.neighbors.lattice_labels`:
no position shares a lattice with any of its neighbours; 2 lattices for 4 neighbours, 4 for 8, 9 for
24). For every lattice ``A`` an estimate ``Z_A(m)`` of every frame ``m`` is kept that never depends on
the raw frames of ``A``:

* cycle 0: ``Z_A(m) = raw(m)`` for ``m`` not in ``A``; for ``m`` in ``A``, ``B0(m) = f0(raw(N(m)))``
  (the plain blind-spot prediction, A-free because no neighbour of an A position is in A);
* ``D_A = f_c(Z_A(N(.)))`` on every position, then for the next cycle
  ``Z_A(m) = (1 - a) raw(m) + a D_A(m)`` for ``m`` not in ``A`` and ``Z_A(m) = D_A(m)`` for ``m`` in ``A``,
  with ``a = c / cycles``.

Training of cycle ``c`` uses, for a target ``i`` of lattice ``A``, the input ``Z_A(N(i))``, and the
target is always the raw counts of frame ``i``, never a previous output. The final prediction of
``i`` in ``A`` is ``f_last(Z_A(N(i)))``; given the trained networks it does not depend on raw frame
``i`` at all (tests/test_neighbors.py perturbs a frame and checks this exactly).

Cost: ``K`` = number of lattices; the refinement keeps ``K`` estimates of every frame (on disk as a
memory-mapped file when larger than ``memory_limit``) and runs ``K (cycles - 1) + 2`` passes over
the scan besides the ``cycles`` trainings (each cycle after the first fine-tunes the previous
network, without warm-up).
"""

from __future__ import annotations

import copy
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import Config
from .errors import Cancelled, XRDError
from .io.stack import ScanStack
from .methods.base import FrameSource, stack_arrays
from .model_file import DenoiserModel
from .physics.neighbors import lattice_labels, neighbor_indices
from .training import TrainEvent, Trainer

MEMORY_LIMIT = 2 * 2**30  # bytes of estimates kept in RAM; larger go to a memory-mapped file


def mix_weight(cycle: int, cycles: int) -> float:
    """Weight of the denoised estimate in the input of ``cycle`` (0-based): ``cycle / cycles``."""
    return float(cycle) / float(cycles)


class Estimates:
    """Lattice-specific estimates of every frame: ``B0`` (N, *frame) and ``D`` (K, N, *frame)."""

    def __init__(self, n_lattices: int, n_frames: int, frame_shape: tuple[int, ...], workdir: Path | None,
                 memory_limit: int = MEMORY_LIMIT):
        self.k, self.n, self.frame = int(n_lattices), int(n_frames), tuple(frame_shape)
        self.workdir = workdir
        self.memory_limit = int(memory_limit)
        self._tmp = None
        self.b0 = self._alloc((self.n,) + self.frame, "b0")
        self.d: np.ndarray | None = None

    def _alloc(self, shape: tuple[int, ...], name: str) -> np.ndarray:
        nbytes = int(np.prod(shape)) * 4
        if nbytes <= self.memory_limit:
            return np.zeros(shape, dtype=np.float32)
        if self.workdir is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="xrd-refine-")
            base = Path(self._tmp.name)
        else:
            base = Path(self.workdir)
            base.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(base / f"{name}-{id(self)}-{np.random.randint(1 << 30)}.npy",
                                         mode="w+", dtype=np.float32, shape=shape)

    def new_d(self) -> np.ndarray:
        return self._alloc((self.k, self.n) + self.frame, "d")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class LatticeContext:
    """Context provider of cycle ``cycle``: for lattice ``A`` the neighbours' A-free estimates ``Z_A``.

    ``lattice=None`` uses the lattice of the frame being predicted (training); a fixed lattice is
    used for the passes that build the next estimates.
    """

    def __init__(self, cycle: int, cycles: int, est: Estimates, d: np.ndarray | None, labels: np.ndarray,
                 table: np.ndarray, lattice: int | None = None):
        self.cycle, self.alpha = int(cycle), mix_weight(cycle, cycles)
        self.est, self.d, self.labels, self.table, self.lattice = est, d, labels, table, lattice

    def estimate(self, m: int, lattice: int, source: FrameSource) -> tuple[np.ndarray, np.ndarray]:
        raw, v = source.get(int(m))
        in_a = int(self.labels[m]) == lattice
        if self.cycle == 0:
            z = self.est.b0[m] if in_a else raw
        else:
            den = self.d[lattice, m]
            z = den if in_a else (1.0 - self.alpha) * raw + self.alpha * den
        return np.where(v, z, 0.0).astype(np.float32), v

    def __call__(self, index: int, source: FrameSource) -> tuple[np.ndarray, np.ndarray]:
        lat = int(self.labels[index]) if self.lattice is None else int(self.lattice)
        pairs = [self.estimate(int(m), lat, source) for m in self.table[int(index)]]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@dataclass
class RefineResult:
    """``models``: one network per cycle; ``denoised``: counts of ``stack.shape`` (NaN where invalid)."""

    models: list[DenoiserModel]
    denoised: np.ndarray
    labels: np.ndarray
    history: list[dict[str, Any]] = field(default_factory=list)


class Refiner:
    """Train the neighbour-scan blind spot with leak-free iterative refinement and denoise the scan.

    ``callback`` receives the trainer's :class:`TrainEvent` objects plus ``message`` events naming the
    cycle. :meth:`cancel` stops the current training and raises :class:`Cancelled` from :meth:`run`.
    """

    def __init__(self, config: Config, stack: ScanStack, *, callback: Callable[[TrainEvent], None] | None = None,
                 workdir: str | Path | None = None, memory_limit: int = MEMORY_LIMIT):
        cfg = Config.from_dict(config.to_dict())
        if cfg.method.name != "neighbors":
            raise XRDError(f"method.name={cfg.method.name!r}: iterative refinement (method.cycles) needs --method neighbors")
        if len(stack.scan_shape) != 2:
            raise XRDError(
                f"{stack.label}: method.name='neighbors' needs the 2-D scan grid: give --scan-shape ROWSxCOLS"
            )
        self.config, self.stack, self.callback = cfg, stack, callback
        self.workdir = Path(workdir) if workdir is not None else None
        self.memory_limit = int(memory_limit)
        self.n = int(cfg.method.neighbors)
        self.table = neighbor_indices(stack.scan_shape, self.n)
        self.labels = lattice_labels(stack.scan_shape, self.n)
        self.k = int(self.labels.max()) + 1
        self._cancel = threading.Event()
        self._trainer: Trainer | None = None

    def cancel(self) -> None:
        self._cancel.set()
        if self._trainer is not None:
            self._trainer.cancel()

    def _emit(self, message: str) -> None:
        if self.callback is not None:
            self.callback(TrainEvent(kind="message", message=message))

    def _train(self, cycle: int, provider: LatticeContext | None, init: DenoiserModel | None) -> DenoiserModel:
        cfg = Config.from_dict(self.config.to_dict())
        if cycle > 0:
            cfg.method.warmup_epochs = 0
            cfg.method.loss = init.config.method.loss
        self._emit(f"refinement cycle {cycle + 1}/{self.config.method.cycles}: training")
        tr = Trainer(cfg, self.stack, callback=self.callback, init_model=init)
        tr.method.context_provider = provider
        self._trainer = tr
        if self._cancel.is_set():
            raise Cancelled("refinement cancelled")
        model = tr.run()
        if self._cancel.is_set() or tr.cancelled:
            raise Cancelled("refinement cancelled")
        self.history.append(dict(tr.history))
        return model

    def run(self) -> RefineResult:
        cycles = int(self.config.method.cycles)
        self.history: list[dict[str, Any]] = []
        models: list[DenoiserModel] = []

        def train_fn(cycle, provider):
            m = self._train(cycle, provider, models[-1] if models else None)
            models.append(m)
            return m

        out = _refine_core(self.stack, train_fn, cycles, self.table, self.labels, self.k,
                           workdir=self.workdir, memory_limit=self.memory_limit, cancel=self._cancel,
                           message=self._emit)
        return RefineResult(models=models, denoised=out, labels=self.labels, history=self.history)


def refine(config: Config, stack: ScanStack, **kw) -> RefineResult:
    """Train and denoise ``stack`` with ``config.method.cycles`` leak-free refinement cycles."""
    return Refiner(config, stack, **kw).run()


def refine_predict(models: list[DenoiserModel], stack: ScanStack, *, workdir: str | Path | None = None,
                   memory_limit: int = MEMORY_LIMIT) -> np.ndarray:
    """Apply already trained refinement networks (one per cycle) to ``stack``; counts, NaN where invalid."""
    if not models:
        raise XRDError("refine_predict needs the trained networks of every cycle")
    cfg = models[0].config
    if cfg.method.name != "neighbors":
        raise XRDError(f"model method {cfg.method.name!r} is not the neighbour-scan blind spot")
    if len(stack.scan_shape) != 2:
        raise XRDError(f"{stack.label}: method.name='neighbors' needs the 2-D scan grid: give --scan-shape ROWSxCOLS")
    n = int(cfg.method.neighbors)
    table = neighbor_indices(stack.scan_shape, n)
    labels = lattice_labels(stack.scan_shape, n)
    return _refine_core(stack, lambda c, p: models[c], len(models), table, labels, int(labels.max()) + 1,
                        workdir=Path(workdir) if workdir else None, memory_limit=memory_limit)


def _predict(model: DenoiserModel, provider: LatticeContext | None, source: FrameSource,
             positions: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
    """Counts predicted by ``model`` at ``positions`` with the neighbour context from ``provider``."""
    method = copy.copy(model.method)
    method.context_provider = provider
    inf = model.config.infer
    run = model.runner(inf)
    bs = max(1, int(inf.batch_size))
    out = np.empty((len(positions),) + source.frame_shape, dtype=np.float32)
    for s in range(0, len(positions), bs):
        if cancel is not None and cancel.is_set():
            raise Cancelled("refinement cancelled")
        idx = positions[s : s + bs]
        batch = stack_arrays([method.load_infer(int(i), source) for i in idx])
        out[s : s + len(idx)] = method.denoise(run, batch, inf)
    return out


def _refine_core(stack: ScanStack, get_model, cycles: int, table: np.ndarray, labels: np.ndarray, k: int, *,
                 workdir: Path | None, memory_limit: int, cancel: threading.Event | None = None,
                 message: Callable[[str], None] | None = None) -> np.ndarray:
    n_frames = stack.n_frames
    frame_bytes = int(np.prod(stack.frame_shape)) * 5
    source = FrameSource(stack, cache_frames=int(min(512, max(16, (256 * 2**20) // max(1, frame_bytes)))))
    allpos = np.arange(n_frames)
    say = message or (lambda m: None)

    f = get_model(0, None)
    est = Estimates(k, n_frames, stack.frame_shape, workdir, memory_limit)
    try:
        say("refinement: blind-spot prediction of every frame (cycle 1)")
        b0 = _predict(f, None, source, allpos, cancel)
        if cycles == 1:
            return b0.reshape(stack.shape)
        est.b0[:] = np.nan_to_num(b0)
        d = None
        for c in range(1, cycles):
            d_new = est.new_d()
            for lat in range(k):
                say(f"refinement cycle {c + 1}/{cycles}: estimates free of lattice {lat + 1}/{k}")
                prov = LatticeContext(c - 1, cycles, est, d, labels, table, lattice=lat)
                d_new[lat] = np.nan_to_num(_predict(f, prov, source, allpos, cancel))
            d = d_new
            f = get_model(c, LatticeContext(c, cycles, est, d, labels, table))
        out = np.empty((n_frames,) + stack.frame_shape, dtype=np.float32)
        for lat in range(k):
            pos = np.flatnonzero(labels == lat)
            prov = LatticeContext(cycles - 1, cycles, est, d, labels, table, lattice=lat)
            out[pos] = _predict(f, prov, source, pos, cancel)
        return out.reshape(stack.shape)
    finally:
        est.close()
