"""Physics building blocks: validity masks, Anscombe / GAT with exact unbiased inverses, binomial split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from napari_xrd_denoise.physics import binomial
from napari_xrd_denoise.physics.binomial import split, thin
from napari_xrd_denoise.physics.masks import (
    describe_pixel_mask,
    valid_from_pixel_mask,
    valid_from_raw,
    valid_from_user_mask,
)
from napari_xrd_denoise.physics.vst import (
    algebraic_inverse_anscombe,
    anscombe,
    forward,
    gat,
    inverse,
    inverse_anscombe,
    inverse_gat,
)

LAMBDAS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]


# --- Anscombe -----------------------------------------------------------------------------------
@pytest.mark.parametrize("lam", LAMBDAS)
def test_exact_unbiased_inverse_anscombe_on_samples(lam):
    rng = np.random.default_rng(1000 + int(lam * 10))
    x = rng.poisson(lam, 1_000_000)
    d = anscombe(x).mean(dtype=np.float64)
    est = float(inverse_anscombe(np.array([d]))[0])
    assert abs(est / x.mean() - 1) < 0.01, (lam, est, x.mean())
    alg = float(algebraic_inverse_anscombe(np.array([d]))[0])
    if lam <= 10:
        assert abs(alg / x.mean() - 1) > 0.01  # the naive inverse is biased: the test above can fail


def test_exact_unbiased_inverse_anscombe_on_expectations():
    # E[A(x)] from the Poisson pmf, far beyond the tabulated range as well
    for lam in [0.05, 0.3, 3.0, 30.0, 300.0, 399.0, 401.0, 1000.0, 5000.0]:
        k = np.arange(int(lam + 20 * np.sqrt(lam) + 40))
        e = float(np.sum(stats.poisson.pmf(k, lam) * 2 * np.sqrt(k + 0.375)))
        assert inverse_anscombe(np.array([e]))[0] == pytest.approx(lam, rel=1e-3)
    # below the expected transform of zero counts: 0, never negative
    assert np.all(inverse_anscombe(np.array([0.0, 1.0, 2 * np.sqrt(0.375)])) == 0)
    # monotonic
    d = np.linspace(1.0, 60.0, 2000)
    assert np.all(np.diff(inverse_anscombe(d)) >= 0)


def test_anscombe_stabilises_variance():
    rng = np.random.default_rng(3)
    for lam in (5, 20, 100):
        assert anscombe(rng.poisson(lam, 200_000)).var() == pytest.approx(1.0, abs=0.08)
    assert anscombe(np.array([-3.0]))[0] == pytest.approx(2 * np.sqrt(0.375))


@pytest.mark.parametrize("lam", [0.5, 2.0, 10.0, 50.0])
def test_inverse_gat_on_poisson_gaussian_samples(lam):
    gain, sigma, offset = 2.0, 3.0, 10.0
    rng = np.random.default_rng(int(lam * 10))
    n = 1_000_000
    z = gain * rng.poisson(lam, n) + rng.normal(offset, sigma, n)
    d = gat(z, gain, sigma, offset).mean(dtype=np.float64)
    est = float(inverse_gat(np.array([d]), gain, sigma, offset)[0])
    assert abs(est / z.mean() - 1) < 0.01, (lam, est, z.mean())
    naive = (float(algebraic_inverse_anscombe(np.array([d]))[0]) - (sigma / gain) ** 2) * gain + offset
    if lam <= 2:
        assert abs(naive / z.mean() - 1) > 0.01


def _exact_gat_expectation(lam: float, s: float) -> float:
    """E[2 sqrt(max(k + s*n + 3/8 + s^2, 0))], k ~ Poisson(lam), n ~ N(0, 1), by fine trapezoid quadrature."""
    k = np.arange(int(lam + 20 * np.sqrt(lam) + 40))
    x = np.linspace(-12, 12, 48_001)
    g = stats.norm.pdf(x)
    fk = np.array([np.trapezoid(2 * np.sqrt(np.maximum(kk + s * x + 0.375 + s * s, 0)) * g, x) for kk in k])
    return float(np.sum(stats.poisson.pmf(k, lam) * fk))


def test_inverse_gat_exact_expectation_moderate_counts():
    for lam in (1.0, 5.0, 50.0):
        e = _exact_gat_expectation(lam, 1.5)
        assert inverse_anscombe(np.array([e]), sigma=1.5)[0] == pytest.approx(lam, rel=2e-3)


def test_inverse_gat_exact_expectation_low_counts():
    for lam in (0.05, 0.2):
        e = _exact_gat_expectation(lam, 0.5)
        assert inverse_anscombe(np.array([e]), sigma=0.5)[0] == pytest.approx(lam, rel=0.01)


def test_forward_inverse_dispatch():
    x = np.array([0.0, 1.0, 7.0], dtype=np.float32)
    np.testing.assert_array_equal(forward(x, "anscombe"), anscombe(x))
    np.testing.assert_array_equal(forward(x, "none"), x)
    np.testing.assert_array_equal(inverse(x, "none"), x)
    np.testing.assert_allclose(forward(x, "gat", 2.0, 1.0, 0.5), gat(x, 2.0, 1.0, 0.5))
    np.testing.assert_allclose(inverse(forward(x, "gat", 1.0, 0.0, 0.0), "gat"), inverse_anscombe(anscombe(x)))
    with pytest.raises(ValueError, match="unknown transform"):
        forward(x, "log")
    with pytest.raises(ValueError, match="unknown transform"):
        inverse(x, "sqrt")


# --- binomial thinning / splitting --------------------------------------------------------------
def test_split_halves_are_independent_poisson():
    rng = np.random.default_rng(11)
    lam, p = 5.0, 0.3
    n = rng.poisson(lam, 1_000_000)
    a, b = split(n, p, rng=12)
    np.testing.assert_array_equal(a + b, n)
    assert a.min() >= 0 and b.min() >= 0
    se = np.sqrt(lam / n.size)
    assert abs(a.mean() - p * lam) < 5 * se
    assert abs(b.mean() - (1 - p) * lam) < 5 * se
    # each half is Poisson: variance equals mean
    assert a.var() / a.mean() == pytest.approx(1.0, abs=0.01)
    assert b.var() / b.mean() == pytest.approx(1.0, abs=0.01)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01
    # halves of a non-Poisson (constant) input are perfectly anti-correlated
    c1, c2 = split(np.full(1_000_000, 5), p, rng=13)
    assert np.corrcoef(c1, c2)[0, 1] < -0.9


@pytest.mark.parametrize("n", [1, 5, 64, 70, 200, 512])
def test_even_split_follows_the_binomial_law(n):
    """p = 1/2 draws fair bits (one word per 64 counts, masked to the bits owed): its counts must follow
    Binomial(n, 1/2) exactly, also across word boundaries (64, 70, 200) and at the largest count drawn so."""
    if not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2 uses rng.binomial for every p")
    draws = 200_000
    a, b = split(np.full(draws, n), 0.5, rng=n)
    np.testing.assert_array_equal(a + b, n)
    k, obs = np.unique(a.astype(np.int64), return_counts=True)
    pmf = stats.binom.pmf(k, n, 0.5)
    keep = pmf * draws >= 20  # chi-square on the well-populated bins, the rest pooled
    o = np.append(obs[keep], obs[~keep].sum() + (draws - obs.sum()))
    e = np.append(pmf[keep] * draws, draws - (pmf[keep] * draws).sum())
    assert stats.chisquare(o, e).pvalue > 1e-4
    assert abs(a.mean() - n / 2) < 5 * np.sqrt(n / 4 / draws)


def test_even_split_of_a_frame_with_zeros_and_large_counts():
    rng = np.random.default_rng(5)
    frame = rng.poisson(30.0, (64, 64))
    frame[:8] = 0
    a, b = split(frame, 0.5, rng=6)
    assert not a[:8].any() and not b[:8].any()
    np.testing.assert_array_equal(a + b, frame)
    # a count beyond the bit-drawn range (a Bragg spot's peak) is drawn by rng.binomial, the rest by bits
    big_n = binomial.HALF_MAX_COUNT * 20
    n = np.array([big_n, 3, 0, 70] * 20_000)
    a, b = split(n, 0.5, rng=7)
    np.testing.assert_array_equal(a + b, n)
    for v in (big_n, 3, 70):
        sel = a[n == v]
        assert abs(sel.mean() - v / 2) < 5 * np.sqrt(v / 4 / sel.size)
        assert sel.var() == pytest.approx(v / 4, rel=0.05)


def test_split_is_seeded_and_validates():
    x = np.arange(100).reshape(10, 10)
    a1, _ = split(x, 0.5, rng=1)
    a2, _ = split(x, 0.5, rng=1)
    np.testing.assert_array_equal(a1, a2)
    assert a1.shape == x.shape and a1.dtype == np.float32
    for p in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(ValueError, match="p="):
            split(x, p)


def test_thinning_mean_and_edges():
    rng = np.random.default_rng(21)
    n = rng.poisson(40.0, 500_000)
    t = thin(n, 0.1, rng=22)
    assert abs(t.mean() - 4.0) < 5 * np.sqrt(4.0 / n.size)
    assert t.var() / t.mean() == pytest.approx(1.0, abs=0.02)  # thinned Poisson is Poisson
    assert np.all(t <= n)
    np.testing.assert_array_equal(thin(n[:100], 1.0, rng=0), n[:100])
    assert not thin(n[:100], 0.0, rng=0).any()
    with pytest.raises(ValueError, match="p="):
        thin(n, 1.2)
    # float input: NaN and negatives count as 0
    f = np.array([np.nan, -3.0, 4.0, np.inf])
    out = thin(f, 1.0)
    np.testing.assert_array_equal(out, [0, 0, 4, 0])


def test_thin_of_eiger_sentinel_gives_zero():
    raw = np.array([3, 2**32 - 1], dtype=np.uint32)
    assert thin(raw, 0.5, rng=0)[1] == 0


# --- validity masks -----------------------------------------------------------------------------
def test_uint32_sentinel():
    raw = np.array([0, 5, 2**32 - 2, 2**32 - 1], dtype=np.uint32)
    np.testing.assert_array_equal(valid_from_raw(raw), [True, True, True, False])
    # after a cast to float32 the sentinel is 4294967296.0: the mask must come from the raw integers
    assert float(raw.astype(np.float32)[3]) == 4294967296.0
    assert valid_from_raw(raw.astype(np.float32))[3]  # and a float test cannot find it


def test_uint16_and_bit_depth_sentinels():
    raw = np.array([0, 4094, 4095, 65534, 65535], dtype=np.uint16)
    np.testing.assert_array_equal(valid_from_raw(raw), [True, True, True, True, False])
    np.testing.assert_array_equal(valid_from_raw(raw, bit_depth=12), [True, True, False, True, False])
    np.testing.assert_array_equal(valid_from_raw(raw, bit_depth=16), [True, True, True, True, False])
    # a bit depth larger than the dtype is ignored
    u8 = np.array([0, 254, 255], dtype=np.uint8)
    np.testing.assert_array_equal(valid_from_raw(u8, bit_depth=12), [True, True, False])
    # Eiger 32-bit data
    u32 = np.array([4095, 2**32 - 1], dtype=np.uint32)
    np.testing.assert_array_equal(valid_from_raw(u32, bit_depth=32), [True, False])


def test_pilatus_negatives():
    raw = np.array([[-2, -1, 0, 7]], dtype=np.int32)
    np.testing.assert_array_equal(valid_from_raw(raw), [[False, False, True, True]])
    np.testing.assert_array_equal(valid_from_raw(raw, keep_negatives=True), [[True, True, True, True]])
    i16 = np.array([-1, 4095, 12], dtype=np.int16)  # Lambda: -1 gap, 4095 saturation
    np.testing.assert_array_equal(valid_from_raw(i16, bit_depth=12), [False, False, True])


def test_saturation_and_floats():
    raw = np.array([10, 999, 1000, 5000], dtype=np.int32)
    np.testing.assert_array_equal(valid_from_raw(raw, saturation=1000), [True, True, False, False])
    f = np.array([1.0, np.nan, np.inf, -np.inf, -0.5, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(valid_from_raw(f), [True, False, False, False, False, True])
    np.testing.assert_array_equal(valid_from_raw(f, keep_negatives=True), [True, False, False, False, True, True])
    np.testing.assert_array_equal(valid_from_raw(np.array([3.0, 4095.0]), bit_depth=12), [True, False])
    with np.errstate(all="raise"):  # no warnings from NaN comparisons
        valid_from_raw(f, saturation=0.5)
    with pytest.raises(TypeError):
        valid_from_raw(np.array(["a"]))


def test_leading_axes_kept():
    raw = np.zeros((3, 2, 4, 5), dtype=np.uint32)
    raw[1, 0, 2, 3] = 2**32 - 1
    v = valid_from_raw(raw)
    assert v.shape == raw.shape and v.sum() == raw.size - 1 and not v[1, 0, 2, 3]


def test_pixel_mask_bits():
    pm = np.zeros((2, 4), dtype=np.uint32)
    pm[0, 0] = 1  # gap
    pm[0, 1] = 2  # dead
    pm[0, 2] = 1 << 3  # over-responding
    pm[0, 3] = 1 << 4  # noisy
    pm[1, 0] = (1 << 8) | 1  # user + gap
    pm[1, 1] = np.uint32(1 << 31)  # virtual
    np.testing.assert_array_equal(
        valid_from_pixel_mask(pm), [[False, False, False, False], [False, False, True, True]]
    )
    d = describe_pixel_mask(pm)
    assert d == {"gap": 2, "dead": 1, "over-responding": 1, "noisy": 1, "user": 1, "virtual": 1}
    user = np.array([[0, 1], [255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(valid_from_user_mask(user), [[True, False], [False, True]])
