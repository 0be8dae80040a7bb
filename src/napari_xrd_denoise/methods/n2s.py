"""Noise2Self (Batson & Royer 2019): blind-spot training with grid or random masks.

Training hides a set of pixels from the input (grid phase of width ``w`` or random positions), replaces
them (``zero`` / fixed neighbour interpolation / random neighbour) and computes the loss on the hidden
valid pixels only. Inference is a single plain pass, or with ``infer.j_invariant`` the J-invariant sum
over all ``w**ndim`` grid phases of ``net(masked_i) * mask_i``.
"""

from __future__ import annotations

import numpy as np

from ..config import InferConfig
from .base import Method, Run, Sample, flip_tta, grid_mask, n_phases, random_mask, replace_hidden


class Noise2Self(Method):
    name = "n2s"

    def default_loss(self) -> str:
        return "mse"

    @property
    def allow_residual(self) -> bool:
        return False

    # -- masks
    def hidden_mask(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        if self.masking == "grid":
            w = int(self.mc.mask_width)
            return grid_mask(shape, w, int(rng.integers(n_phases(w, len(shape)))))
        return random_mask(shape, float(self.mc.blind_fraction), rng)

    @property
    def masking(self) -> str:
        return self.mc.masking

    @property
    def replace(self) -> str:
        return self.mc.replace

    def make_sample(self, arrays, rng, space) -> Sample:
        counts, valid = arrays["counts"], arrays["valid"]
        hidden = self.hidden_mask(valid.shape, rng)
        x = self.norm.to_net(counts, valid)
        xin = replace_hidden(x, hidden, valid, self.replace, rng)
        target = self.target_from_counts(counts, valid, space)
        weight = (hidden & valid).astype(np.float32)
        return Sample(xin[None], target, weight)

    # -- inference
    def predict(self, run: Run, batch, infer: InferConfig) -> np.ndarray:
        if not infer.j_invariant:
            return super().predict(run, batch, infer)
        return self.predict_j_invariant(run, batch, infer)

    def predict_j_invariant(self, run: Run, batch, infer: InferConfig) -> np.ndarray:
        """Sum over grid phases of ``net(masked_i) * mask_i``: the output at a pixel never sees its input."""
        x = self.net_input(batch)  # (B, 1, *frame)
        valid = batch["valid"]
        frame = valid.shape[1:]
        w = int(self.mc.mask_width)
        rng = np.random.default_rng(0)
        out = np.zeros(valid.shape, dtype=np.float32)
        mode = self.replace
        for ph in range(n_phases(w, self.ndim)):
            m = grid_mask(frame, w, ph)
            xi = np.stack([replace_hidden(x[b], m, valid[b], mode, rng) for b in range(x.shape[0])])
            yi = flip_tta(run, xi, self.ndim) if infer.tta else run(xi)
            out[:, m] = yi[:, m]
        return out
