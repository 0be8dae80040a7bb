"""Neighbour-scan blind spot (4D-STEM, fine XRD maps): predict a frame from the frames around it.

Neighbouring scan positions see nearly the same diffraction pattern but carry independent counting
noise. The network input is the ``n`` neighbouring frames (``method.neighbors`` = 4, 8 or 24; see
:mod:`physics.neighbors` for the offsets and the border rule) stacked as channels, on the network
scale; the target is the centre frame, which is never part of the input, so its noise cannot be
copied and every pixel of every frame (borders included) can enter the loss and be denoised.

Loss (``method.loss = auto``): MSE on the network scale for ``method.warmup_epochs`` epochs, then the
Poisson NLL (as a deviance) on the centre frame's counts plus the founding method's count-keeping
constraints, per pattern (patch) of ``N`` valid pixels with predicted / measured sums ``S_p`` / ``S_t``:
``0.02 (S_p/N - S_t/N)**2`` (means) and ``0.01 (S_p - S_t)**2 / (S_t N)`` (the sum error in units of
its own Poisson variance ``S_t``, per pixel). The sum term is scaled this way because ``S_t`` carries
counting noise of variance ``S_t``: the raw squared sum error (or the sum error per pixel) pushes all
pixels of a patch together with that noise, and cost 3 dB of PSNR on the synthetic 6x6 scan of
docs/methods.md, while plain Poisson already kept the total counts within 1 %. The Poisson stage is
used only for integer count data with the Anscombe / GAT transform; other data keep MSE throughout.
The loss space actually used is written back into ``method.loss`` at every epoch, so a saved model
converts its outputs with the right link.

``method.combine_n2s``: the centre frame is added as a last channel with a Noise2Self grid phase
hidden (replaced as ``method.replace``), and only the hidden valid pixels enter the loss. Single-pass
inference then sees the centre frame; ``infer.j_invariant`` sums over all grid phases instead.

``method.combine_split`` (default ``None`` = auto: on for integer counts with the Anscombe transform
and the Poisson loss, with one cycle; ``False`` gives the plain blind spot above): the centre frame
enters too, as one binomial half ``a / p`` (``method.split_p``) added as a last channel, and the target
is the other half ``b`` with ``rate = (1 - p) * link(output)`` (Poisson from the first epoch, no
warm-up), exactly as ``n2n-split`` (the halves' roles swap at random). Every valid pixel enters the loss
and the network sees the pixel's own half; a residual network adds its correction to that half (not to
the mean of all channels, which is mostly the neighbours' pattern: that baseline cost 3.8 dB at high
dose). Inference averages complementary halves as ``n2n-split`` does (``infer.split_passes``). Not with
refinement (``method.cycles > 1``): a neighbour's estimate would then carry the centre frame's own
photons back into its input. Measured on the synthetic 4x4 scans of docs/benchmarks.md
(docs/methods.md): better than the plain blind spot at every dose, by 5 dB at high dose.

Iterative refinement (``method.cycles > 1``) is driven by :mod:`napari_xrd_denoise.refine`; it swaps
the neighbour frames for leak-free estimates through :attr:`NeighborScan.context_provider`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import InferConfig
from ..errors import XRDError
from ..io.stack import ScanStack, spread_indices
from ..physics.neighbors import neighbor_indices
from .base import (
    CombinesWithSplit, FrameSource, Method, Run, Sample, fill_invalid, flip_tta, grid_mask, n_phases, replace_hidden,
)
from .symmetry import LoadCache

MEAN_WEIGHT = 0.02
SUM_WEIGHT = 0.01
#: ``model.residual = auto`` with the centre frame's split half: the residual path (on that half) is used
#: only when the median count of the valid pixels is at least this (docs/methods.md)
RESIDUAL_MIN_MEDIAN = 12.0


def median_count(source: FrameSource, max_frames: int = 8) -> float:
    """Median count of the valid pixels of up to ``max_frames`` evenly spaced frames of ``source``."""
    n = source.n_frames
    idx = spread_indices(n, max_frames)
    vals = [c[v] for c, v in (source.get(int(i)) for i in idx) if v.any()]
    return float(np.median(np.concatenate(vals))) if vals else 0.0

#: ``provider(index, source) -> (context counts (n, *frame), context validity (n, *frame))``
ContextProvider = Callable[[int, FrameSource], tuple[np.ndarray, np.ndarray]]


def scan_grid(config, source: FrameSource) -> tuple[int, ...]:
    """The 2-D scan grid of ``source``: its own, or ``data.scan_shape`` for a flat stack of that size."""
    scan = tuple(source.scan_shape)
    if len(scan) == 2:
        return scan
    want = config.data.scan_shape
    if want is not None and len(want) == 2 and int(np.prod(want)) == source.n_frames:
        return (int(want[0]), int(want[1]))
    raise XRDError(
        f"method.name='neighbors' needs the 2-D scan grid of the {source.n_frames} frames: give --scan-shape "
        f"ROWSxCOLS (1xN for a line scan)"
    )


class NeighborScan(CombinesWithSplit, Method):
    """Blind spot across the scan: input the neighbouring frames, target the centre frame."""

    name = "neighbors"
    needs_context = True

    def __init__(self, config, *, frame_ndim=None, norm=None):
        super().__init__(config, frame_ndim=frame_ndim, norm=norm)
        self._loss_choice = self.mc.loss
        self._integer = True
        self._tables: dict[tuple, np.ndarray] = {}
        self._cache = LoadCache()
        self.context_provider: ContextProvider | None = None

    # ---- channels and loss -------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.mc.neighbors)

    @property
    def in_channels(self) -> int:
        return self.n + (1 if (self.mc.combine_n2s or self.split) else 0)

    @property
    def residual_channel(self) -> int | None:
        """With the centre frame's half as the last channel, the residual is that channel (the mean of all
        channels is mostly the neighbours' pattern, which differs from the centre frame's)."""
        return self.n if self.split else None

    def auto_residual(self, source: FrameSource) -> tuple[bool, str]:
        """With the centre frame's split half (the residual channel), a residual path only where that half
        is close to the answer: median count of the valid pixels >= :data:`RESIDUAL_MIN_MEDIAN`. Below
        it the neighbours carry most of the signal, and a network that starts from the half must first
        learn to cancel its noise. Measured on the benchmark's synthetic 4x4 scans (60 s each, PSNR on
        the square-root scale against the truth, docs/methods.md): without the residual path +2.0 /
        +2.1 / +2.3 dB at median counts 0 / 2 / 6, and -0.15 dB (-1.0 dB on counts) at median 21.
        The plain blind spot (no centre channel; residual on the channel mean) keeps it."""
        if not self.split:
            return True, ""
        med = median_count(source)
        if med >= RESIDUAL_MIN_MEDIAN:
            return True, ""
        return False, (f"model.residual off (auto): median count {med:g} per valid pixel is below "
                       f"{RESIDUAL_MIN_MEDIAN:g}, where the neighbours carry most of the signal "
                       f"(--residual keeps it)")

    def default_loss(self) -> str:
        return "poisson"

    def poisson_ok(self) -> bool:
        return super().poisson_ok() and self._integer

    def final_space(self) -> str:
        want = self._loss_choice
        if want == "auto":
            want = self.default_loss()
        if want == "poisson" and not self.poisson_ok():
            want = "mse"
        return want

    def loss_space(self, epoch: int | None = None) -> str:
        """Training: MSE during the warm-up epochs, then :meth:`final_space`. ``epoch=None`` (inference,
        previews): the space of the latest epoch, which :meth:`begin_epoch` records in ``method.loss``."""
        if epoch is None:
            cur = self.mc.loss
            if cur == "auto":
                return self.final_space()
            return "mse" if (cur == "poisson" and not self.poisson_ok()) else cur
        want = self.final_space()
        if want == "poisson" and epoch < int(self.mc.warmup_epochs) and not self.split:
            return "mse"
        return want

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        # the saved config must name the space the (latest) weights were trained in
        self.mc.loss = self.loss_space(epoch)

    def loss(self, out, target, weight, scale, space: str):
        """The base loss (weighted MSE, or the Poisson deviance of ``rate = scale * link(out)``) plus, in
        the Poisson space, the per-pattern mean and sum constraints of the module docstring."""
        import torch

        from ..losses import link_rate

        base = super().loss(out, target, weight, scale, space)
        if space != "poisson":
            return base
        rate = scale * link_rate(out.float(), self.norm.mean, self.norm.std, self.norm.transform)
        w = (weight > 0).to(rate.dtype)
        dims = tuple(range(1, rate.ndim))
        npx = w.sum(dim=dims).clamp(min=1.0)
        s_pred = (rate * w).sum(dim=dims)
        s_true = (torch.where(w > 0, target, torch.zeros_like(target)) * w).sum(dim=dims)
        d = s_pred - s_true
        mean_term = ((d / npx) ** 2).mean()
        sum_term = (d * d / (s_true.clamp(min=1.0) * npx)).mean()
        return base + MEAN_WEIGHT * mean_term + SUM_WEIGHT * sum_term

    # ---- setup -------------------------------------------------------------------------------------
    def check(self, stack: ScanStack) -> None:
        super().check(stack)
        scan = stack.scan_shape
        if len(scan) != 2:
            raise XRDError(
                f"{stack.label}: method.name='neighbors' needs the 2-D scan grid: give --scan-shape ROWSxCOLS "
                f"(e.g. 141x121 for 17061 frames; 1xN for a line scan)"
            )
        neighbor_indices(scan, self.n)  # raises XRDError naming --scan-shape when too small
        from . import _is_integer_data

        self._integer = (
            self.norm.transform in ("anscombe", "gat") and not stack.keep_negatives and _is_integer_data(stack)
        )
        problem = self.split_problem(self._integer)
        if problem is None and int(self.mc.cycles) > 1:
            problem = ("iterative refinement (method.cycles > 1, --cycles) would pass the centre frame's own photons "
                       "back through the neighbour estimates; use --cycles 1 or --no-combine-split")
        self.resolve_combine_split(stack.label, problem)
        if self._loss_choice == "poisson" and not self._integer:
            self.messages.append(
                "method.loss=poisson needs integer counts; these data are not, so the MSE loss is used"
            )

    def attach(self, source: FrameSource, reference: FrameSource | None = None) -> None:
        super().attach(source, reference)
        self._cache.clear()

    def neighbors_of(self, index: int, source: FrameSource) -> np.ndarray:
        grid = scan_grid(self.config, source)
        key = (grid, self.n)
        tab = self._tables.get(key)
        if tab is None:
            tab = neighbor_indices(grid, self.n)
            self._tables[key] = tab
        return tab[int(index)]

    def raw_context(self, index: int, source: FrameSource) -> tuple[np.ndarray, np.ndarray]:
        return source.get_many(self.neighbors_of(index, source))

    # ---- samples -----------------------------------------------------------------------------------
    def _arrays(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        c, v = source.get(index)
        provider = self.context_provider
        if provider is None:
            ctx, cv = self.raw_context(index, source)
        else:
            ctx, cv = provider(int(index), source)
        return {"counts": c, "valid": v, "context": np.asarray(ctx, dtype=np.float32),
                "context_valid": np.asarray(cv, dtype=bool)}

    def net(self, counts: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Counts -> network scale for an input channel that hides nothing (the neighbours, the centre
        frame's binomial half): invalid pixels filled from their valid surroundings with
        ``method.fill_invalid`` (:func:`fill_invalid`), else the neutral 0."""
        z = self.norm.to_net(counts, valid)
        return fill_invalid(z, valid, self.ndim) if self.mc.fill_invalid else z

    def load(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        """Training arrays (cached: the trainer draws several patches from the same frames). The context
        is kept on the network scale (``"context_net"``), filled over the full frame, not per patch."""
        key = (id(source), id(self.context_provider), int(index))
        hit = self._cache.get(key)
        if hit is None:
            a = self._arrays(index, source)
            hit = {"counts": a["counts"], "valid": a["valid"], "context_net": self.net(a["context"], a["context_valid"])}
            self._cache.put(key, hit)
        return hit

    def load_infer(self, index: int, source: FrameSource) -> dict[str, np.ndarray]:
        return self._arrays(index, source)

    def make_sample(self, arrays, rng, space) -> Sample:
        c, v = arrays["counts"], arrays["valid"]
        x = arrays["context_net"]
        weight = v
        if self.split:
            from ..physics.binomial import split

            a, b = split(np.where(v, c, 0), self.p, rng)
            pa, pb = self.p, 1.0 - self.p
            if rng.random() < 0.5:
                a, b, pa, pb = b, a, pb, pa
            x = np.concatenate([x, self.net(a / np.float32(pa), v)[None]], axis=0)
            return Sample(x.astype(np.float32), self.target_from_counts(b, v, space), v.astype(np.float32), scale=pb)
        if self.mc.combine_n2s:
            w = int(self.mc.mask_width)
            hidden = grid_mask(v.shape, w, int(rng.integers(n_phases(w, self.ndim))))
            centre = replace_hidden(self.norm.to_net(c, v), hidden, v, self.mc.replace, rng)
            x = np.concatenate([x, centre[None]], axis=0)
            weight = v & hidden
        target = self.target_from_counts(c, v, space)
        return Sample(x.astype(np.float32), target, weight.astype(np.float32))

    # ---- inference ---------------------------------------------------------------------------------
    def net_input(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        x = self.net(batch["context"], batch["context_valid"])
        if self.mc.combine_n2s:
            x = np.concatenate([x, self.norm.to_net(batch["counts"], batch["valid"])[:, None]], axis=1)
        return x.astype(np.float32)

    def denoise(self, run: Run, batch: dict[str, np.ndarray], infer: InferConfig) -> np.ndarray:
        if not self.split:
            return super().denoise(run, batch, infer)
        from .n2n import split_halves

        ctx = self.net(batch["context"], batch["context_valid"])
        n = self.split_pass_count(infer)

        def net_input(k: int) -> np.ndarray:
            half = split_halves(batch["counts"], batch["valid"], self.p, k, complementary=True)
            return np.concatenate([ctx, self.net(half, batch["valid"][:, None])], axis=1).astype(np.float32)

        return self.averaged_passes(run, batch, infer, n, net_input)

    def predict(self, run: Run, batch: dict[str, np.ndarray], infer: InferConfig) -> np.ndarray:
        if not (self.mc.combine_n2s and infer.j_invariant):
            return super().predict(run, batch, infer)
        x = self.net_input(batch)
        valid = batch["valid"]
        frame = valid.shape[1:]
        w = int(self.mc.mask_width)
        rng = np.random.default_rng(0)
        out = np.zeros(valid.shape, dtype=np.float32)
        for ph in range(n_phases(w, self.ndim)):
            m = grid_mask(frame, w, ph)
            xi = x.copy()
            for b in range(x.shape[0]):
                xi[b, -1] = replace_hidden(x[b, -1], m, valid[b], self.mc.replace, rng)
            yi = flip_tta(run, xi, self.ndim) if infer.tta else run(xi)
            out[:, m] = yi[:, m]
        return out


METHOD = NeighborScan
