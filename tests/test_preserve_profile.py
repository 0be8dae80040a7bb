"""Ring-wise intensity preservation (``--preserve-profile``): the output keeps the counts' azimuthal profile."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_xrd_denoise.cli import main
from napari_xrd_denoise.physics.geometry import preserve_profile, radial_map, ring_bins
from napari_xrd_denoise.synthetic import make_scan


def _ring_sums(img, valid, bins):
    v = valid & np.isfinite(img)
    return np.bincount(bins[v], weights=img[v].astype(np.float64), minlength=int(bins.max()) + 1)


def test_blurred_estimate_gets_the_raw_profile_back():
    scan = make_scan(scan_shape=(1,), frame_shape=(128, 128), dose="mid", seed=5)
    truth, valid = scan.truth[0].astype(np.float64), scan.valid
    raw = np.where(valid, scan.counts[0], 0).astype(np.float64)
    blurred = ndimage.gaussian_filter(truth, 2.5)  # a denoiser that smears the narrow rings
    blurred[~valid] = np.nan
    bins = ring_bins(radial_map(truth.shape, center=scan.center))
    out = preserve_profile(blurred, raw, valid, bins)
    # every ring now holds the raw counts, invalid pixels stay NaN, nothing negative
    np.testing.assert_allclose(_ring_sums(out, valid, bins), _ring_sums(raw, valid, bins), rtol=1e-4, atol=1e-3)
    assert np.isnan(out[~valid]).all() and (out[valid] >= 0).all()
    # and the ring profile is far closer to the truth's than the blurred one was
    t = _ring_sums(truth, valid, bins)
    err = lambda p: np.linalg.norm(p - t) / np.linalg.norm(t)  # noqa: E731
    assert err(_ring_sums(out, valid, bins)) < 0.5 * err(_ring_sums(np.nan_to_num(blurred), valid, bins))


def test_cli_preserve_profile_needs_a_centre(tmp_path, capsys):
    scan = make_scan(scan_shape=(2,), frame_shape=(48, 48), dose="mid", seed=1)
    inp = tmp_path / "scan.npy"
    np.save(inp, scan.counts)
    fast = ["--epochs", "1", "--steps", "3", "--batch-size", "2", "--patch-size", "32", "--device", "cpu",
            "--method", "n2s"]
    import napari_xrd_denoise.api as api_mod

    trained = []
    real_train = api_mod._train_on_stack
    api_mod._train_on_stack = lambda *a, **k: trained.append(1) or real_train(*a, **k)
    try:
        assert main(["denoise", str(inp), "-o", str(tmp_path / "a.npy"), "--preserve-profile", *fast]) == 2
    finally:
        api_mod._train_on_stack = real_train
    assert "--preserve-profile" in capsys.readouterr().err
    assert not trained  # refused before the training, not after it
    cy, cx = scan.center
    assert main(["denoise", str(inp), "-o", str(tmp_path / "b.npy"), "--preserve-profile", "--profile-window", "1",
                 "--center", f"{cy},{cx}", *fast]) == 0
    out = np.load(tmp_path / "b.npy")
    bins = ring_bins(radial_map(scan.valid.shape, center=scan.center))
    hot_rings = np.unique(bins[scan.hot])  # the planted hot pixels are valid in a .npy: their rings differ
    assert hot_rings.size > 0
    for i in range(2):
        v = np.isfinite(out[i])  # the pixels the pipeline found valid (NaN elsewhere)
        assert v[scan.hot].all()
        raw = np.where(v, scan.counts[i], 0).astype(np.float64)
        got, want = _ring_sums(out[i], v, bins), _ring_sums(raw, v, bins)
        plain = np.setdiff1d(np.arange(got.size), hot_rings)
        np.testing.assert_allclose(got[plain], want[plain], rtol=1e-3, atol=1e-2)
        # a ring with a hot pixel keeps the counts of its other pixels: the hot counts are not spread on it
        cold = v & ~scan.hot
        got_c, want_c = _ring_sums(out[i], cold, bins), _ring_sums(raw, cold, bins)
        np.testing.assert_allclose(got_c[hot_rings], want_c[hot_rings], rtol=1e-3, atol=1e-2)


def test_radial_map_needs_geometry_or_centre():
    from napari_xrd_denoise.errors import XRDError

    with pytest.raises(XRDError, match="--poni"):
        radial_map((8, 8))


def _window_sums(img, valid, bins, w):
    return np.convolve(_ring_sums(img, valid, bins), np.ones(w), mode="same")


def test_window_corrects_flux_bias_with_less_raw_noise():
    """A denoiser that loses 20 % of the flux and blurs: the windowed correction restores the flux on
    radial scales wider than the window and, at a few counts per pixel, ends closer to the truth than
    the exact ring-by-ring rescale (which copies every ring's Poisson noise)."""
    scan = make_scan(scan_shape=(1,), frame_shape=(160, 160), dose="low", seed=3)
    truth, valid = scan.truth[0].astype(np.float64), scan.valid
    raw = np.where(valid, scan.counts[0], 0).astype(np.float64)
    est = 0.8 * ndimage.gaussian_filter(truth, 1.0)
    est[~valid] = np.nan
    bins = ring_bins(radial_map(truth.shape, center=scan.center))
    w9 = preserve_profile(est, raw, valid, bins, window=9)
    w1 = preserve_profile(est, raw, valid, bins, window=1)
    mse = lambda d: float(np.mean((np.sqrt(d[valid]) - np.sqrt(truth[valid])) ** 2))  # noqa: E731
    assert mse(w9) < mse(w1) and mse(w9) < mse(est)
    t = _ring_sums(truth, valid, bins)
    flux = lambda d: _ring_sums(d, valid, bins).sum() / t.sum()  # noqa: E731
    assert abs(flux(w9) - 1) < 0.05 < abs(flux(np.nan_to_num(est)) - 1)


def test_correction_is_on_by_default_with_a_centre_and_can_be_turned_off(tmp_path, capsys):
    scan = make_scan(scan_shape=(1,), frame_shape=(48, 48), dose="mid", seed=2)
    inp = tmp_path / "scan.npy"
    np.save(inp, scan.counts)
    cy, cx = scan.center
    fast = ["--epochs", "1", "--steps", "3", "--batch-size", "2", "--patch-size", "32", "--device", "cpu",
            "--method", "n2s", "--seed", "0", "--center", f"{cy},{cx}"]
    assert main(["denoise", str(inp), "-o", str(tmp_path / "on.npy"), *fast]) == 0
    assert "note: flux correction along the rings from the beam centre" in capsys.readouterr().err
    assert main(["denoise", str(inp), "-o", str(tmp_path / "off.npy"), "--no-preserve-profile", *fast]) == 0
    assert "flux correction" not in capsys.readouterr().err
    on, off = np.load(tmp_path / "on.npy")[0], np.load(tmp_path / "off.npy")[0]
    v = np.isfinite(on)
    raw = np.where(v, scan.counts[0], 0).astype(np.float64)
    bins = ring_bins(radial_map(scan.valid.shape, center=scan.center))
    # "on" is "off" scaled by one factor per ring bin, and those factors bring the flux to the raw one
    k = v & (off > 1e-3)
    ratio = on[k] / off[k]
    for b in np.unique(bins[k]):
        sel = bins[k] == b
        assert np.ptp(ratio[sel]) < 1e-3 * max(1.0, abs(ratio[sel].mean()))
    assert not np.allclose(ratio, 1.0)
    cold = v & ~scan.hot  # the planted hot pixels (valid in a .npy) are left out of the flux totals
    flux = lambda d: abs(np.nansum(d[cold]) / raw[cold].sum() - 1)  # noqa: E731
    assert flux(on) < 0.05 and flux(on) < flux(off)


def test_whole_frame_correction_removes_a_global_flux_bias():
    """A denoiser with 5 % residual error that adds 4 % of flux (a network's typical end-of-training bias,
    as on the Merlin twin of docs/methods.md): keeping each frame's total counts brings the flux back to
    within Poisson error of the truth and lowers the error against the truth; a frame with too few
    counts to know its flux is left alone."""
    from napari_xrd_denoise.inference import MIN_FRAME_COUNTS, keep_frame_counts

    scan = make_scan(scan_shape=(1,), frame_shape=(192, 192), dose="mid", seed=4)
    truth, valid = scan.truth[0].astype(np.float64), scan.valid
    raw = np.where(valid, scan.counts[0], 0).astype(np.float64)
    assert raw[valid].sum() > 4 * MIN_FRAME_COUNTS
    wobble = ndimage.gaussian_filter(np.random.default_rng(1).normal(size=truth.shape), 2.0)
    est = 1.04 * truth * np.exp(0.05 * wobble / wobble.std())
    est[~valid] = np.nan
    out = keep_frame_counts(est, raw, valid)
    assert np.isnan(out[~valid]).all()
    np.testing.assert_allclose(out[valid].sum(), raw[valid].sum(), rtol=1e-5)
    flux = out[valid].sum() / truth[valid].sum()
    assert abs(flux - 1) < 3 / np.sqrt(truth[valid].sum()) < 0.02
    mse = lambda d: float(np.mean((d[valid] - truth[valid]) ** 2))  # noqa: E731
    assert mse(out) < 0.8 * mse(est)
    # the same frame at 1/100 of the dose has under MIN_FRAME_COUNTS counts: unchanged
    sparse = np.random.default_rng(0).poisson(truth / 100.0).astype(np.float64)
    assert sparse[valid].sum() < MIN_FRAME_COUNTS
    np.testing.assert_array_equal(keep_frame_counts(est / 100, sparse, valid), (est / 100).astype(np.float32))


def test_whole_frame_correction_is_the_default_without_rings(tmp_path, capsys):
    """No centre, no PONI: each frame of integer counts keeps its total counts (a note says so); off
    with --no-preserve-profile; float data are left alone."""
    rng = np.random.default_rng(0)
    truth = 6.0 + 4.0 * np.sin(np.arange(48) / 5.0)[None, :, None] * np.ones((2, 48, 48))
    counts = rng.poisson(truth).astype(np.uint16)
    assert counts.sum(axis=(1, 2)).min() > 10_000
    np.save(tmp_path / "scan.npy", counts)
    np.save(tmp_path / "float.npy", counts.astype(np.float32))
    fast = ["--epochs", "1", "--steps", "3", "--batch-size", "2", "--patch-size", "32", "--device", "cpu",
            "--method", "n2s", "--seed", "0"]
    assert main(["denoise", str(tmp_path / "scan.npy"), "-o", str(tmp_path / "on.npy"), *fast]) == 0
    assert "flux correction over each whole frame" in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "scan.npy"), "-o", str(tmp_path / "off.npy"), "--no-preserve-profile",
                 *fast]) == 0
    assert "flux correction" not in capsys.readouterr().err
    assert main(["denoise", str(tmp_path / "float.npy"), "-o", str(tmp_path / "fl.npy"), *fast]) == 0
    assert "flux correction" not in capsys.readouterr().err
    on, off = np.load(tmp_path / "on.npy"), np.load(tmp_path / "off.npy")
    for i in range(2):
        v = np.isfinite(on[i])
        np.testing.assert_allclose(on[i][v].sum(), counts[i][v].sum(), rtol=1e-5)
        ratio = on[i][v] / off[i][v]
        assert np.ptp(ratio) < 1e-4 * ratio.mean()  # one factor per frame
    assert not np.allclose(on, off)


def _hot_frame(seed: int = 3):
    """A mid-dose frame whose planted hot pixels (2e4-2e6 counts) are left valid (no mask names them),
    with a denoiser estimate 4 % over the truth that either repeats the hot pixels to 0.1 % (a network
    that learnt them, as on a scan where they sit in every frame) or removes them (as on a single frame)."""
    scan = make_scan(scan_shape=(1,), frame_shape=(128, 128), dose="mid", seed=seed, n_hot=8)
    valid = scan.valid | scan.hot  # hot pixels unmasked
    raw = np.where(valid, scan.counts[0], 0).astype(np.float64)
    truth = scan.truth[0].astype(np.float64)
    est = 1.04 * truth
    est[~valid] = np.nan
    kept, removed = est.copy(), est.copy()
    kept[scan.hot] = raw[scan.hot] * 1.001
    return scan, valid, raw, truth, kept, removed


def test_flux_outliers_finds_unmasked_hot_pixels_and_nothing_else():
    from napari_xrd_denoise.physics.masks import flux_outliers

    scan, valid, raw, truth, kept, removed = _hot_frame()
    for est in (kept, removed):
        np.testing.assert_array_equal(flux_outliers(raw, est, valid), scan.hot)
    # compact real features are no spikes (2x2 spots of 400 counts and a one-pixel-wide ring of 80 on a
    # background of under one count: a median test flagged all of them), a pair of hot pixels is
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    r = np.hypot(yy - 64, xx - 64)
    t = np.where(np.abs(r - 40) < 0.5, 80.0, 0.3)
    for y, x in ((20, 20), (40, 90), (100, 30)):
        t[y:y + 2, x:x + 2] = 400.0
    c = rng.poisson(t).astype(np.float64)
    c[5, 60:62] = 5e5
    ones = np.ones_like(c, dtype=bool)
    want = np.zeros_like(ones)
    want[5, 60:62] = True
    np.testing.assert_array_equal(flux_outliers(c, np.where(want, c, t), ones), want)
    # no false alarms on Poisson frames of any dose, bright rings and Bragg spots included
    for dose in ("low", "mid", "high", 1000.0):
        s = make_scan(scan_shape=(2,), frame_shape=(160, 160), dose=dose, seed=7, n_hot=0)
        for j in range(2):
            assert not flux_outliers(s.counts[j], s.truth[j], s.valid).any()


@pytest.mark.parametrize("repeats", [True, False])
def test_unmasked_hot_pixels_set_no_scale_in_the_flux_corrections(repeats):
    """Before, the hot pixels' counts set the scale: the whole-frame correction kept the network's 4 %
    bias (a repeated hot pixel 0.1 % off outweighs the frame), and along the rings a removed hot pixel's
    counts were spread over its ring window (+40 % and more: a false ring). Now both corrections bring
    every ring window and the frame to within Poisson error of the truth."""
    from napari_xrd_denoise.config import InferConfig
    from napari_xrd_denoise.inference import correct_profile

    scan, valid, raw, truth, kept, removed = _hot_frame()
    est = kept if repeats else removed
    bins = ring_bins(radial_map(truth.shape, center=scan.center))
    ok = scan.valid  # the pixels whose truth is the pattern's
    frame = correct_profile(est[None].copy(), raw[None], valid[None], None, InferConfig(), whole_frame=True)[0]
    assert abs(frame[ok].sum() / truth[ok].sum() - 1) < 4 / np.sqrt(truth[ok].sum())
    rings = correct_profile(est[None].copy(), raw[None], valid[None], bins, InferConfig(profile_window=5))[0]
    for y, x in zip(*np.nonzero(scan.hot)):
        win = ok & (np.abs(bins - bins[y, x]) <= 2)
        ratio = rings[win].sum() / truth[win].sum()
        assert abs(ratio - 1) < 4 / np.sqrt(truth[win].sum()) + 0.01, (y, x, ratio)


def test_sparse_frames_get_the_scans_flux_factor():
    """Forty low-dose frames of about 1 500 counts each (a 4D-STEM scan at low dose), denoised with the
    -8 % flux bias of a short training: too sparse to fix their own totals, they are scaled by one factor
    measured on 16 frames spread over the scan, which brings every frame to within 2 % of its true flux
    (they kept the -8 %); a scan whose sample holds under MIN_FRAME_COUNTS counts is left as it is."""
    from napari_xrd_denoise.config import InferConfig
    from napari_xrd_denoise.inference import (
        MIN_FRAME_COUNTS,
        POOL_FRAMES,
        correct_profile,
        pool_indices,
        sample_flux_factor,
    )
    from napari_xrd_denoise.io.stack import ScanStack

    scan = make_scan(scan_shape=(40,), frame_shape=(96, 96), dose=0.4, seed=6, n_hot=0)
    truth = scan.truth.astype(np.float64)
    valid = np.broadcast_to(scan.valid, truth.shape)
    stack = ScanStack.from_array(scan.counts, static_valid=scan.valid)
    counts = np.where(valid, scan.counts, 0).astype(np.float32)
    per_frame = counts.reshape(40, -1).sum(axis=1)
    assert per_frame.max() < MIN_FRAME_COUNTS
    est = np.where(valid, 0.92 * truth, np.nan).astype(np.float32)
    asked = []

    def network(ids):
        asked.extend(ids)
        return [est[i] for i in ids]

    f = sample_flux_factor(stack, network)
    assert sorted(asked) == sorted(int(i) for i in pool_indices(40, POOL_FRAMES))  # 16 frames were enough
    assert abs(f * 0.92 - 1) < 0.02
    out = correct_profile(est.copy(), counts, valid, None, InferConfig(), whole_frame=True, sparse_factor=f)
    for j in range(40):
        v = valid[j]
        assert abs(out[j][v].sum() / truth[j][v].sum() - 1) < 0.02, j
        assert abs(est[j][v].sum() / truth[j][v].sum() - 1) > 0.07
    assert np.isnan(out[~valid]).all()
    few = ScanStack.from_array(scan.counts[:3] // 4, static_valid=scan.valid)  # 3 frames, ~1 100 counts
    assert sample_flux_factor(few, lambda ids: [est[i] / 4 for i in ids]) is None
