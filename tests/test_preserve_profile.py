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
    assert main(["denoise", str(inp), "-o", str(tmp_path / "a.npy"), "--preserve-profile", *fast]) == 2
    assert "--preserve-profile" in capsys.readouterr().err
    cy, cx = scan.center
    assert main(["denoise", str(inp), "-o", str(tmp_path / "b.npy"), "--preserve-profile", "--profile-window", "1",
                 "--center", f"{cy},{cx}", *fast]) == 0
    out = np.load(tmp_path / "b.npy")
    bins = ring_bins(radial_map(scan.valid.shape, center=scan.center))
    for i in range(2):
        v = np.isfinite(out[i])  # the pixels the pipeline found valid (NaN elsewhere)
        raw = np.where(v, scan.counts[i], 0).astype(np.float64)
        np.testing.assert_allclose(_ring_sums(out[i], v, bins), _ring_sums(raw, v, bins), rtol=1e-3, atol=1e-2)


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
    flux = lambda d: abs(np.nansum(d[v]) / raw[v].sum() - 1)  # noqa: E731
    assert flux(on) < 0.05 and flux(on) < flux(off)
