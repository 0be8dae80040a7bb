"""Noise2Void (Krull et al. 2019): random blind spots (about 1.5 %) replaced by a random neighbour."""

from __future__ import annotations

from .n2s import Noise2Self


class Noise2Void(Noise2Self):
    """Random blind spots (``method.blind_fraction``), each replaced by the value of a random valid
    neighbour; loss on the blind spots only; single-pass inference (``infer.j_invariant`` uses the
    Noise2Self grid phases)."""

    name = "n2v"

    @property
    def masking(self) -> str:
        return "random"

    @property
    def replace(self) -> str:
        return "random"
