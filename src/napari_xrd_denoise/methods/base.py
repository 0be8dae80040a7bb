"""The interface every denoising method implements, and the helpers methods share.

A *method* turns raw frames into training samples and runs its own inference. The trainer
(:mod:`napari_xrd_denoise.training`) and the streaming predictor (:mod:`napari_xrd_denoise.inference`)
only talk to methods through :class:`Method`; they never know which method they run.

Data flow of one training sample::

    arrays = method.load(index, source)          # full-frame arrays for a target frame (+ context)
    arrays = crop_arrays(arrays, window, ndim)   # the trainer crops every array the same way
    arrays = augment_arrays(arrays, k, flips)    # the same rot90 / flips on every array
    sample = method.make_sample(arrays, rng, space)   # (input, target, weight, scale)

and of inference for a batch of frames::

    batch = stack_arrays([method.load_infer(i, source) for i in indices])
    counts = method.denoise(run, batch, infer)   # (B, *frame) counts, NaN where invalid

``run(x)`` is supplied by the caller: it applies the network to a numpy batch ``(B, C, *frame)``
(padding, tiling, devices, ``inference_mode`` are its business) and returns ``(B, *frame)`` on the
network's output scale.

Scales. The network works on the *network scale*: the variance-stabilised value (``DataConfig.transform``,
default Anscombe) standardised by the :class:`Normalizer` (mean, std from valid pixels; stored in the
model file). Invalid pixels get the neutral value 0 (the global mean) in inputs (methods may fill them
from their valid surroundings instead, :func:`fill_invalid`), weight 0 in losses and NaN in outputs. The
loss space is either

* ``"mse"``: target on the network scale, weighted MSE; outputs go back to counts with the exact
  unbiased inverse of the transform (the network estimates ``E[A(x)]``), then divided by
  :attr:`Method.output_scale`;
* ``"poisson"``: target in counts (photons for ``gat``), loss ``rate - t log rate`` with
  ``rate = sample.scale * link(output)``; the network estimates the mean count directly, so outputs go
  back to counts with the same :meth:`Normalizer.link` (no inverse transform).

Array dictionaries. ``load`` returns a ``dict`` of numpy arrays whose *last* ``frame_ndim`` axes are
the frame; leading axes are free (e.g. ``(8, H, W)`` neighbour context). Keys used by the base class:
``"counts"`` (float32 counts of the target frame, invalid set to 0) and ``"valid"`` (bool). Methods add
their own keys (``"partner"``, ``"context"``, ``"reference"``...). Every array is cropped and augmented
identically, so pixel-wise relations between arrays survive.

Randomness. ``make_sample`` must draw every random choice (mask phase, mask positions, binomial split,
swap) from the ``rng`` it is given: the trainer passes a fresh-state generator for training and a
fixed-seed one for validation, which makes the validation loss deterministic.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
from scipy import ndimage

from ..config import Config, InferConfig
from ..errors import XRDError
from ..io.stack import ScanStack, spread_indices
from ..physics import vst

Run = Callable[[np.ndarray], np.ndarray]
LOSS_SPACES = ("mse", "poisson")


# --------------------------------------------------------------------------------------------------
# Frame access
# --------------------------------------------------------------------------------------------------
class FrameSource:
    """Lazy, cached access to the frames of a :class:`ScanStack` as ``(counts, valid)``.

    ``counts`` is float32 with invalid pixels set to 0; ``valid`` is boolean. A small LRU cache keeps
    recently decoded frames, so methods that read context frames do not decode them again.
    ``index`` is the flat frame index; :meth:`scan_index` / :meth:`flat_index` convert to and from
    scan coordinates (row-major over ``scan_shape``).
    """

    def __init__(self, stack: ScanStack, cache_frames: int = 64):
        self.stack = stack
        self.cache_frames = max(1, int(cache_frames))
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._flat = stack.flat()

    @property
    def n_frames(self) -> int:
        return self.stack.n_frames

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return self.stack.frame_shape

    @property
    def frame_ndim(self) -> int:
        return self.stack.frame_ndim

    @property
    def scan_shape(self) -> tuple[int, ...]:
        return self.stack.scan_shape or (1,)

    def scan_index(self, index: int) -> tuple[int, ...]:
        return tuple(int(i) for i in np.unravel_index(int(index), self.scan_shape))

    def flat_index(self, pos: tuple[int, ...]) -> int:
        return int(np.ravel_multi_index(tuple(int(p) for p in pos), self.scan_shape))

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, valid)`` of one frame (cached; do not modify the returned arrays)."""
        index = int(index)
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} outside 0..{self.n_frames - 1} of {self.stack.label}")
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        raw = np.asarray(self._flat[index].compute())
        counts, valid = self.stack.counts(raw)
        counts.setflags(write=False)
        valid.setflags(write=False)
        self._cache[index] = (counts, valid)
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)
        return counts, valid

    def get_many(self, indices) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.get(i) for i in indices]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def put(self, index: int, counts: np.ndarray, valid: np.ndarray) -> None:
        """Insert already-decoded frames (the streaming predictor reads whole chunks at once)."""
        counts = np.asarray(counts, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
        counts.setflags(write=False)
        valid.setflags(write=False)
        self._cache[int(index)] = (counts, valid)
        self._cache.move_to_end(int(index))
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)


def is_integer_data(stack: ScanStack, source: FrameSource | None = None, n: int = 2) -> bool:
    """Whether the stack holds counts: an integer dtype, or floats that are whole numbers in a few frames."""
    if stack.dtype.kind in "iu":
        return True
    if stack.dtype.kind != "f":
        return False
    src = source or FrameSource(stack, cache_frames=n)
    for i in spread_indices(stack.n_frames, n):
        c, v = src.get(int(i))
        vals = c[v]
        if vals.size and not np.allclose(vals, np.round(vals), atol=1e-6):
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Scales
# --------------------------------------------------------------------------------------------------
def _softplus(u: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, u)


@dataclass
class Normalizer:
    """Transform + standardisation between counts and the network scale; stored in model files."""

    transform: str = "anscombe"
    gain: float = 1.0
    read_noise: float = 0.0
    offset: float = 0.0
    mean: float = 0.0
    std: float = 1.0

    # -- construction / storage
    @classmethod
    def from_config(cls, config: Config, mean: float = 0.0, std: float = 1.0) -> "Normalizer":
        d = config.data
        return cls(d.transform, float(d.gain), float(d.read_noise), float(d.offset), float(mean), float(std))

    @classmethod
    def fit(cls, config: Config, source: FrameSource, max_frames: int = 8) -> "Normalizer":
        """Mean and std of the transformed valid pixels of up to ``max_frames`` evenly spaced frames."""
        n = source.n_frames
        idx = spread_indices(n, max_frames)
        norm = cls.from_config(config)
        vals = []
        lo, hi = np.inf, -np.inf
        for i in idx:
            c, v = source.get(int(i))
            if v.any():
                vals.append(norm.forward(c[v]).astype(np.float64))
                lo, hi = min(lo, float(c[v].min())), max(hi, float(c[v].max()))
        if not vals:
            raise XRDError(f"{source.stack.label}: no valid pixels in the frames used for normalisation")
        if lo == hi:
            raise XRDError(f"{source.stack.label}: every valid pixel of the {len(idx)} frames sampled for training "
                           f"holds {lo:g}: nothing to learn from (an empty or blank scan?)")
        allv = np.concatenate(vals)
        mean, std = float(allv.mean()), float(allv.std())
        if not np.isfinite(std) or std < 1e-3:
            std = 1.0
        norm.mean, norm.std = mean, std
        return norm

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("transform", "gain", "read_noise", "offset", "mean", "std")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalizer":
        return cls(**{k: d[k] for k in ("transform", "gain", "read_noise", "offset", "mean", "std")})

    # -- counts <-> transformed scale
    def forward(self, counts: np.ndarray) -> np.ndarray:
        """Variance-stabilising transform of counts (not standardised)."""
        return vst.forward(counts, self.transform, self.gain, self.read_noise, self.offset)

    def photons(self, counts: np.ndarray) -> np.ndarray:
        """Counts in the units the Poisson loss uses (photons for ``gat``)."""
        c = np.asarray(counts, dtype=np.float32)
        if self.transform == "gat":
            return (c - self.offset) / self.gain
        return c

    def expected_forward(self, lam: np.ndarray) -> np.ndarray:
        """``E[A(x)]`` for ``x ~ Poisson(lam)``: the transform a *clean* mean would have on average.

        Used for targets that are (nearly) noise-free means, so that the exact unbiased inverse maps
        the network's estimate back to ``lam`` without bias.
        """
        lam = np.asarray(lam, dtype=np.float64)
        if self.transform == "none":
            return lam.astype(np.float32)
        sigma = self.read_noise / self.gain if self.transform == "gat" else 0.0
        e, grid = vst._table(float(round(sigma, 6)))
        ph = (lam - self.offset) / self.gain if self.transform == "gat" else lam
        ph = np.maximum(ph, 0.0)
        out = np.interp(ph, grid, e)
        hi = ph > grid[-1]
        if np.any(hi):
            out[hi] = 2.0 * np.sqrt(ph[hi] + 0.375 + sigma**2) - 1.0 / (4.0 * np.sqrt(ph[hi]))
        return out.astype(np.float32)

    def to_net(self, counts: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Counts -> network scale; invalid pixels get the neutral value 0."""
        z = (self.forward(counts) - np.float32(self.mean)) / np.float32(self.std)
        if valid is not None:
            z = np.where(valid, z, np.float32(0.0))
        return z.astype(np.float32)

    def transformed_to_net(self, t: np.ndarray) -> np.ndarray:
        return ((np.asarray(t, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def from_net_mse(self, y: np.ndarray) -> np.ndarray:
        """Network scale (an estimate of ``E[A(x)]``) -> counts with the exact unbiased inverse."""
        t = np.asarray(y, dtype=np.float32) * np.float32(self.std) + np.float32(self.mean)
        out = vst.inverse(t, self.transform, self.gain, self.read_noise, self.offset)
        return np.asarray(out, dtype=np.float32)

    def link(self, y: np.ndarray) -> np.ndarray:
        """Network scale -> Poisson rate (photons for ``gat``), the same link the Poisson loss uses.

        ``u = y * std + mean`` (a transformed value); rate ``softplus(u)**2 / 4`` for Anscombe/GAT
        (about ``A**2/4``, smooth and > 0), ``softplus(u)`` for ``none``.
        """
        u = np.asarray(y, dtype=np.float64) * self.std + self.mean
        s = _softplus(u)
        r = s * s / 4.0 if self.transform in ("anscombe", "gat") else s
        return r.astype(np.float32)

    def from_net_poisson(self, y: np.ndarray) -> np.ndarray:
        r = self.link(y)
        if self.transform == "gat":
            r = r * np.float32(self.gain) + np.float32(self.offset)
        return r.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Samples, cropping, augmentation
# --------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One training patch.

    ``input``: ``(C, *patch)`` float32 on the network scale. ``target``: ``(*patch)`` float32, on the
    network scale for ``"mse"``, in counts (photons for ``gat``) for ``"poisson"``. ``weight``:
    ``(*patch)`` float32, 0 where the pixel must not enter the loss (invalid, or not hidden from the
    input for blind-spot methods). ``scale``: Poisson only, the expected target is
    ``scale * link(output)`` (e.g. ``1 - p`` for a binomial half, ``K - 1`` for a sum of K-1 frames).
    """

    input: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    scale: float = 1.0


def frame_axes(arr: np.ndarray, ndim: int) -> tuple[int, ...]:
    return tuple(range(arr.ndim - ndim, arr.ndim))


def crop_arrays(arrays: dict[str, np.ndarray], start: tuple[int, ...], size: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Crop the last ``len(start)`` axes of every array to the window ``start:start+size``."""
    sl = tuple(slice(int(a), int(a) + int(s)) for a, s in zip(start, size))
    return {k: v[(Ellipsis,) + sl] for k, v in arrays.items()}


def augment_arrays(arrays: dict[str, np.ndarray], ndim: int, k: int = 0, flips: tuple[bool, ...] = ()) -> dict[str, np.ndarray]:
    """Apply the same rot90 (2D, ``k`` quarter turns) and flips to the frame axes of every array."""
    out = {}
    for name, v in arrays.items():
        axes = frame_axes(v, ndim)
        if ndim == 2 and k % 4:
            v = np.rot90(v, k % 4, axes=axes)
        for ax, f in zip(axes, flips):
            if f:
                v = np.flip(v, axis=ax)
        out[name] = np.ascontiguousarray(v)
    return out


def stack_arrays(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A list of per-frame array dicts -> one dict of batched arrays (new leading axis)."""
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


# --------------------------------------------------------------------------------------------------
# Blind-spot masks (Noise2Self grid / random, Noise2Void) shared by several methods
# --------------------------------------------------------------------------------------------------
def grid_mask(shape: tuple[int, ...], width: int, phase: int, origin: tuple[int, ...] | None = None) -> np.ndarray:
    """Noise2Self grid mask: ``True`` at hidden pixels of phase ``phase`` (``0 <= phase < width**ndim``).

    2D: hides pixels with ``(r + r0) % w == phase % w`` and ``(c + c0) % w == (phase // w) % w``.
    1D: hides ``(i + i0) % w == phase % w``. ``origin`` is the position of the patch in its frame so
    a phase means the same pixels whatever the crop.
    """
    w = int(width)
    origin = origin or (0,) * len(shape)
    if len(shape) == 1:
        i = np.arange(shape[0]) + origin[0]
        return (i % w) == (phase % w)
    r = (np.arange(shape[0]) + origin[0]) % w == (phase % w)
    c = (np.arange(shape[1]) + origin[1]) % w == ((phase // w) % w)
    return r[:, None] & c[None, :]


def n_phases(width: int, ndim: int) -> int:
    return int(width) ** int(ndim)


def random_mask(shape: tuple[int, ...], fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``True`` at about ``fraction`` of the pixels, chosen uniformly (at least one)."""
    n = int(np.prod(shape))
    k = max(1, int(round(fraction * n)))
    m = np.zeros(n, dtype=bool)
    m[rng.choice(n, size=min(k, n), replace=False)] = True
    return m.reshape(shape)


_INTERP_2D = np.array([[0.5, 1.0, 0.5], [1.0, 0.0, 1.0], [0.5, 1.0, 0.5]], dtype=np.float32)
_INTERP_1D = np.array([1.0, 0.0, 1.0], dtype=np.float32)


#: Gaussian widths (pixels) of the successive normalised-convolution passes of :func:`fill_invalid`
FILL_SIGMAS = (2.0, 8.0)


def fill_invalid(z: np.ndarray, valid: np.ndarray, ndim: int, sigmas: tuple[float, ...] = FILL_SIGMAS) -> np.ndarray:
    """Network-scale input ``z`` with its invalid pixels filled from the valid pixels around them.

    Normalised convolution over the last ``ndim`` axes (each leading index, e.g. each neighbour channel,
    is filled from itself only): an invalid pixel gets ``G*(v z) / G*v`` for a Gaussian ``G`` of width
    ``sigmas[0]``, where that has support (``G*v > 1e-3``); pixels still empty try the next, wider
    width, filling from the valid and already filled pixels; whatever is left (no valid pixel within
    reach) keeps the neutral 0. Valid pixels are returned unchanged. The fill only shapes the network
    *input* near gaps, dead pixels and saturated regions (a constant 0 there is a sharp artificial edge
    the network must learn to ignore); such pixels never enter a loss and stay NaN in the output.
    Methods whose input channel carries hidden (blind-spot) pixels must not fill that channel: a filled
    pixel next to a hidden one would carry its value.
    """
    z = np.asarray(z, dtype=np.float32)
    v = np.broadcast_to(np.asarray(valid, dtype=bool), z.shape)
    if v.all():
        return z
    lead = z.ndim - int(ndim)
    out = np.where(v, z, np.float32(0.0)).astype(np.float32)
    known = v.copy()
    for s in sigmas:
        if known.all():
            break
        sig = (0.0,) * lead + (float(s),) * int(ndim)
        num = ndimage.gaussian_filter(out, sig, mode="reflect")  # out is 0 wherever not yet known
        den = ndimage.gaussian_filter(known.astype(np.float32), sig, mode="reflect")
        new = ~known & (den > 1e-3)
        out[new] = num[new] / den[new]
        known |= new
    return out


def replace_hidden(
    x: np.ndarray,
    hidden: np.ndarray,
    valid: np.ndarray,
    mode: str,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Replace the hidden pixels of ``x`` (last axes = frame, channel axes allowed in front).

    ``mode``: ``"zero"`` (the neutral value 0 of the network scale), ``"interp"`` (the fixed neighbour
    kernel ``[[.5,1,.5],[1,0,1],[.5,1,.5]]`` renormalised over neighbours that are valid and not hidden;
    1D: the mean of the two neighbours), ``"random"`` (the value of a random valid neighbour of the
    3x3 / 3 neighbourhood, never the pixel itself). The replacement never uses a hidden pixel's own value;
    hidden pixels that are invalid get the neutral value 0.
    """
    ndim = hidden.ndim
    out = np.array(x, dtype=np.float32, copy=True)
    valid = np.asarray(valid, dtype=bool)
    if np.any(hidden & ~valid):  # invalid pixels keep the neutral value, hidden or not
        out[np.broadcast_to(hidden & ~valid, out.shape)] = 0.0
        hidden = hidden & valid
    hid = np.broadcast_to(hidden, out.shape)
    if mode == "zero":
        out[hid] = 0.0
        return out
    usable = (valid & ~hidden).astype(np.float32)
    if mode == "interp":
        kern = _INTERP_2D if ndim == 2 else _INTERP_1D
        lead = out.shape[: out.ndim - ndim]
        flat = out.reshape((-1,) + hidden.shape)
        den = ndimage.correlate(usable, kern, mode="constant")
        for j in range(flat.shape[0]):
            num = ndimage.correlate(flat[j] * usable, kern, mode="constant")
            rep = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)
            flat[j] = np.where(hidden, rep, flat[j])
        return flat.reshape(lead + hidden.shape)
    if mode == "random":
        if rng is None:
            raise ValueError("replace='random' needs a random generator")
        pos = np.argwhere(hidden)
        if len(pos) == 0:
            return out
        shape = np.array(hidden.shape)
        offs = np.array([o for o in np.ndindex(*(3,) * ndim) if any(v != 1 for v in o)]) - 1
        chosen = pos.copy()
        pending = np.ones(len(pos), dtype=bool)
        for _ in range(8):  # redraw neighbours that fall outside, are invalid or hidden
            if not pending.any():
                break
            cand = pos[pending] + offs[rng.integers(0, len(offs), size=int(pending.sum()))]
            inside = np.all((cand >= 0) & (cand < shape), axis=1)
            cand_c = np.clip(cand, 0, shape - 1)
            ok = inside & (usable[tuple(cand_c.T)] > 0)
            idx = np.flatnonzero(pending)
            chosen[idx[ok]] = cand_c[ok]
            pending[idx[ok]] = False
        rep_src = chosen[~pending]
        dst = pos[~pending]
        flat = out.reshape((-1,) + hidden.shape)
        for j in range(flat.shape[0]):
            vals = flat[j][tuple(rep_src.T)]
            flat[j][tuple(dst.T)] = vals
            if pending.any():
                flat[j][tuple(pos[pending].T)] = 0.0
        return flat.reshape(out.shape)
    raise ValueError(f"unknown replacement {mode!r}")


# --------------------------------------------------------------------------------------------------
# The Method interface
# --------------------------------------------------------------------------------------------------
class Method:
    """Base class of all denoising strategies. Subclasses override what differs.

    Lifecycle: ``m = cls(config, frame_ndim=..., norm=...)``; before training ``m.check(stack)``
    (raise :class:`XRDError` if the data do not suit the method) and ``m.attach(source, reference)``.
    The same class, built from the config and the normaliser stored in a model file, runs inference.

    What a subclass provides, by the six questions the trainer and predictor ask:
      (a) which frames are training targets: :meth:`train_indices`;
      (b) extra context for a target: :meth:`load` / :meth:`load_infer` (read any frame through the
          :class:`FrameSource`; ``self.reference`` holds paired frames for supervised training);
      (c) network input channels: :attr:`in_channels` (and :attr:`allow_residual`);
      (d) samples: :meth:`make_sample`;
      (e) loss space per epoch: :meth:`loss_space` (``"mse"`` / ``"poisson"``), the loss itself:
          :meth:`loss` (override to add terms), the output conversion: :meth:`to_counts`;
      (f) inference for a batch: :meth:`predict` (network scale) or :meth:`denoise` (counts).
    ``messages`` collects one-line notes (e.g. a loss fallback) that the trainer shows as events.
    Hooks called by the trainer: :meth:`check`, :meth:`attach`, :meth:`begin_epoch`.

    Class attributes:
      ``name``: the registry name (one of ``config.METHODS``).
      ``needs_reference``: the trainer must be given a paired ``reference`` stack.
      ``needs_context``: inference needs other frames of the stack than the one denoised
      (neighbours, realisations); :meth:`DenoiserModel.denoise_frames` then treats its batch as the stack.
    """

    name: ClassVar[str] = "base"
    needs_reference: ClassVar[bool] = False
    needs_context: ClassVar[bool] = False

    def __init__(self, config: Config, *, frame_ndim: int | None = None, norm: Normalizer | None = None):
        self.config = config
        self.mc = config.method
        self.ndim = int(frame_ndim if frame_ndim is not None else (config.data.ndim or 2))
        self.norm = norm if norm is not None else Normalizer.from_config(config)
        self.source: FrameSource | None = None
        self.reference: FrameSource | None = None
        self.epoch = 0
        self.messages: list[str] = []  # notes for the user; the trainer emits them as "message" events
        self.integer_data = True  # set by check(); a loaded model keeps the space it was trained in

    # ---- (c) network channels, (e) loss space ----------------------------------------------------
    @property
    def in_channels(self) -> int:
        """Number of network input channels (1 unless the method stacks context frames)."""
        return 1

    @property
    def residual_channel(self) -> int | None:
        """The input channel a residual network adds its correction to: ``None`` (the mean of the input
        channels) unless one channel is the pixel's own measurement and the others are context of
        another kind (a partner image, neighbouring frames)."""
        return None

    @property
    def allow_residual(self) -> bool:
        """Whether the network may add its input to its output (``model.residual``). Blind-spot methods
        say no: a residual path would copy the noisy pixel itself into a single-pass prediction."""
        return True

    def auto_residual(self, source: "FrameSource") -> tuple[bool, str]:
        """``model.residual = auto`` (None) for a method that allows a residual path: ``(use it, a note for
        the user when not)``. Most methods use it."""
        return True, ""

    @property
    def output_scale(self) -> float:
        """MSE space: counts after the exact inverse are divided by this (e.g. ``1 - p`` for a binomial half)."""
        return 1.0

    def default_loss(self) -> str:
        """The loss space used when ``method.loss == "auto"``."""
        return "mse"

    def poisson_ok(self) -> bool:
        """The Poisson loss needs count targets: Anscombe (or GAT) data, not ``transform='none'``, and
        integer counts (:meth:`check` records whether the data are)."""
        return self.norm.transform in ("anscombe", "gat") and self.integer_data

    def loss_space(self, epoch: int | None = None) -> str:
        """Loss space for a training epoch (``None``: the space of the final model, used at inference)."""
        want = self.mc.loss
        if want == "auto":
            want = self.default_loss()
        if want == "poisson" and not self.poisson_ok():
            want = "mse"
        return want

    def loss(self, out, target, weight, scale, space: str):
        """Training / validation loss on torch tensors (``out``: network output ``(B, 1, *patch)``;
        ``target``, ``weight`` the same shape; ``scale`` ``(B, 1, ...)``). MSE: weighted MSE on the
        network scale. Poisson: the Poisson deviance of ``rate = scale * link(out)`` (same gradient as
        the NLL, 0 at a perfect fit). Methods may add terms."""
        from ..losses import link_rate, masked_mse, poisson_deviance

        out = out.float()
        if space == "poisson":
            rate = scale * link_rate(out, self.norm.mean, self.norm.std, self.norm.transform)
            return poisson_deviance(rate, target, weight)
        return masked_mse(out, target, weight)

    # ---- setup -----------------------------------------------------------------------------------
    def check(self, stack: ScanStack) -> None:
        """Raise XRDError (one line, naming the parameter/file) if the method cannot use ``stack``.

        The base check also records whether the data are integer counts (for :meth:`poisson_ok`) and
        notes a requested Poisson loss that cannot be used."""
        stack.check_denoisable()
        self.integer_data = (not stack.keep_negatives) and is_integer_data(stack)
        if self.mc.loss == "poisson" and not self.poisson_ok():
            self.messages.append(
                f"method.loss=poisson needs integer counts with data.transform anscombe/gat; {stack.label} "
                "does not qualify, so the MSE loss is used"
            )

    def attach(self, source: FrameSource, reference: FrameSource | None = None) -> None:
        if self.needs_reference and reference is None:
            raise XRDError(f"method.name={self.name!r} needs paired reference frames (method.reference)")
        self.source = source
        self.reference = reference

    def begin_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based)."""
        self.epoch = int(epoch)

    # ---- (a) training targets, (b) context ------------------------------------------------------
    def train_indices(self, source: FrameSource) -> np.ndarray:
        """Flat indices of frames that can be training targets (all by default)."""
        return np.arange(source.n_frames)

    def load(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        """Full-frame arrays for training target ``index`` (``counts``, ``valid`` and any context)."""
        c, v = source.get(index)
        return {"counts": c, "valid": v}

    def load_infer(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        """Full-frame arrays needed to denoise frame ``index`` (default: as :meth:`load`)."""
        return self.load(index, source)

    # ---- (d) samples -----------------------------------------------------------------------------
    def make_sample(self, arrays: dict[str, np.ndarray], rng: np.random.Generator, space: str) -> Sample:
        """One training sample from cropped, augmented arrays. Subclasses must implement."""
        raise NotImplementedError(f"{type(self).__name__}.make_sample")

    def target_from_counts(self, counts: np.ndarray, valid: np.ndarray, space: str) -> np.ndarray:
        """A noisy count target on the scale of ``space``."""
        if space == "poisson":
            return np.where(valid, self.norm.photons(counts), 0.0).astype(np.float32)
        return self.norm.to_net(counts, valid)

    def target_from_mean(self, lam: np.ndarray, valid: np.ndarray, space: str) -> np.ndarray:
        """A (nearly) clean mean target: ``E[A(Poisson(lam))]`` on the network scale, or ``lam`` in counts."""
        if space == "poisson":
            return np.where(valid, self.norm.photons(lam), 0.0).astype(np.float32)
        z = self.norm.transformed_to_net(self.norm.expected_forward(lam))
        return np.where(valid, z, 0.0).astype(np.float32)

    # ---- (f) inference ---------------------------------------------------------------------------
    def net_input(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """``(B, C, *frame)`` network input for full frames (default: the frame itself)."""
        return self.norm.to_net(batch["counts"], batch["valid"])[:, None]

    def predict(self, run: Run, batch: dict[str, np.ndarray], infer: InferConfig) -> np.ndarray:
        """Network-scale prediction ``(B, *frame)`` for a batch; single pass, optional flip TTA."""
        x = self.net_input(batch)
        if not infer.tta:
            return run(x)
        return flip_tta(run, x, self.ndim)

    def averaged_passes(self, run: Run, batch: dict[str, np.ndarray], infer: InferConfig, n: int,
                        net_input: Callable[[int], np.ndarray]) -> np.ndarray:
        """Counts averaged over ``n`` inference passes: pass ``k`` feeds ``net_input(k)`` in orientation
        :func:`pass_orientation` ``(k)`` (all orientations with ``infer.tta``), NaN where invalid."""
        acc = None
        for k in range(n):
            x = net_input(k)
            if infer.tta:
                y = flip_tta(run, x, self.ndim)
            else:
                y = oriented_run(run, x, self.ndim, pass_orientation(k, self.ndim))
            c = self.to_counts(y, batch["valid"]).astype(np.float64)
            acc = c if acc is None else acc + c
        return (acc / n).astype(np.float32)

    def to_counts(self, y: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Network scale -> counts (float32, >= 0), NaN where invalid."""
        if self.loss_space(None) == "poisson":
            c = self.norm.from_net_poisson(y)
        else:
            c = self.norm.from_net_mse(y) / np.float32(self.output_scale)
        c = np.maximum(c, 0.0)
        return np.where(valid, c, np.nan).astype(np.float32)

    def denoise(self, run: Run, batch: dict[str, np.ndarray], infer: InferConfig) -> np.ndarray:
        """Counts ``(B, *frame)`` for a batch loaded with :meth:`load_infer`, NaN where invalid.

        Methods whose inference averages several passes *in counts* (e.g. binomial splits) override
        this; others override :meth:`predict` (network scale) only."""
        return self.to_counts(self.predict(run, batch, infer), batch["valid"])


class CombinesWithSplit:
    """Mixin for methods that can add a binomial split of the frame to their own second look (symmetry,
    neighbours): ``method.combine_split`` (auto / on / off) settled by :meth:`resolve_combine_split` in
    the method's ``check``, and the split probability ``method.split_p``."""

    mc: Any
    norm: Any

    @property
    def split(self) -> bool:
        return bool(self.mc.combine_split)

    @property
    def p(self) -> float:
        return float(self.mc.split_p)

    def split_problem(self, integer: bool) -> str | None:
        """Why these data or settings cannot combine with a binomial split of the counts (``None``: they
        can); ``integer``: the data are integer counts."""
        if self.mc.combine_n2s:
            return "method.combine_n2s also changes the input; choose one"
        if not integer or self.norm.transform != "anscombe":
            return "splitting photon counts needs integer counts with data.transform=anscombe"
        if self.mc.loss == "mse":
            return "the split target needs the Poisson loss (method.loss auto or poisson), not mse"
        return None

    def split_pass_count(self, infer) -> int:
        """Split passes averaged at inference (``infer.split_passes``, as ``n2n-split``); 0 (one full-frame
        pass) is no input a split-trained network with context channels saw, so it means the default."""
        from .n2n import split_passes

        return split_passes(infer) or split_passes(None)

    def resolve_combine_split(self, label: str, problem: str | None) -> bool:
        """Settle ``method.combine_split`` for methods that can combine with a binomial split (symmetry,
        neighbours): ``problem`` says why these data or settings cannot be split (``None``: they can).
        Auto (``None``) becomes True exactly when they can; an explicit True they cannot use is an error.
        The resolved value is written back, so a saved model records what it was trained with."""
        want = self.mc.combine_split
        if want and problem:
            raise XRDError(f"{label}: method.combine_split: {problem}")
        self.mc.combine_split = bool(want if want is not None else problem is None)
        return self.mc.combine_split


#: Orientations (elements of the dihedral group of the square) in the order successive inference passes
#: use them: ``k = 4 * transpose + 2 * flip_rows + flip_columns``. Consecutive entries differ as much as
#: possible (identity, then the transposed half-turn, then the transpose, the half-turn, ...).
ORIENTATIONS_2D = (0, 7, 4, 3, 1, 6, 2, 5)


def orient(x: np.ndarray, k: int, ndim: int) -> np.ndarray:
    """Orientation ``k`` of the last ``ndim`` axes of ``x``: bit 0 flips the last axis, bit 1 the one
    before (2D), bit 2 swaps the two (2D). 1D uses bit 0 only."""
    if ndim == 1:
        return np.ascontiguousarray(np.flip(x, -1) if k & 1 else x)
    if k & 4:
        x = np.swapaxes(x, -1, -2)
    if k & 2:
        x = np.flip(x, -2)
    if k & 1:
        x = np.flip(x, -1)
    return np.ascontiguousarray(x)


def unorient(y: np.ndarray, k: int, ndim: int) -> np.ndarray:
    """Inverse of :func:`orient` (``y`` may lack the channel axis: only the last ``ndim`` axes move)."""
    if ndim == 1:
        return np.ascontiguousarray(np.flip(y, -1) if k & 1 else y)
    if k & 1:
        y = np.flip(y, -1)
    if k & 2:
        y = np.flip(y, -2)
    if k & 4:
        y = np.swapaxes(y, -1, -2)
    return np.ascontiguousarray(y)


def n_orientations(ndim: int) -> int:
    return 8 if ndim == 2 else 2


def oriented_run(run: Run, x: np.ndarray, ndim: int, k: int) -> np.ndarray:
    """The network on orientation ``k`` of the input, mapped back to the input's orientation."""
    return unorient(run(orient(x, k, ndim)), k, ndim)


def pass_orientation(k: int, ndim: int) -> int:
    """Orientation used by the ``k``-th of several averaged inference passes (see :data:`ORIENTATIONS_2D`)."""
    return ORIENTATIONS_2D[k % 8] if ndim == 2 else k % 2


def flip_tta(run: Run, x: np.ndarray, ndim: int) -> np.ndarray:
    """Average of the network over every orientation of the frame axes: the 8 rotations and reflections
    of the square in 2D (the training augmentation's group), both directions in 1D."""
    acc = None
    n = n_orientations(ndim)
    for k in range(n):
        yi = oriented_run(run, x, ndim, k)
        acc = yi.astype(np.float64) if acc is None else acc + yi
    return (acc / n).astype(np.float32)


def patch_size_for(frame_shape: tuple[int, ...], patch: int) -> tuple[int, ...]:
    """The training window: ``patch`` on every frame axis, clipped to the frame."""
    return tuple(min(int(patch), int(s)) for s in frame_shape)


def ceil_to(n: int, m: int) -> int:
    return int(math.ceil(n / m) * m)
