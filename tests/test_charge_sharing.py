"""Adjacent-pixel count correlation: 0 for independent counts, q / (1 + q) when charge is shared."""

import numpy as np
import pytest

from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.physics.binomial import adjacent_correlation, split
from napari_xrd_denoise.synthetic import charge_shared_counts


def test_simulated_charge_sharing_keeps_the_mean_and_gives_the_known_correlation():
    rng = np.random.default_rng(3)
    lam = np.full((4, 128, 128), 2.0)
    n = charge_shared_counts(lam, 0.15, rng)
    assert n[:, 1:, 1:].mean() == pytest.approx(2.0, rel=0.01)
    # each pixel sums independent thinned Poisson streams (own events, shares from the left and above):
    # still Poisson, variance = mean; only neighbours are correlated
    assert n[:, 1:, 1:].var() == pytest.approx(2.0, rel=0.03)
    ry, rx = adjacent_correlation(n)
    assert ry == pytest.approx(0.15 / 1.3, abs=0.015) and rx == pytest.approx(0.15 / 1.3, abs=0.015)
    assert np.allclose(adjacent_correlation(charge_shared_counts(lam, 0.0, rng)), 0.0, atol=0.02)
    with pytest.raises(XRDError, match="q=1.5"):
        charge_shared_counts(lam, 1.5, rng)


def test_independent_counts_give_zero_and_shared_charge_its_known_correlation():
    rng = np.random.default_rng(0)
    lam = np.full((4, 128, 128), 3.0)
    assert np.allclose(adjacent_correlation(rng.poisson(lam)), 0.0, atol=0.02)
    ry, rx = adjacent_correlation(charge_shared_counts(lam, (0.0, 0.3), rng))
    assert abs(rx - 0.3 / 1.3) < 0.02 and abs(ry) < 0.02
    # the consequence for binomial splitting: halves correlated between adjacent pixels
    a, b = split(charge_shared_counts(lam, (0.0, 0.3), rng), 0.5, rng)
    assert np.corrcoef(a[..., :-1].ravel(), b[..., 1:].ravel())[0, 1] > 0.05
    a, b = split(rng.poisson(lam), 0.5, rng)
    assert abs(np.corrcoef(a[..., :-1].ravel(), b[..., 1:].ravel())[0, 1]) < 0.02


def test_bright_sharp_structures_are_left_out_and_invalid_pixels_never_enter():
    """Sharp rings of independent counts bias the second-difference estimate; only the background 4 px
    away from them enters by default. Invalid pixels (huge sentinel values here) are ignored."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:160, 0:160]
    r = np.hypot(yy - 80.3, xx - 80.7)
    lam = 3.0 + 400.0 * np.exp(-0.5 * ((r - 40) / 0.8) ** 2) + 400.0 * np.exp(-0.5 * ((r - 65) / 0.8) ** 2)
    n = rng.poisson(np.broadcast_to(lam, (3, 160, 160))).astype(np.float64)
    assert max(adjacent_correlation(n, dark_below=None)) > 0.1  # biased by the rings
    assert np.allclose(adjacent_correlation(n), 0.0, atol=0.03)
    v = np.ones(n.shape, bool)
    v[:, 10:20, 10:20] = False
    n2 = n.copy()
    n2[~v] = 4e9
    assert np.allclose(adjacent_correlation(n2, v), adjacent_correlation(np.where(v, n, 0), v), atol=1e-9)
    assert np.allclose(adjacent_correlation(n2, v), 0.0, atol=0.03)
