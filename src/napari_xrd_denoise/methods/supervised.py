"""Supervised training on paired low-/high-SNR frames (``reference`` stack of the same shape)."""

from __future__ import annotations

import numpy as np

from ..errors import XRDError
from ..io.stack import ScanStack
from .base import Method, Sample


class Supervised(Method):
    """Input: the noisy frame. Target: the paired reference frame scaled to the input's dose
    (factor = sum of input counts / sum of reference counts over pixels valid in both, per frame), so
    the network predicts the mean count at the input's dose whatever the reference exposure.

    MSE (default): the target is ``E[A(Poisson(ref))]`` (the reference taken as a clean mean), which the
    exact unbiased inverse maps back without bias. Poisson: the scaled reference in counts.
    """

    name = "supervised"
    needs_reference = True

    def default_loss(self) -> str:
        return "mse"

    def check(self, stack: ScanStack) -> None:
        super().check(stack)

    def attach(self, source, reference=None):
        super().attach(source, reference)
        if reference.stack.shape != source.stack.shape:
            raise XRDError(
                f"{reference.stack.label}: reference shape {reference.stack.shape} does not match the data shape {source.stack.shape}"
            )

    def load(self, index, source):
        c, v = source.get(index)
        r, rv = self.reference.get(index)
        both = v & rv
        tot_r = float(r[both].sum())
        factor = float(c[both].sum()) / tot_r if tot_r > 0 else 1.0
        return {"counts": c, "valid": both, "ref": (r * np.float32(factor)).astype(np.float32)}

    def load_infer(self, index, source):
        c, v = source.get(index)
        return {"counts": c, "valid": v}

    def make_sample(self, arrays, rng, space) -> Sample:
        c, v = arrays["counts"], arrays["valid"]
        x = self.norm.to_net(c, v)
        return Sample(x[None], self.target_from_mean(arrays["ref"], v, space), v.astype(np.float32))
