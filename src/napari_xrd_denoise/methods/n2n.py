"""Noise2Noise: from repeated frames (``n2n-frames``) or from binomial splits of one frame (``n2n-split``)."""

from __future__ import annotations

import numpy as np

from ..errors import XRDError
from ..io.stack import ScanStack
from ..physics.binomial import split
from .base import FrameSource, Method, Sample

MAX_OTHERS = 8  # realisations used as context for one target frame


def split_halves(counts: np.ndarray, valid: np.ndarray, p: float, k: int, complementary: bool = True) -> np.ndarray:
    """``(B, 1, *frame)`` full-dose-scaled halves for the ``k``-th inference pass of a batch of count frames.

    Pass ``k`` uses binomial split ``k // 2`` (seeded from the frame's content, so a frame always gets
    the same halves): its kept half ``a / p`` for even ``k`` and the complement ``(n - a) / (1 - p)``
    for odd ``k``; with ``complementary=False`` every pass is an independent split's kept half.
    """
    s, other = (k // 2, k % 2 == 1) if complementary else (k, False)
    xs = []
    for c, v in zip(counts, valid):
        c0 = np.where(v, c, 0)
        seed = [int(s), int(np.round(c0.sum())) % (2**32), int(c0.size)]
        a, b = split(c0, p, np.random.default_rng(seed))
        xs.append(b / np.float32(1.0 - p) if other else a / np.float32(p))
    return np.stack(xs)[:, None]


def split_passes(infer) -> int:
    """Split passes at inference: ``infer.split_passes`` when the configuration has it (``infer`` may be
    None), else :attr:`Noise2NoiseSplit.SPLIT_PASSES`; 0 means one plain pass on the full frame."""
    v = getattr(infer, "split_passes", None)
    return Noise2NoiseSplit.SPLIT_PASSES if v is None else max(0, int(v))


class Noise2NoiseSplit(Method):
    """Noise2Noise from one acquisition by binomial splitting.

    Every time a patch is drawn, its counts ``n`` are split into independent halves
    ``a ~ Poisson(p lam)`` and ``b = n - a ~ Poisson((1-p) lam)`` (the roles are swapped at random when
    the loss allows it). The input is the input half rescaled to full dose (``a / p``), so at inference
    the full frame is fed as it is. Targets:

    * ``poisson`` (default for counts): ``b`` in counts with ``rate = (1-p) * link(output)``; the
      network therefore estimates the full-dose mean ``lam`` directly.
    * ``mse``: ``A(b)`` on the network scale; the exact unbiased inverse gives ``(1-p) lam``, which is
      divided by ``1-p`` (:attr:`output_scale`). Swapping is only done when ``p == 0.5``.

    Inference averages, in counts, the predictions for ``infer.split_passes`` inputs drawn from the
    training distribution: complementary halves ``a_k / p`` and ``(n - a_k) / (1 - p)`` of binomial
    splits ``k = 0, 1, ...`` (the complement is used when training swapped the roles, i.e. with the
    Poisson loss or ``p == 0.5``; otherwise independent splits). A complementary pair uses every photon
    of the frame once. Measured on synthetic rings (Poisson, mean dose 0.3 / 5 / 50 counts): feeding the
    full frame instead is biased at low dose (+16 % flux at 0.3, +6 % at 5; the network never saw the
    full-dose count lattice) and 0.9 dB worse at dose 5, while split inputs are unbiased. On eight
    thinned real LaB6 frames one complementary pair scored 0.1 dB above eight independent splits; two
    and four pairs added 0.05 and 0.08 dB (docs/methods.md). Each pass also shows the network another
    orientation of the frame (:data:`methods.base.ORIENTATIONS_2D`; training augments with the same
    rotations and flips), which decorrelates the passes' errors far more than new splits alone: on a
    synthetic mid-dose scan, with one trained model, 2 / 4 / 8 passes scored +0.2 / +0.6 / +0.8 dB with
    orientations and +0.0 / - / +0.2 dB without (docs/methods.md). The default is 4 passes (two pairs).
    ``infer.tta`` instead averages all 8 orientations in every pass.
    The splits are seeded from the frame's content, so a frame always gets the same output.
    """

    SPLIT_PASSES = 4

    name = "n2n-split"

    def default_loss(self) -> str:
        return "poisson"

    @property
    def p(self) -> float:
        return float(self.mc.split_p)

    @property
    def output_scale(self) -> float:
        return 1.0 - self.p

    def check(self, stack: ScanStack) -> None:
        super().check(stack)
        if self.norm.transform == "gat":
            raise XRDError("method.name='n2n-split' splits photon counts; use data.transform=anscombe (or none) with counting data")
        if stack.keep_negatives:
            raise XRDError("method.name='n2n-split' needs non-negative counts, but data.keep_negatives is set")
        if stack.dtype.kind == "f":
            c, v = FrameSource(stack, cache_frames=1).get(0)
            vals = c[v]
            if vals.size and not np.allclose(vals, np.round(vals), atol=1e-4):
                raise XRDError(f"{stack.label}: method.name='n2n-split' needs integer counts; these frames hold fractional values")

    def make_sample(self, arrays, rng, space) -> Sample:
        counts, valid = arrays["counts"], arrays["valid"]
        p = self.p
        a, b = split(np.where(valid, counts, 0), p, rng)
        pa, pb = p, 1.0 - p
        if self.complementary(space) and rng.random() < 0.5:
            a, b, pa, pb = b, a, pb, pa
        x = self.norm.to_net(a / np.float32(pa), valid)
        if space == "poisson":
            return Sample(x[None], self.target_from_counts(b, valid, space), valid.astype(np.float32), scale=pb)
        return Sample(x[None], self.norm.to_net(b, valid), valid.astype(np.float32))

    def complementary(self, space: str | None = None) -> bool:
        """Whether training swaps the halves (``space``: its loss space), so the complement ``(n - a) / (1 - p)``
        is an input the network was trained on."""
        return (space or self.loss_space(None)) == "poisson" or abs(self.p - 0.5) < 1e-9

    def split_inputs(self, batch, k: int) -> np.ndarray:
        """Network input ``(B, 1, *frame)`` for the ``k``-th inference pass of every frame: split ``k // 2``,
        its kept half for even ``k`` and the complement for odd ``k`` (independent splits when the
        complement is not a training input)."""
        halves = split_halves(batch["counts"], batch["valid"], self.p, k, self.complementary())
        return self.norm.to_net(halves[:, 0], batch["valid"])[:, None]

    def passes(self, infer) -> int:
        """Passes at inference: ``infer.split_passes`` when the configuration has it, else 4 (two
        complementary pairs); 0 means one plain pass on the full frame (biased at a few counts per pixel)."""
        return split_passes(infer)

    def denoise(self, run, batch, infer) -> np.ndarray:
        n = self.passes(infer)
        if n == 0:
            return super().denoise(run, batch, infer)
        return self.averaged_passes(run, batch, infer, n, lambda k: self.split_inputs(batch, k))


class Noise2NoiseFrames(Method):
    """Noise2Noise between repeated realisations of the same scene.

    Realisations: with a 2-axis scan ``(positions, repeats)`` the frames sharing the first scan index
    (i.e. the last scan axis lists repeats of one position); with a 1-axis scan (a flat stack, or the
    rows of a 1D spectra file) all frames are realisations of one scene. For a target frame the other
    realisations are the (up to) 8 nearest frames of its group.

    * ``"1:X"``: input one realisation, target the others. With the Poisson loss (default for counts)
      the target is their *sum* (an integer count, ``rate = (K-1) * link(output)``); with MSE the
      Anscombe of their mean (slightly biased below a few counts).
    * ``"X:1"``: input the mean of the others, target the frame itself.

    Inference predicts *each* frame, so the output has the input's shape: ``1:X`` denoises every
    frame from itself alone (frames stay independent; average the outputs for the best single
    estimate); ``X:1`` feeds the mean of the frame's realisations (frame included), so all frames of
    a group get the same estimate.
    """

    name = "n2n-frames"

    def default_loss(self) -> str:
        return "poisson"

    @property
    def strategy(self) -> str:
        return self.mc.n2n_strategy

    @property
    def needs_context(self) -> bool:  # type: ignore[override]
        return self.strategy == "X:1"

    # -- groups of realisations
    def group(self, index: int, source: FrameSource) -> np.ndarray:
        scan = source.scan_shape
        if len(scan) >= 2:
            pos = source.scan_index(index)
            reps = scan[-1]
            base = source.flat_index(pos[:-1] + (0,))
            return base + np.arange(reps)
        return np.arange(source.n_frames)

    def others(self, index: int, source: FrameSource, include_self: bool = False) -> np.ndarray:
        g = self.group(index, source)
        if not include_self:
            g = g[g != index]
        order = np.argsort(np.abs(g - index), kind="stable")
        return np.sort(g[order][: MAX_OTHERS + (1 if include_self else 0)])

    def check(self, stack: ScanStack) -> None:
        super().check(stack)
        scan = stack.scan_shape or (1,)
        reps = scan[-1] if len(scan) >= 2 else stack.n_frames
        if reps < 2:
            raise XRDError(
                f"{stack.label}: method.name='n2n-frames' needs at least 2 repeated frames (the last scan axis "
                f"or a flat stack of repeats), got {reps}"
            )

    def _mean_of(self, idx: np.ndarray, source: FrameSource) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c, v = source.get_many(idx)
        return c.sum(axis=0), v.all(axis=0), c

    def load(self, index, source):
        c, v = source.get(index)
        oth = self.others(index, source)
        s, ov, _ = self._mean_of(oth, source)
        return {"counts": c, "valid": v, "others_sum": s, "others_valid": ov, "k": np.broadcast_to(np.float32(len(oth)), c.shape)}

    def load_infer(self, index, source):
        c, v = source.get(index)
        if self.strategy == "1:X":
            return {"counts": c, "valid": v}
        idx = self.others(index, source, include_self=True)
        s, ov, _ = self._mean_of(idx, source)
        return {"counts": c, "valid": v, "mean_all": s / np.float32(len(idx)), "valid_all": ov}

    def make_sample(self, arrays, rng, space) -> Sample:
        c, v = arrays["counts"], arrays["valid"]
        s, ov = arrays["others_sum"], arrays["others_valid"]
        k = float(arrays["k"].flat[0])
        both = v & ov
        w = both.astype(np.float32)
        if self.strategy == "1:X":
            x = self.norm.to_net(c, both)
            if space == "poisson":
                return Sample(x[None], self.target_from_counts(s, both, space), w, scale=k)
            return Sample(x[None], self.norm.to_net(s / np.float32(k), both), w)
        x = self.norm.to_net(s / np.float32(k), both)
        return Sample(x[None], self.target_from_counts(c, both, space), w)

    def net_input(self, batch):
        if self.strategy == "1:X":
            return super().net_input(batch)
        return self.norm.to_net(batch["mean_all"], batch["valid_all"] & batch["valid"])[:, None]
