"""Friedel / mirror symmetry: Noise2Noise from a single frame (the symmetric masked autoencoder idea).

A centrosymmetric pattern seen through counting noise gives, at every pixel ``p``, two independent
noisy measurements of the same intensity: the pixel itself and its partner ``p'`` (``2c - p`` for
Friedel, the reflection across a line through ``c`` for a mirror). So the partner image is a
Noise2Noise target for the frame, and the frame for the partner image.

Training sample (see :mod:`methods.base` for the data flow): :meth:`load` computes, on the *full*
frame, the partner image (interpolated about the sub-pixel centre with ``method.partner_interp``,
default Lanczos-3: a bilinear partner is a blurred target and taught a blurred estimate, see
docs/methods.md; in counts and on the transformed scale) and the common validity (pixel valid, every
interpolation support pixel of its partner valid and inside the frame, outside the guard zone around
the centre / mirror line). The trainer then crops
the same window from every array and applies the same rot90 / flips to all of them, so the pixel-wise
partner relation survives the augmentation. :meth:`make_sample` swaps input and target at random.
Loss weight: the common validity only. ``method.combine_n2s`` additionally hides a Noise2Self grid
phase of the input; hidden valid pixels whose partner is unusable (in a gap, off the detector) then
train against their own value, which the input does not show.

Inference: one pass (flip TTA with ``infer.tta``); output in counts, NaN wherever the frame is
invalid: a gap is never filled from its partner. With ``method.symmetrize`` (if the configuration
has it) the prediction is averaged with its own partner where both are valid.

``method.combine_split`` (default ``None`` = auto: on for integer counts with the Anscombe transform and
the Poisson loss; ``False`` gives the plain partner Noise2Noise above): symmetry as a second
measurement next to a binomial split. The counts are split into independent halves ``a`` and ``b`` (as ``n2n-split``); the input is
three channels, the half ``a / p``, the partner image of that half, and the partner's validity (0 in
gaps, off the frame and in the guard zone, where the partner channel is 0); the target is the other
half ``b`` in counts with the Poisson loss (``rate = (1 - p) * link(output)``), every valid pixel
weighted. No input channel holds any photon of ``b``, so the target's noise is independent of the
whole input; unlike the plain mode the target is the pixel's own half, so a pattern that is not
symmetric (a spot without its Friedel mate) is still learned as it is, and the partner only helps
where the data say it agrees. The partner image needs the whole frame, so :meth:`load` computes it for
one of :data:`SPLIT_VARIANTS` seeded splits per frame (cached; the trainer picks one at random per
patch and the halves' roles swap at random). Inference averages complementary halves in several
orientations as ``n2n-split`` does (``infer.split_passes``), so every photon is used. A residual
network adds its correction to the mean of the input channels, here nearly the average of the two
measurements (the own half alone as the base scored 2.5 dB lower at mid dose, docs/methods.md).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from ..config import InferConfig
from ..errors import XRDError
from ..io.stack import ScanStack, spread_indices
from ..physics import symmetry as sym
from .base import CombinesWithSplit, FrameSource, Method, Run, Sample, grid_mask, n_phases, replace_hidden

SCORE_FRAMES = 16  # frames summed for the symmetry score (they share the beam centre)
SPLIT_VARIANTS = 4  # combine_split: binomial splits per frame whose partner images are computed (and cached)
MIN_COMMON_FRACTION = 0.01  # below this fraction of valid pixels with a usable partner: refuse


class LoadCache:
    """A small LRU of per-frame array dicts, bounded in bytes (full-frame partners are not free)."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = int(max_bytes)
        self._d: OrderedDict = OrderedDict()
        self._bytes = 0

    def get(self, key):
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, key, value: dict[str, np.ndarray]) -> None:
        size = sum(int(a.nbytes) for a in value.values())
        if size > self.max_bytes:
            return
        old = self._d.pop(key, None)
        if old is not None:
            self._bytes -= sum(int(a.nbytes) for a in old.values())
        self._d[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes and self._d:
            _, v = self._d.popitem(last=False)
            self._bytes -= sum(int(a.nbytes) for a in v.values())

    def clear(self) -> None:
        self._d.clear()
        self._bytes = 0


def resolve_center(config, stack: ScanStack | None = None, frame_shape: tuple[int, int] | None = None) -> tuple[float, float]:
    """The beam centre: ``method.center``, else the PONI file ``method.poni``, else the stack's metadata."""
    mc = config.method
    if mc.center is not None:
        return float(mc.center[0]), float(mc.center[1])
    shape = frame_shape or (stack.frame_shape if stack is not None else None)
    if mc.poni:
        from ..physics.geometry import beam_center_from_poni

        if shape is None:
            raise XRDError(f"method.poni={mc.poni}: the frame shape is needed to place the beam centre")
        return tuple(float(v) for v in beam_center_from_poni(mc.poni, shape))  # type: ignore[return-value]
    if stack is not None and stack.beam_center is not None:
        return float(stack.beam_center[0]), float(stack.beam_center[1])
    raise XRDError("method.name='symmetry' needs the beam centre: give --center Y,X or --poni FILE")


class SymmetryN2N(CombinesWithSplit, Method):
    """Noise2Noise between a frame and its Friedel (or mirror) partner image."""

    name = "symmetry"

    def __init__(self, config, *, frame_ndim=None, norm=None):
        super().__init__(config, frame_ndim=frame_ndim, norm=norm)
        self._ops: dict[tuple, sym.PartnerOperator] = {}
        self._cache = LoadCache()
        self.score: float | None = None
        self._variant_rng = np.random.default_rng([int(config.train.seed), 0x5E])  # which cached split a patch uses

    @property
    def in_channels(self) -> int:
        return 3 if self.split else 1

    def default_loss(self) -> str:
        return "poisson" if self.split else "mse"

    @property
    def kind(self) -> str:
        return self.mc.symmetry

    @property
    def angle(self) -> float:
        return float(self.mc.mirror_angle) if self.kind == "mirror" else 0.0

    @property
    def symmetrize(self) -> bool:
        return bool(getattr(self.mc, "symmetrize", False))

    def center(self, frame_shape: tuple[int, int]) -> tuple[float, float]:
        c = resolve_center(self.config, None, frame_shape) if self.mc.center is None else tuple(self.mc.center)
        return float(c[0]), float(c[1])

    def operator(self, frame_shape: tuple[int, int]) -> sym.PartnerOperator:
        c = self.center(frame_shape)
        interp = str(self.mc.partner_interp)
        key = (tuple(frame_shape), c, self.kind, self.angle, interp)
        op = self._ops.get(key)
        if op is None:
            op = sym.PartnerOperator(frame_shape, c, self.kind, self.angle, interp)
            self._ops = {key: op}
            self._guard = sym.guard_mask(frame_shape, c, float(self.mc.center_guard), self.kind, self.angle)
        return op

    # ---- setup ---------------------------------------------------------------------------------
    def check(self, stack: ScanStack) -> None:
        super().check(stack)
        if stack.frame_ndim != 2:
            raise XRDError(f"{stack.label}: method.name='symmetry' needs 2-D detector frames, not {stack.frame_ndim}-D data")
        c = resolve_center(self.config, stack)
        self.mc.center = [float(c[0]), float(c[1])]  # recorded in the model's config
        src = FrameSource(stack, cache_frames=1)
        n = stack.n_frames
        idx = spread_indices(n, SCORE_FRAMES)
        total = None
        valid = None
        for i in idx:
            cts, v = src.get(int(i))
            total = np.where(v, cts, 0).astype(np.float64) if total is None else total + np.where(v, cts, 0)
            valid = v.copy() if valid is None else (valid & v)
        op = self.operator(stack.frame_shape)
        _, pv = op(total, valid)
        common = valid & pv & self._guard
        if common.sum() < max(10, MIN_COMMON_FRACTION * max(1, valid.sum())):
            raise XRDError(
                f"{stack.label}: almost no pixel has a usable {self.kind} partner about method.center="
                f"({c[0]:.2f}, {c[1]:.2f}) (centre off the frame, or partners in gaps); use another method"
            )
        integer = bool(np.allclose(total[valid], np.round(total[valid]))) and not stack.keep_negatives
        # unmasked hot pixels are bright and have no partner: a handful of them dominate the covariances
        # and would call a symmetric pattern asymmetric, so the score leaves out isolated outliers
        from ..physics.masks import find_hot_dead

        hot, _ = find_hot_dead(total, valid)
        self.score = sym.symmetry_score(
            total, valid & ~hot, c, self.kind, self.angle, guard=float(self.mc.center_guard), corrected=integer
        )
        msg = sym.symmetry_warning(self.score, c, self.kind)
        if msg:
            self.messages.append(msg)  # the trainer shows it (an event, or the log without a listener)
        self.resolve_combine_split(stack.label, self.split_problem(integer))

    def attach(self, source: FrameSource, reference: FrameSource | None = None) -> None:
        super().attach(source, reference)
        self._cache.clear()

    # ---- samples -------------------------------------------------------------------------------
    def _partner_net(self, counts: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The partner image of ``counts`` (full-dose scale) on the network scale, interpolated on the
        transformed scale (no negative counts), and its usability (partner valid, outside the guard zone)
        as a float channel; the partner is 0 where it is unusable."""
        pt, pv = self.operator(counts.shape)(self.norm.forward(counts), valid)
        ok = pv & self._guard
        net = np.where(ok, self.norm.transformed_to_net(pt), np.float32(0.0)).astype(np.float32)
        return net, ok.astype(np.float32)

    def _load_split(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        variant = int(self._variant_rng.integers(SPLIT_VARIANTS))
        key = (id(source), int(index), variant)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        from ..physics.binomial import split

        c, v = source.get(index)
        a, b = split(np.where(v, c, 0), self.p, np.random.default_rng([int(self.config.train.seed), int(index), variant]))
        pa, ok = self._partner_net(a / np.float32(self.p), v)
        pb, _ = self._partner_net(b / np.float32(1.0 - self.p), v)
        out = {"counts": c, "valid": v, "a": a, "b": b, "partner_a": pa, "partner_b": pb, "partner_ok": ok}
        self._cache.put(key, out)
        return out

    def load(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        if self.split:
            return self._load_split(index, source)
        key = (id(source), int(index))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        c, v = source.get(index)
        op = self.operator(c.shape)
        t = self.norm.forward(c)
        pc, pv = op(c, v)
        pt, _ = op(t, v)
        common = v & pv & self._guard
        out = {"counts": c, "valid": v, "partner": pc, "partner_t": pt, "partner_valid": pv, "common": common}
        self._cache.put(key, out)
        return out

    def load_infer(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        c, v = source.get(index)
        return {"counts": c, "valid": v}

    def make_sample(self, arrays, rng, space) -> Sample:
        if self.split:
            return self._split_sample(arrays, rng, space)
        c, v = arrays["counts"], arrays["valid"]
        pc, pt, pv, m = arrays["partner"], arrays["partner_t"], arrays["partner_valid"], arrays["common"]
        own_net = self.norm.to_net(c, v)
        par_net = np.where(pv, self.norm.transformed_to_net(pt), np.float32(0.0)).astype(np.float32)
        if space == "poisson":
            own_t = self.target_from_counts(c, v, space)
            par_t = np.where(pv, self.norm.photons(pc), 0.0).astype(np.float32)
        else:
            own_t, par_t = own_net, par_net
        if rng.random() < 0.5:
            x, x_valid, target, self_t = own_net, v, par_t, own_t
        else:
            x, x_valid, target, self_t = par_net, pv, own_t, par_t
        weight = m.astype(np.float32)
        if self.mc.combine_n2s:
            w = int(self.mc.mask_width)
            hidden = grid_mask(x.shape, w, int(rng.integers(n_phases(w, 2))))
            x = replace_hidden(x, hidden, x_valid, self.mc.replace, rng)
            extra = hidden & x_valid & ~m
            target = np.where(extra, self_t, target).astype(np.float32)
            weight = (m | extra).astype(np.float32)
        target = np.where(weight > 0, target, np.float32(0.0)).astype(np.float32)
        return Sample(x[None].astype(np.float32), target, weight)

    def _split_sample(self, arrays, rng, space) -> Sample:
        v = arrays["valid"]
        a, b, xa, xb = arrays["a"], arrays["b"], arrays["partner_a"], arrays["partner_b"]
        pa, pb = self.p, 1.0 - self.p
        if rng.random() < 0.5:
            a, b, xa, xb, pa, pb = b, a, xb, xa, pb, pa
        x = np.stack([self.norm.to_net(a / np.float32(pa), v), xa, arrays["partner_ok"]])
        return Sample(x.astype(np.float32), self.target_from_counts(b, v, space), v.astype(np.float32), scale=pb)

    # ---- inference -----------------------------------------------------------------------------
    def split_input(self, batch: dict[str, np.ndarray], k: int) -> np.ndarray:
        """``(B, 3, *frame)`` network input of the ``k``-th split pass: the half (complementary halves
        for odd ``k``, as ``n2n-split``), its partner image and the partner's validity."""
        from .n2n import split_halves

        halves = split_halves(batch["counts"], batch["valid"], self.p, k, complementary=True)[:, 0]
        xs = []
        for h, v in zip(halves, batch["valid"]):
            pn, ok = self._partner_net(h, v)
            xs.append(np.stack([self.norm.to_net(h, v), pn, ok]))
        return np.stack(xs).astype(np.float32)

    def denoise(self, run: Run, batch: dict[str, np.ndarray], infer: InferConfig) -> np.ndarray:
        if self.split:
            out = self.averaged_passes(run, batch, infer, self.split_pass_count(infer),
                                       lambda k: self.split_input(batch, k))
        else:
            out = self.to_counts(self.predict(run, batch, infer), batch["valid"])
        if not self.symmetrize:
            return out
        op = self.operator(out.shape[1:])
        for b in range(out.shape[0]):
            v = batch["valid"][b]
            p, pv = op(np.nan_to_num(out[b]), v)
            both = v & pv & self._guard
            out[b] = np.where(both, 0.5 * (out[b] + p), out[b])
        return out


METHOD = SymmetryN2N
