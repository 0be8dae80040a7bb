"""The training loop: any :class:`~napari_xrd_denoise.methods.base.Method`, events, cancel, checkpoints.

The trainer reads frames lazily (an LRU cache of decoded frames, a bounded number of frames per epoch),
draws random crops with rot90 / flip augmentation from one seeded generator, optimises with AdamW and a
cosine schedule with ``restarts`` cycles stepped once per optimiser step, validates on held-out frames
(or held-out pixels of a single frame) with a deterministic loss, stops early, restores the best
weights, and reports through :class:`TrainEvent` callbacks (possibly from the training thread).
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .config import Config, with_data_defaults
from .devices import amp_dtype, default_threads, resolve_device
from .errors import Cancelled, XRDError
from .io.atomic import atomic_path
from .io.stack import ScanStack
from .methods import build_method, resolve_auto
from .models import as_layout, fast_layout
from .methods.base import (
    CombinesWithSplit,
    FrameSource,
    Method,
    Normalizer,
    Sample,
    augment_arrays,
    crop_arrays,
    patch_size_for,
    stack_arrays,
)
from .model_file import DenoiserModel
from .models import build_model, stem_channels

log = logging.getLogger(__name__)
_INIT_LOCK = threading.Lock()  # see Trainer._run: seeding and drawing the initial weights

CACHE_BYTES = 512 * 2**20  # decoded frames kept in memory while training
VAL_SEED_OFFSET = 7919
HOLDOUT_KEY = "_holdout"
PREFETCH = 2  # training batches drawn ahead in a background thread (train.prefetch)
GRAD_CLIP = 1.0  # gradient norm clip: keeps the Poisson loss from collapsing the output at high lr
COLLAPSE_RATIO = 3.0  # an epoch's validation loss this many times the best one's: the network collapsed
MAX_ROLLBACKS = 3  # collapses recovered from (best weights, half the learning rate) before training stops


class EpochBatches:
    """One epoch's training batches, drawn ahead in a background thread while the network trains.

    ``draw()`` makes one batch; it is called ``n`` times in all, in order, by one worker thread, and
    never more than ``depth`` batches ahead of :meth:`next`, so the patches and the random generator's
    state at the end of the epoch are exactly those of drawing each batch in the loop (``depth`` 0).
    Drawing (reading, cropping, masking, splitting patches: numpy) then overlaps the training step
    (torch, which releases the interpreter lock while it computes). :meth:`close` waits for a batch
    being drawn and drops the rest (an epoch cut short by the time budget or a cancel)."""

    def __init__(self, draw: Callable[[], list[Sample]], n: int, depth: int = PREFETCH):
        self._draw, self._left, self.depth = draw, int(n), int(depth)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xrd-batches") if self.depth > 0 else None
        self._queue: deque = deque()
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and self._left > 0 and len(self._queue) < self.depth:
            self._queue.append(self._pool.submit(self._draw))
            self._left -= 1

    def next(self) -> list[Sample]:
        if self._pool is None:
            return self._draw()
        fut = self._queue.popleft()
        batch = fut.result()  # re-raises an error of the drawing thread here
        self._fill()
        return batch

    def close(self) -> None:
        if self._pool is not None:
            for f in self._queue:
                f.cancel()
            self._pool.shutdown(wait=True)
            self._queue.clear()
            self._pool = None


@dataclass
class TrainEvent:
    """A progress report from :class:`Trainer` (``kind``: start, step, epoch, preview, message, done, cancelled)."""

    kind: str
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None
    preview: np.ndarray | None = None
    message: str = ""


def cosine_factor(step: int, period: int, floor: float = 0.01) -> float:
    """Learning-rate factor of a cosine cycle of ``period`` steps restarting at every multiple of it:
    1 at the start of each cycle, decaying to ``floor`` at its end."""
    period = max(1, int(period))
    t = (int(step) % period) / period
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def collapsed(val: float | None, best_val: float) -> bool:
    """Whether an epoch's validation loss says the network has collapsed: far above the best epoch's (of
    the same loss, which is >= 0) or not finite. Seen on the neighbour method's Poisson link after many
    epochs at a constant learning rate: one step drives the output to zero everywhere, where its gradient
    vanishes, and no later step recovers (docs/methods.md)."""
    if val is None or not math.isfinite(best_val) or best_val <= 0:
        return False
    return not val <= COLLAPSE_RATIO * best_val


def schedule_period(total_steps: int, restarts: int) -> int:
    return max(1, int(math.ceil(total_steps / max(1, int(restarts)))))


#: single-frame methods that leave the frames of a scan grid unused
SINGLE_FRAME_METHODS = ("n2s", "n2v", "n2n-split")


def scan_grid_note(cfg: Config, source: FrameSource) -> str:
    """A one-line tip when a single-frame method trains on frames that lie on a 2-D scan grid (the
    stack's own, or ``data.scan_shape``) of at least 4 positions: the neighbour method also uses the
    neighbouring frames, which on the real Merlin 4D-STEM scan of docs/benchmarks.md scored 3.0 dB over
    ``n2n-split``, and on the synthetic scans, whose spots drift between positions, +1.0 / +0.6 / -0.3 dB
    at low / mid / high dose. The choice stays the user's; ``""`` otherwise."""
    from .methods.neighbors import scan_grid

    if cfg.method.name not in SINGLE_FRAME_METHODS or source.n_frames < 4:
        return ""
    try:
        grid = scan_grid(cfg, source)
    except XRDError:
        return ""
    return (f"the frames lie on a {grid[0]}x{grid[1]} scan grid: method 'neighbors' (--method neighbors) also "
            f"uses the neighbouring frames and denoises better where neighbouring patterns are alike "
            f"(4D-STEM; docs/methods.md)")


class Trainer:
    """Train a denoiser on ``stack`` with ``config``; see the module docstring.

    ``reference``: paired high-SNR frames (supervised). ``init_model``: fine-tune a saved model (its
    architecture and normalisation are kept). ``preview_index``: flat index of the frame denoised for
    preview events (default: the middle frame). ``checkpoint``: file written atomically after every
    epoch (default ``train.checkpoint_dir/checkpoint.pt`` when that is set); ``resume=True`` continues
    from it (weights, optimiser, schedule, epoch, random state).
    """

    def __init__(
        self,
        config: Config,
        stack: ScanStack,
        *,
        callback: Callable[[TrainEvent], None] | None = None,
        reference: ScanStack | None = None,
        init_model: DenoiserModel | None = None,
        preview_index: int | None = None,
        checkpoint: str | Path | None = None,
        resume: bool = False,
    ):
        cfg = with_data_defaults(Config.from_dict(config.to_dict()).with_chosen(config.chosen), int(stack.frame_ndim))
        cfg.data.ndim = int(stack.frame_ndim)
        stack.check_denoisable()
        cfg.method.name = resolve_auto(cfg, stack)
        if init_model is not None:
            if init_model.frame_ndim != stack.frame_ndim:
                raise XRDError(
                    f"method.init_model: the model denoises {init_model.frame_ndim}D frames but {stack.label} has {stack.frame_ndim}D frames"
                )
            cfg.model = copy.deepcopy(init_model.config.model)
        self.config = cfg
        self.stack = stack
        self.callback = callback
        self.init_model = init_model
        self._channels_last = False  # set by _run: inputs follow the network's memory layout
        self._cancel = threading.Event()
        self._data_lock = threading.Lock()
        self._batches: EpochBatches | None = None
        self.resume = bool(resume)
        tc = cfg.train
        if checkpoint is None and tc.checkpoint_dir:
            checkpoint = Path(tc.checkpoint_dir) / "checkpoint.pt"
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        if self.resume and (self.checkpoint is None or not self.checkpoint.is_file()):
            raise XRDError(f"{self.checkpoint or 'train.checkpoint_dir'}: no checkpoint to resume from")
        self.device, self.device_message = resolve_device(tc.device)
        self.amp_dtype: torch.dtype | None = None  # set when the run starts (train.amp)
        self.threads = int(tc.threads) if tc.threads else default_threads()

        frame_bytes = int(np.prod(stack.frame_shape)) * 5
        cache = int(min(256, max(4, CACHE_BYTES // max(1, frame_bytes))))
        self.source = FrameSource(stack, cache_frames=cache)
        self.ref_source = FrameSource(reference, cache_frames=cache) if reference is not None else None
        if init_model is not None:
            norm = init_model.normalizer
        else:
            norm = Normalizer.fit(cfg, self.source)
        self.norm = norm
        self.method: Method = build_method(cfg, stack, norm=norm)
        self.method.check(stack)
        self.method.attach(self.source, self.ref_source)
        cfg.model.in_channels = int(self.method.in_channels)
        cfg.model.residual_channel = self.method.residual_channel
        if cfg.model.arch == "unet":
            cfg.model.stem_width = stem_channels(cfg.model, cfg.model.in_channels)  # saved as a number
        self.residual_note = ""
        if cfg.model.residual is None:  # auto: the method decides; the model file keeps the choice
            use, why = self.method.auto_residual(self.source) if self.method.allow_residual else (False, "")
            cfg.model.residual = bool(use)
            self.residual_note = "" if use else why
        elif cfg.model.residual and not self.method.allow_residual:
            cfg.model.residual = False
            self.residual_note = f"model.residual turned off: {cfg.method.name} is a blind-spot method"
        self.scan_note = scan_grid_note(cfg, self.source)
        self.preview_index = (
            int(preview_index) if preview_index is not None else stack.n_frames // 2
        )
        if not 0 <= self.preview_index < stack.n_frames:
            raise XRDError(f"preview frame {self.preview_index} is outside 0..{stack.n_frames - 1} of {stack.label}")
        self.frames_per_epoch_cap = max(1, cache // 2)
        self.net: torch.nn.Module | None = None
        self.history: dict[str, Any] = {}

    # ---- control ------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask :meth:`run` to stop; it returns within about a second with the best model so far."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _emit(self, kind: str, **kw) -> None:
        if self.callback is not None:
            self.callback(TrainEvent(kind=kind, **kw))
        elif kind == "message" and kw.get("message"):
            log.warning(kw["message"])  # no listener (Python API without a callback): the logger says it

    # ---- data -----------------------------------------------------------------------------------------
    def _split_frames(self) -> None:
        cfg = self.config.train
        idx = np.asarray(self.method.train_indices(self.source), dtype=int)
        if idx.size == 0:
            raise XRDError(f"{self.stack.label}: method.name={self.config.method.name!r} found no frames to train on")
        rng = np.random.default_rng(cfg.seed + VAL_SEED_OFFSET)
        self.holdout = None
        if idx.size >= 2 and cfg.val_fraction > 0:
            n_val = min(idx.size - 1, max(1, int(round(cfg.val_fraction * idx.size))))
            val = np.sort(rng.choice(idx, size=n_val, replace=False))
            self.train_frames = np.setdiff1d(idx, val)
            self.val_frames = val
        elif idx.size == 1 and cfg.val_fraction > 0:
            # a single frame: hold out blocks of pixels (never in the training loss)
            self.train_frames = idx
            self.val_frames = idx
            shape = self.source.frame_shape
            b = max(4, min(self.patch) // 4)
            grid = tuple(int(math.ceil(s / b)) for s in shape)
            frac = max(float(cfg.val_fraction), 0.05)
            blocks = rng.random(grid) < frac
            if not blocks.any():
                blocks.flat[rng.integers(blocks.size)] = True
            hold = blocks
            for ax in range(len(shape)):
                hold = np.repeat(hold, b, axis=ax)
            self.holdout = np.ascontiguousarray(hold[tuple(slice(0, s) for s in shape)])
        else:
            self.train_frames = idx
            self.val_frames = np.array([], dtype=int)

    def _draw(self, frame: int, rng: np.random.Generator, space: str, augment: bool, train: bool,
              start: tuple[int, ...] | None = None) -> Sample:
        arrays = dict(self.method.load(int(frame), self.source))
        if self.holdout is not None:
            arrays[HOLDOUT_KEY] = self.holdout
        shape = self.source.frame_shape
        if start is None:
            start = tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch))
        arrays = crop_arrays(arrays, start, self.patch)
        nd = len(shape)
        if augment:
            k = int(rng.integers(4)) if (nd == 2 and self.patch[0] == self.patch[1]) else 0
            flips = tuple(bool(f) for f in rng.integers(0, 2, size=nd))
            arrays = augment_arrays(arrays, nd, k, flips)
        hold = arrays.pop(HOLDOUT_KEY, None)
        s = self.method.make_sample(arrays, rng, space)
        if hold is not None:
            keep = hold if not train else ~hold
            s.weight = s.weight * keep.astype(np.float32)
        return s

    def _batch(self, frames: np.ndarray, rng: np.random.Generator, space: str) -> list[Sample]:
        """One training batch: ``train.batch_size`` patches of frames drawn from ``frames``."""
        tc = self.config.train
        with self._data_lock:
            return [self._draw(int(frames[rng.integers(frames.size)]), rng, space, tc.augment, True)
                    for _ in range(tc.batch_size)]

    def _collate(self, samples: list[Sample]) -> tuple[torch.Tensor, ...]:
        dev = self.device
        x = as_layout(torch.from_numpy(np.stack([s.input for s in samples]).astype(np.float32)).to(dev),
                      self._channels_last)
        t = torch.from_numpy(np.stack([s.target for s in samples])[:, None].astype(np.float32)).to(dev)
        w = torch.from_numpy(np.stack([s.weight for s in samples])[:, None].astype(np.float32)).to(dev)
        sc = torch.tensor([s.scale for s in samples], dtype=torch.float32, device=dev)
        sc = sc.view((-1,) + (1,) * (x.ndim - 1))
        return x, t, w, sc

    def _loss(self, out: torch.Tensor, t: torch.Tensor, w: torch.Tensor, sc: torch.Tensor, space: str) -> torch.Tensor:
        return self.method.loss(out, t, w, sc, space)

    @staticmethod
    def _backward_step(loss: torch.Tensor, net: torch.nn.Module, opt, scaler) -> None:
        """Backward pass, gradient-norm clip (``GRAD_CLIP``) and optimiser step, with or without AMP."""
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), GRAD_CLIP)
            opt.step()

    def _val_plan(self) -> list[tuple[int, tuple[int, ...]]]:
        """Fixed (frame, window start) pairs of the validation patches."""
        cfg = self.config.train
        rng = np.random.default_rng(cfg.seed + 2 * VAL_SEED_OFFSET)
        shape = self.source.frame_shape
        n = int(min(32, max(4, 2 * cfg.batch_size)))
        if self.val_frames.size == 0:
            return []
        plan = []
        if self.holdout is not None:
            # windows centred on held-out pixels
            pts = np.argwhere(self.holdout)
            for _ in range(n):
                c = pts[rng.integers(len(pts))]
                st = tuple(int(np.clip(ci - p // 2, 0, s - p)) for ci, p, s in zip(c, self.patch, shape))
                plan.append((int(self.val_frames[0]), st))
            return plan
        for j in range(n):
            f = int(self.val_frames[j % self.val_frames.size])
            st = tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(shape, self.patch))
            plan.append((f, st))
        return plan

    @torch.no_grad()
    def _validate(self, space: str) -> float | None:
        if not self.val_plan:
            return None
        rng = np.random.default_rng(self.config.train.seed + 3 * VAL_SEED_OFFSET)
        net = self.net
        net.eval()
        tot, n = 0.0, 0
        bs = self.config.train.batch_size
        try:
            for j in range(0, len(self.val_plan), bs):
                if self._cancel.is_set():
                    return None
                samples = [self._draw(f, rng, space, False, False, start=st) for f, st in self.val_plan[j : j + bs]]
                x, t, w, sc = self._collate(samples)
                with self._autocast():
                    out = net(x)
                tot += float(self._loss(out, t, w, sc, space)) * len(samples)
                n += len(samples)
        finally:
            net.train()
        return tot / max(1, n)

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    # ---- models ---------------------------------------------------------------------------------------
    def _model(self, net: torch.nn.Module | None = None) -> DenoiserModel:
        net = net or self.net
        return DenoiserModel(self.config, net, self.norm.to_dict(), version=__version__,
                             history=self.history, device=self.device)

    def _preview(self) -> np.ndarray:
        """The preview frame denoised in counts by the current weights, in one network pass: the method's
        own inference (a split-trained network needs its half and context channels) with one split pass,
        no J-invariant phases and no test-time augmentation; the full inference is the final prediction's."""
        try:
            m = self._model()
            with self._data_lock:  # the batch thread reads the same frame cache
                batch = stack_arrays([self.method.load_infer(self.preview_index, self.source)])
            inf = copy.deepcopy(self.config.infer)
            inf.j_invariant = False
            inf.tta = False
            inf.split_passes = 1
            return self.method.denoise(m.runner(inf), batch, inf)[0]
        finally:
            self.net.train()

    # ---- checkpoints ----------------------------------------------------------------------------------
    def _checkpoint_dict(self, epoch: int, step: int, np_rng_state: dict, opt, sched, scaler, best) -> dict[str, Any]:
        return {
            "format": "napari-xrd-denoise-checkpoint",
            "version": __version__,
            "config": self.config.to_json(indent=None),
            "norm": self.norm.to_dict(),
            "epoch": int(epoch),
            "step": int(step),
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best": best,
            "history": self.history,
            "np_rng": np_rng_state,
            "torch_rng": torch.get_rng_state(),
            "elapsed_s": self._elapsed(),
        }

    def _write_checkpoint(self, d: dict[str, Any]) -> None:
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint, overwrite=True) as tmp:
            torch.save(d, tmp)

    def _save_checkpoint(self, epoch: int, step: int, rng: np.random.Generator, opt, sched, scaler, best) -> None:
        if self.checkpoint is None:
            return
        self._write_checkpoint(self._checkpoint_dict(epoch, step, rng.bit_generator.state, opt, sched, scaler, best))

    def _load_checkpoint(self) -> dict[str, Any]:
        try:
            d = torch.load(self.checkpoint, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any failure means the file is not usable
            raise XRDError(f"{self.checkpoint}: not a usable training checkpoint ({type(e).__name__})") from None
        if not isinstance(d, dict) or d.get("format") != "napari-xrd-denoise-checkpoint":
            raise XRDError(f"{self.checkpoint}: not a napari-xrd-denoise training checkpoint")
        old = Config.from_dict(__import__("json").loads(d["config"]))
        if old.model != self.config.model or old.method.name != self.config.method.name:
            raise XRDError(f"{self.checkpoint}: checkpoint was made with a different method or model; cannot resume")
        return d

    def _eta(self, steps_done: int, steps_left: int, elapsed_s: float, budget_s: float) -> float:
        """Seconds left: the remaining steps at this session's pace, or the time budget's rest if sooner."""
        eta = (time.monotonic() - self._t0) / max(1, steps_done) * max(0, steps_left)
        return min(eta, max(0.0, budget_s - elapsed_s)) if budget_s > 0 else eta

    def _elapsed(self) -> float:
        return self._elapsed0 + (time.monotonic() - self._t0)

    # ---- the loop -------------------------------------------------------------------------------------
    def run(self) -> DenoiserModel:
        """Train; returns the model with the best validation loss (or the last one without validation)."""
        cfg = self.config
        tc = cfg.train
        prev_threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, self.threads))
        try:
            return self._run(cfg, tc)
        finally:
            if self._batches is not None:
                self._batches.close()  # an error left the epoch's batch thread running
                self._batches = None
            if self.device.type == "cpu":
                torch.set_num_threads(prev_threads)

    # ---- hooks (DDP training overrides these; see ddp.py) -----------------------------------------------
    def _make_rng(self, tc) -> np.random.Generator:
        """The generator that draws the training patches."""
        return np.random.default_rng(tc.seed)

    def _restore_rng(self, d: dict[str, Any], rng: np.random.Generator) -> np.random.Generator:
        rng.bit_generator.state = d["np_rng"]
        return rng

    def _wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        """The module the training steps call (the network itself, or a DDP wrapper around it)."""
        return net

    def _cancel_now(self) -> bool:
        """Stop before the next step? (DDP ranks only stop together, through :meth:`_sync_step`.)"""
        return self._cancel.is_set()

    def _sync_step(self, loss: float, over_time: bool) -> tuple[float, bool, bool]:
        """``(loss, cancel, over_time)`` after a step, agreed between processes when there are several."""
        return loss, False, over_time

    def _epoch_validation(self, space: str) -> float | None:
        return self._validate(space)

    def _start_message(self, cfg: Config) -> str:
        name = cfg.method.name
        if isinstance(self.method, CombinesWithSplit) and self.method.split:
            name += " + binomial split"
        prec = {torch.float16: ", float16 mixed precision", torch.bfloat16: ", bfloat16 mixed precision"}.get(self.amp_dtype, "")
        return f"{name} on {self.device}{prec}, {self.train_frames.size} training frame(s)"

    def _saw_batch(self, x: torch.Tensor) -> None:
        """Called with every training batch before its step."""

    def _finish(self, stopped: str, step: int, tc) -> None:
        """Called once after the last step, before the best weights are restored."""

    def _no_model(self, stopped: str, epoch: int, step: int, total: int, tc) -> None:
        """Stopped (or diverged) before any epoch finished: there are no trained weights to return, so
        raise instead of handing back the untrained (or unchanged starting) network as if it were a
        result. A caller's previous model, and any checkpoint, stay as they were."""
        self.stopped = stopped
        if stopped == "diverged":
            raise XRDError("training diverged (non-finite loss) before its first epoch finished: no model was "
                           "made; try a lower train.lr")
        msg = "training stopped before its first epoch finished: no new model was made"
        self._emit("cancelled", epoch=epoch, epochs=tc.epochs, step=step, total_steps=total, elapsed_s=self._elapsed(),
                   message=msg)
        raise Cancelled(msg)

    def _run(self, cfg: Config, tc) -> DenoiserModel:
        self._t0 = time.monotonic()
        self._elapsed0 = 0.0
        rng = self._make_rng(tc)
        self.patch = patch_size_for(self.source.frame_shape, tc.patch_size)
        self._split_frames()
        self.val_plan = self._val_plan()

        # the initial weights are the only draw from torch's (process-wide) generator: seed and draw under
        # a lock, so that trainings started at once in several threads each get their seed's weights
        with _INIT_LOCK:
            torch.manual_seed(tc.seed)
            net = build_model(cfg.model, cfg.data.ndim, in_channels=cfg.model.in_channels)
        if self.init_model is not None:
            try:
                net.load_state_dict(self.init_model.net.state_dict())
            except RuntimeError:
                raise XRDError("method.init_model: the saved model's architecture does not match this method") from None
        self.net = net = net.to(self.device)
        self._channels_last = fast_layout(net, int(cfg.data.ndim), self.device)
        self.amp_dtype = amp_dtype(self.device, bool(tc.amp))
        opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        total = int(tc.epochs * tc.steps_per_epoch)
        budget_s = float(tc.max_minutes or 0.0) * 60.0
        period = schedule_period(total, tc.restarts)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, period))
        scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None

        self.history = {"train_loss": [], "val_loss": [], "lr": [], "loss_space": [], "epoch_s": [],
                        "best_epoch": None, "best_val": None, "method": cfg.method.name,
                        "train_frames": int(self.train_frames.size), "val_frames": int(self.val_frames.size)}
        best: dict[str, Any] = {"val": math.inf, "epoch": -1, "state": None, "space": None}
        start_epoch, step = 0, 0
        if self.resume:
            d = self._load_checkpoint()
            net.load_state_dict(d["net"])
            opt.load_state_dict(d["optimizer"])
            sched.load_state_dict(d["scheduler"])
            if scaler is not None and d.get("scaler"):
                scaler.load_state_dict(d["scaler"])
            rng = self._restore_rng(d, rng)
            torch.set_rng_state(d["torch_rng"])
            self.history = d["history"]
            best = d["best"]
            start_epoch, step = int(d["epoch"]) + 1, int(d["step"])
            self._elapsed0 = float(d.get("elapsed_s", 0.0))
        fwd = self._wrap(net)

        for msg in (self.device_message, self.residual_note, self.scan_note, *self.method.messages):
            if msg:
                self._emit("message", message=msg)
        self._emit("start", epoch=start_epoch, epochs=tc.epochs, step=step, total_steps=total,
                   message=self._start_message(cfg) + (", resumed" if self.resume else ""))
        fwd.train()
        stopped, stale = "", 0
        if best.get("epoch", -1) >= 0 and self.history["val_loss"]:
            stale = len(self.history["val_loss"]) - 1 - best["epoch"]
        step_every = max(1, min(10, tc.steps_per_epoch // 5))
        steps_done_now = 0
        epoch = start_epoch
        for epoch in range(start_epoch, tc.epochs):
            t_ep = time.monotonic()
            self.method.begin_epoch(epoch)
            space = self.method.loss_space(epoch)
            if best.get("space") not in (None, space):
                best = {"val": math.inf, "epoch": -1, "state": None, "space": space}  # the loss changed meaning
                stale = 0
            n_fr = min(self.train_frames.size, self.frames_per_epoch_cap)
            frames = rng.choice(self.train_frames, size=n_fr, replace=False)
            losses = []
            self._batches = batches = EpochBatches(lambda: self._batch(frames, rng, space), tc.steps_per_epoch,
                                                   PREFETCH if tc.prefetch else 0)
            for _ in range(tc.steps_per_epoch):
                if self._cancel_now():
                    stopped = "cancelled"
                    break
                x, t, w, sc = self._collate(batches.next())
                self._saw_batch(x)
                opt.zero_grad(set_to_none=True)
                with self._autocast():
                    out = fwd(x)
                loss = self._loss(out, t, w, sc, space)
                self._backward_step(loss, net, opt, scaler)
                sched.step()
                step += 1
                steps_done_now += 1
                el = self._elapsed()
                lv, cancelled, over_time = self._sync_step(float(loss.detach()),
                                                           bool(tc.max_minutes and el > tc.max_minutes * 60))
                if not math.isfinite(lv):
                    stopped = "diverged"
                    break
                losses.append(lv)
                eta = self._eta(steps_done_now, total - step, el, budget_s)
                if step % step_every == 0:
                    self._emit("step", epoch=epoch, epochs=tc.epochs, step=step, total_steps=total,
                               train_loss=float(np.mean(losses[-step_every:])), elapsed_s=el, eta_s=eta)
                if tc.preview_every and step % tc.preview_every == 0 and self.callback is not None:
                    self._emit("preview", epoch=epoch, epochs=tc.epochs, step=step, total_steps=total,
                               elapsed_s=el, eta_s=eta, preview=self._preview())
                if cancelled:
                    stopped = "cancelled"
                    break
                if over_time:
                    stopped = "time"
                    break
            batches.close()
            if stopped in ("cancelled", "diverged"):
                break
            if not losses:
                break
            val = self._epoch_validation(space)
            if self._cancel_now():
                stopped = "cancelled"
                break
            tr = float(np.mean(losses))
            self.history["train_loss"].append(tr)
            self.history["val_loss"].append(val)
            self.history["lr"].append(float(opt.param_groups[0]["lr"]))
            self.history["loss_space"].append(space)
            self.history["epoch_s"].append(time.monotonic() - t_ep)
            score = val if val is not None else tr
            if collapsed(val, best["val"]) and best.get("state") is not None:
                rolled = self.history.setdefault("rollbacks", [])
                if len(rolled) >= MAX_ROLLBACKS:
                    self._emit("message", message=f"training collapsed again at epoch {epoch + 1} (validation loss "
                                                  f"{val:.4g}, best {best['val']:.4g}); stopped with the best weights")
                    stopped = "collapsed"
                    break
                rolled.append(epoch)
                net.load_state_dict(best["state"])
                opt.state.clear()  # the moments that took the collapsing step
                sched.base_lrs = [b * 0.5 for b in sched.base_lrs]
                for g, b, f in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
                    g["lr"] = b * f(sched.last_epoch)  # the schedule's own rate, now halved
                self._emit("message", message=f"training collapsed at epoch {epoch + 1} (validation loss {val:.4g}, "
                                              f"best {best['val']:.4g} at epoch {best['epoch'] + 1}): went on from "
                                              f"that epoch's weights at half the learning rate")
                stale += 1
            elif score < best["val"]:
                best = {"val": score, "epoch": epoch, "space": space,
                        "state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}}
                stale = 0
            else:
                stale += 1
            self.history["best_epoch"], self.history["best_val"] = int(best["epoch"]), float(best["val"])
            el = self._elapsed()
            self._emit("epoch", epoch=epoch, epochs=tc.epochs, step=step, total_steps=total, train_loss=tr,
                       val_loss=val, elapsed_s=el, eta_s=self._eta(steps_done_now, total - step, el, budget_s))
            self._save_checkpoint(epoch, step, rng, opt, sched, scaler, best)
            if stopped == "time":
                self._emit("message", message=f"time budget of {tc.max_minutes:g} min reached after epoch {epoch + 1}")
                break
            if tc.patience and stale >= tc.patience and val is not None:
                self._emit("message", message=f"early stop: no validation improvement for {tc.patience} epochs")
                stopped = "early"
                break

        self._finish(stopped, step, tc)
        if best.get("state") is None and stopped in ("cancelled", "diverged"):
            self._no_model(stopped, epoch, step, total, tc)
        if best.get("state") is not None:
            net.load_state_dict(best["state"])
        net.eval()
        # the saved config names the loss space the weights were trained in (inference converts by it)
        cfg.method.loss = best.get("space") or self.method.loss_space(None)
        model = self._model()
        model._method = None
        el = self._elapsed()
        if stopped == "diverged":
            self._emit("message", message="training diverged (non-finite loss); kept the best weights so far (try a lower train.lr)")
        kind = "cancelled" if stopped == "cancelled" else "done"
        self._emit(kind, epoch=epoch, epochs=tc.epochs, step=step, total_steps=total,
                   val_loss=self.history.get("best_val"), elapsed_s=el,
                   message=f"best epoch {best.get('epoch', -1) + 1}" if best.get("epoch", -1) >= 0 else "")
        self.stopped = stopped
        return model
