"""Each baseline reduces the error of a smooth Poisson image and keeps invalid pixels invalid."""

import numpy as np
import pytest

from napari_xrd_denoise import baselines
from napari_xrd_denoise.errors import XRDError


@pytest.fixture(scope="module")
def smooth():
    yy, xx = np.indices((64, 64), dtype=np.float64)
    truth = 6.0 + 4.0 * np.sin(yy / 10.0) * np.cos(xx / 13.0)
    raw = np.random.default_rng(0).poisson(truth).astype(np.float64)
    valid = np.ones(truth.shape, bool)
    valid[:, 30:32] = False  # a gap
    raw[~valid] = 1e9  # garbage that must never leak into neighbours
    return truth, raw, valid


def rmse(a, truth, valid):
    return float(np.sqrt(np.mean((a[valid] - truth[valid]) ** 2)))


@pytest.mark.parametrize("name, kw", [("gaussian", {"sigma": 2.0}), ("median", {"size": 5}), ("bm3d", {})])
def test_baseline_reduces_error(smooth, name, kw):
    if name == "bm3d":
        pytest.importorskip("bm3d")
    truth, raw, valid = smooth
    out = baselines.apply(name, raw, valid, **kw)
    assert out.dtype == np.float32 and out.shape == raw.shape
    assert np.isnan(out[~valid]).all() and np.isfinite(out[valid]).all()
    e_raw = rmse(baselines.raw(raw, valid), truth, valid)
    e_out = rmse(out, truth, valid)
    assert e_out < 0.6 * e_raw, (name, e_out, e_raw)
    # no leak from the gap: pixels next to it are not pulled towards 1e9
    assert np.nanmax(out) < 30


def test_bm3d_is_unbiased_at_low_counts():
    pytest.importorskip("bm3d")
    truth = np.full((48, 48), 0.5)
    raw = np.random.default_rng(1).poisson(truth).astype(np.float64)
    out = baselines.bm3d_anscombe(raw, None)
    # the exact unbiased inverse keeps the mean; the algebraic inverse would give about 0.25
    assert abs(float(out.mean()) - 0.5) < 0.08


def test_best_gaussian_is_the_oracle_choice(smooth):
    truth, raw, valid = smooth
    out, sigma = baselines.best_gaussian(raw, valid, truth)
    errs = {s: rmse(baselines.gaussian(raw, valid, s), truth, valid) for s in baselines.DEFAULT_SIGMAS}
    assert sigma == min(errs, key=errs.get) or rmse(out, truth, valid) <= min(errs.values()) * 1.05
    assert sigma > 1.0  # a smooth image wants a wide filter


def test_spectra_and_stacks():
    ch = np.arange(1024, dtype=np.float64)
    truth = np.repeat((20 + 10 * np.sin(ch / 40.0))[None], 3, 0)
    raw = np.random.default_rng(2).poisson(truth).astype(np.float64)
    for name in ("gaussian", "median"):
        out = baselines.apply(name, raw, None, frame_ndim=1, **({"sigma": 4.0} if name == "gaussian" else {"size": 7}))
        assert out.shape == raw.shape
        # filtered along channels only: rows stay independent
        assert rmse(out, truth, np.ones_like(truth, bool)) < 0.6 * rmse(raw, truth, np.ones_like(truth, bool))
    with pytest.raises(XRDError, match="2D"):
        baselines.bm3d_anscombe(raw, None, frame_ndim=1)


def test_errors_name_the_parameter(smooth):
    _, raw, valid = smooth
    with pytest.raises(XRDError, match="name='nope'"):
        baselines.apply("nope", raw, valid)
    with pytest.raises(XRDError, match="size"):
        baselines.median(raw, valid, size=4)
    with pytest.raises(XRDError, match="mask"):
        baselines.gaussian(raw, valid[:10], 1.0)
