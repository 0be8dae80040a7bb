"""A trained denoiser: network weights + the Config it was trained with + normalisation + version.

Saved as a ``torch.save`` of a plain dict (tensors, strings, numbers), written atomically, loadable
with ``weights_only=True``. :meth:`DenoiserModel.denoise_frames` and :func:`run_network` are the
in-memory inference path used by the trainer's previews and by :mod:`napari_xrd_denoise.inference`.
"""

from __future__ import annotations

import json
import logging
import math
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import Config, InferConfig
from .devices import resolve_device
from .errors import XRDError
from .io.atomic import atomic_path
from .io.stack import ScanStack
from .methods import get_method
from .methods.base import FrameSource, Method, Normalizer, stack_arrays
from .models import build_model

FORMAT = "napari-xrd-denoise-model"
FORMAT_VERSION = 1


# --------------------------------------------------------------------------------------------------
# Running a network on numpy frames: batching, tiling with smooth blending
# --------------------------------------------------------------------------------------------------
def _balanced_tile(length: int, tile: int, overlap: int, multiple: int = 16) -> int:
    """The tile side along an axis of ``length``: the whole axis where one tile holds it, otherwise the
    smallest side (a multiple of ``multiple``, at most ``tile``) that covers the axis with as many tiles as
    ``tile`` would need. A 516-row Lambda frame then runs as two tiles of 288 rows, not two of 512."""
    if length <= tile:
        return length
    n = -(-(length - overlap) // max(1, tile - overlap))
    side = -(-(length + (n - 1) * overlap) // n)
    side = -(-side // multiple) * multiple
    return int(min(tile, max(side, 2 * overlap + 1)))


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    s = list(range(0, length - tile, step))
    s.append(length - tile)
    return sorted(set(s))


def _window_1d(tile: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Blend weights along one axis of a tile: 0 on the outer quarter of an interior overlap, a raised
    cosine up to 1 over its middle half, 1 elsewhere; tapers of neighbouring tiles sum to 1."""
    w = np.ones(tile, dtype=np.float64)
    if overlap <= 0:
        return w
    d = np.arange(tile) + 0.5
    lo, span = overlap / 4.0, overlap / 2.0
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.clip((d - lo) / span, 0.0, 1.0))
    if not first:
        w *= ramp
    if not last:
        w *= ramp[::-1]
    return w


_log = logging.getLogger("napari_xrd_denoise")
_OOM_LIMITS: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, int]]" = weakref.WeakKeyDictionary()


def _is_oom(e: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def run_network(
    net: torch.nn.Module,
    x: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 4,
    tile: int = 512,
    overlap: int = 32,
    amp: bool = False,
) -> np.ndarray:
    """:func:`_run_network_once`, retried with half the batch (then half the tile) when the device runs
    out of memory; says so once in the log, and remembers the smaller sizes for this network."""
    bs, t = _OOM_LIMITS.get(net, (int(batch_size), int(tile)))
    bs, t = min(bs, int(batch_size)), min(t, int(tile))
    while True:
        try:
            out = _run_network_once(net, x, device=device, batch_size=bs, tile=t, overlap=overlap, amp=amp)
            if (bs, t) != (int(batch_size), int(tile)):
                _OOM_LIMITS[net] = (bs, t)
            return out
        except Exception as e:  # noqa: BLE001 - only out-of-memory errors are retried
            if not _is_oom(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if bs > 1:
                bs //= 2
            elif t // 2 >= max(64, 4 * overlap):
                t //= 2
            else:
                raise XRDError(
                    f"out of memory on {device} even with batch 1 and tile {t}: try --device cpu"
                ) from None
            _log.warning("%s ran out of memory: retrying with batch %d and tile %d", device, bs, t)


def _run_network_once(
    net: torch.nn.Module,
    x: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 4,
    tile: int = 512,
    overlap: int = 32,
    amp: bool = False,
) -> np.ndarray:
    """Apply ``net`` to ``x`` of shape ``(B, C, *frame)``; returns ``(B, *frame)`` float32.

    Frames with a side longer than ``tile`` are cut into overlapping tiles (``overlap`` pixels) whose
    predictions are blended with smooth weights (no seams). Runs under ``torch.inference_mode``.
    """
    x = np.asarray(x, dtype=np.float32)
    ndim = x.ndim - 2
    frame = x.shape[2:]
    was_training = net.training
    net.eval()
    use_amp = bool(amp and device.type == "cuda")
    from .models import as_layout, fast_layout

    cl = fast_layout(net, ndim, device)
    if device.type == "cpu":
        # one frame per call is fastest on a CPU (2 cores, 512x512, channels-last: 3.3 frames/s with batch 1,
        # 3.0 with 2, 2.5 with 4); batches pay off on GPUs
        batch_size = 1

    def fwd(batch: np.ndarray) -> np.ndarray:
        t = as_layout(torch.from_numpy(np.ascontiguousarray(batch)).to(device), cl)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            y = net(t)
        return y[:, 0].float().cpu().numpy()

    try:
        with torch.inference_mode():
            if all(s <= tile for s in frame):
                out = [fwd(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
                return np.concatenate(out, axis=0).astype(np.float32)
            tsize = tuple(_balanced_tile(s, tile, overlap) for s in frame)
            starts = [_starts(s, t, overlap) for s, t in zip(frame, tsize)]
            wins = []
            for ax in range(ndim):
                st = starts[ax]
                wins.append(
                    [_window_1d(tsize[ax], overlap if len(st) > 1 else 0, j == 0, j == len(st) - 1) for j in range(len(st))]
                )
            acc = np.zeros((x.shape[0],) + frame, dtype=np.float64)
            wsum = np.zeros(frame, dtype=np.float64)
            jobs = [(b, pos) for b in range(x.shape[0]) for pos in np.ndindex(*[len(s) for s in starts])]
            for j0 in range(0, len(jobs), batch_size):
                chunk = jobs[j0 : j0 + batch_size]
                tiles = []
                for b, pos in chunk:
                    sl = tuple(slice(starts[a][p], starts[a][p] + tsize[a]) for a, p in enumerate(pos))
                    tiles.append(x[(b, slice(None)) + sl])
                y = fwd(np.stack(tiles))
                for (b, pos), yt in zip(chunk, y):
                    sl = tuple(slice(starts[a][p], starts[a][p] + tsize[a]) for a, p in enumerate(pos))
                    w = wins[0][pos[0]]
                    if ndim == 2:
                        w = w[:, None] * wins[1][pos[1]][None, :]
                    acc[(b,) + sl] += w * yt
            # the weights do not depend on the frame: accumulate them once per tile position
            for pos in np.ndindex(*[len(s) for s in starts]):
                sl = tuple(slice(starts[a][p], starts[a][p] + tsize[a]) for a, p in enumerate(pos))
                w = wins[0][pos[0]]
                if ndim == 2:
                    w = w[:, None] * wins[1][pos[1]][None, :]
                wsum[sl] += w
            return (acc / np.maximum(wsum, 1e-12)).astype(np.float32)
    finally:
        net.train(was_training)


# --------------------------------------------------------------------------------------------------
# The model file
# --------------------------------------------------------------------------------------------------
class DenoiserModel:
    """A trained network with everything needed to apply it: ``config`` (method name resolved,
    ``data.ndim`` = frame dimensionality), ``net``, ``norm`` (the :class:`Normalizer` as a dict),
    ``version`` (package version that trained it) and ``history`` (losses per epoch)."""

    def __init__(
        self,
        config: Config,
        net: torch.nn.Module,
        norm: dict[str, Any],
        version: str = __version__,
        history: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
    ):
        self.config = config
        self.net = net
        self.norm = dict(norm)
        self.version = version
        self.history = dict(history or {})
        self.source_path: str | None = None  # the model file, when loaded from one
        if device is None:
            device = next(net.parameters()).device
        self.device = torch.device(device)
        self.net.to(self.device)
        self._method: Method | None = None

    # ---- pieces ---------------------------------------------------------------------------------
    @property
    def normalizer(self) -> Normalizer:
        return Normalizer.from_dict(self.norm)

    def fingerprint(self) -> str:
        """SHA-256 of the network's weights and the model's normalisation: two models give the same
        frames only if these agree (a resumed prediction checks it)."""
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().to("cpu").contiguous().numpy().tobytes())
        h.update(json.dumps(self.norm, sort_keys=True, default=str).encode())
        return h.hexdigest()

    @property
    def frame_ndim(self) -> int:
        nd = self.config.data.ndim or getattr(self.net, "ndim", None) or 2
        return int(nd)

    @property
    def method(self) -> Method:
        if self._method is None:
            cls = get_method(self.config.method.name)
            self._method = cls(self.config, frame_ndim=self.frame_ndim, norm=self.normalizer)
        return self._method

    def with_center(self, center: tuple[float, float] | list[float] | None) -> "DenoiserModel":
        """This model (the same network) with another beam centre for its method (the symmetry partner);
        ``self`` unless the centre differs. The model itself is left as it is."""
        if center is None or self.config.method.name != "symmetry":
            return self
        c = [float(center[0]), float(center[1])]
        if self.config.method.center is not None and list(map(float, self.config.method.center)) == c:
            return self
        cfg = Config.from_dict(self.config.to_dict())
        cfg.method.center = c
        return DenoiserModel(cfg, self.net, self.norm, self.version, self.history, device=self.device)

    def to(self, device: str | torch.device | None) -> "DenoiserModel":
        """Move the network to ``device`` (a name such as ``auto``/``cpu``/``cuda:1`` or a torch device)."""
        if device is None:
            return self
        if not isinstance(device, torch.device):
            device, _ = resolve_device(device)
        self.device = device
        self.net.to(device)
        return self

    def runner(self, infer: InferConfig | None = None):
        """``run(x)`` for :meth:`Method.predict`: the network on ``(B, C, *frame)`` numpy batches."""
        inf = infer or self.config.infer

        def run(x: np.ndarray) -> np.ndarray:
            return run_network(
                self.net, x, device=self.device, batch_size=inf.batch_size, tile=inf.tile, overlap=inf.overlap,
                amp=bool(self.config.train.amp),
            )

        return run

    # ---- inference ------------------------------------------------------------------------------
    def denoise_frames(self, raw: np.ndarray, valid: np.ndarray | None = None, infer: InferConfig | None = None) -> np.ndarray:
        """Denoise a batch of raw frames ``(B, *frame)`` (or one frame) -> counts float32, NaN where invalid.

        ``valid`` (same shape, ``True`` = usable) defaults to the validity found from the raw values.
        Methods that need other frames (neighbours, realisations) treat the batch as the whole stack.
        """
        raw = np.asarray(raw)
        nd = self.frame_ndim
        single = raw.ndim == nd
        if single:
            raw = raw[None]
            if valid is not None:
                valid = np.asarray(valid)[None]
        if raw.ndim != nd + 1:
            raise XRDError(f"denoise_frames: expected frames with {nd} axes (optionally batched), got shape {raw.shape}")
        stack = ScanStack.from_array(raw, frame_ndim=nd)
        src = FrameSource(stack, cache_frames=max(1, raw.shape[0]))
        counts, v = stack.counts(raw)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            if valid.shape != raw.shape:
                raise XRDError(f"denoise_frames: valid mask shape {valid.shape} does not match frames {raw.shape}")
            v = v & valid
            counts = np.where(v, counts, 0).astype(np.float32)
        for i in range(raw.shape[0]):
            src.put(i, counts[i], v[i])
        inf = infer or self.config.infer
        m = self.method
        run = self.runner(inf)
        out = np.empty(raw.shape, dtype=np.float32)
        bs = max(1, int(inf.batch_size))
        for s in range(0, raw.shape[0], bs):
            idx = range(s, min(raw.shape[0], s + bs))
            batch = stack_arrays([m.load_infer(i, src) for i in idx])
            out[s : s + len(idx)] = m.denoise(run, batch, inf)
        return out[0] if single else out

    # ---- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "version": self.version,
            "config": self.config.to_json(indent=None),
            "norm": dict(self.norm),
            "history": json.dumps(_jsonable(self.history)),
            "state_dict": state,
        }

    def save(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the model atomically (``.pt`` suggested); returns the path."""
        path = Path(path)
        with atomic_path(path, overwrite=overwrite) as tmp:
            torch.save(self.to_dict(), tmp)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], device: str | torch.device = "auto", label: str = "<model>") -> "DenoiserModel":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise XRDError(f"{label}: not a napari-xrd-denoise model file")
        try:
            saved = json.loads(d["config"])
            config = Config.from_dict(saved)
            if "stem_width" not in (saved.get("model") or {}):
                config.model.stem_width = config.model.width  # files from before model.stem_width
            if "fill_invalid" not in (saved.get("method") or {}):
                config.method.fill_invalid = False  # files from before method.fill_invalid were trained on 0s
            norm = dict(d["norm"])
            history = json.loads(d.get("history") or "{}")
            in_ch = get_method(config.method.name)(config, norm=Normalizer.from_dict(norm)).in_channels
            net = build_model(config.model, int(config.data.ndim or 2), in_channels=in_ch)
            net.load_state_dict(d["state_dict"])
        except XRDError as e:
            raise XRDError(f"{label}: {e}") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise XRDError(f"{label}: damaged or incompatible model file ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
        dev = device if isinstance(device, torch.device) else resolve_device(device)[0]
        return cls(config, net, norm, version=str(d.get("version", "?")), history=history, device=dev)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "auto") -> "DenoiserModel":
        """Read a model file; :class:`XRDError` naming the file if it is missing or not a model file."""
        path = Path(path)
        if not path.is_file():
            raise XRDError(f"{path}: model file not found")
        try:
            d = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - torch.load fails in many ways on files that are not ours
            raise XRDError(f"{path}: not a napari-xrd-denoise model file ({type(e).__name__})") from None
        model = cls.from_dict(d, device=device, label=str(path))
        model.source_path = str(path)  # the file it came from: never an output of a run that applies it
        return model

    def describe(self) -> str:
        n = sum(p.numel() for p in self.net.parameters())
        c = self.config
        best = self.history.get("best_val")
        extra = f", best val loss {best:.4g}" if isinstance(best, (int, float)) and math.isfinite(best) else ""
        return (
            f"{c.method.name} {c.model.arch} depth {c.model.depth} width {c.model.width} ({n:,} parameters), "
            f"{self.frame_ndim}D, transform {self.norm.get('transform')}, v{self.version}{extra}"
        )


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o
