"""Geometry: PONI loading, beam centre, azimuthal profiles (pyFAI), LaB6 goniometer integrators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.signal import find_peaks

from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.physics.geometry import (
    azimuthal_profile,
    beam_center_from_poni,
    lab6_integrator,
    lab6_ring_two_theta,
    load_poni,
    make_integrator,
    profile_error,
)
from napari_xrd_denoise.sample_data import load_lab6
from napari_xrd_denoise.synthetic import make_scan

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
REAL_LAMBDA = REAL / "lambda750k_nexus"


@pytest.fixture(scope="module")
def rings():
    return make_scan(scan_shape=(2,), frame_shape=(256, 256), dose="high", n_spots=0, seed=7)


def _numpy_radial_mean(img, valid, center, nbins):
    """Independent reference: plain radial binning of pixel centres (1 px bins)."""
    H, W = img.shape
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - center[0], xx - center[1])
    b = np.floor(r).astype(int)
    m = valid & (b < nbins)
    s = np.bincount(b[m], img[m], minlength=nbins)
    n = np.bincount(b[m], minlength=nbins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return s / n


def test_profile_peaks_at_ring_radii(rings):
    r, i, sig = azimuthal_profile(rings.truth[0], rings.valid, center=rings.center, npt=1000, radial_range=(0, 125))
    assert r.shape == i.shape == sig.shape == (1000,)
    for R in rings.ring_radii:
        w = np.abs(r - R) < 2.5
        peak = r[w][np.nanargmax(i[w])]
        assert abs(peak - R) < 0.3, (peak, R)
    # no peak anywhere else (the background falls monotonically)
    found, _ = find_peaks(np.nan_to_num(i), prominence=0.05 * np.nanmax(i))
    assert len(found) == len(rings.ring_radii)
    # the noisy counts give the same peaks
    rn, inoisy, _ = azimuthal_profile(rings.counts[0], rings.valid, center=rings.center, npt=250, radial_range=(0, 125))
    for R in rings.ring_radii:
        w = np.abs(rn - R) < 2.5
        assert abs(rn[w][np.nanargmax(inoisy[w])] - R) < 0.6


def test_profile_matches_plain_radial_binning(rings):
    img = rings.truth[1]
    n = 120
    r, i, _ = azimuthal_profile(img, rings.valid, center=rings.center, npt=n, radial_range=(0, n))
    ref = _numpy_radial_mean(img, rings.valid, rings.center, n)
    np.testing.assert_allclose(r, np.arange(n) + 0.5, atol=1e-4)
    ok = np.isfinite(i) & np.isfinite(ref) & (r > 12)
    assert ok.sum() > 100
    assert np.corrcoef(i[ok], ref[ok])[0, 1] > 0.99
    assert profile_error(i[ok], ref[ok]) < 0.1
    # bins hidden by the beam stop are empty: NaN, not zero
    assert np.all(np.isnan(i[r < 3]))


def test_nan_marked_invalid_pixels(rings):
    img = rings.counts[0].astype(np.float32)
    img[~rings.valid] = np.nan
    a = azimuthal_profile(img, None, center=rings.center)
    b = azimuthal_profile(rings.counts[0], rings.valid, center=rings.center)
    np.testing.assert_allclose(a[1], b[1], equal_nan=True)
    # without the mask, the sentinel pixels wreck the profile: the masking matters
    c = azimuthal_profile(rings.counts[0].astype(np.float64), None, center=rings.center)
    assert np.nanmax(c[1]) > 1e3 * np.nanmax(b[1])
    # poisson error model: sigma ~ sqrt(mean / n_pixels)
    r, i, s = b
    k = np.argmin(np.abs(r - 100.5))
    assert 0.5 < s[k] / np.sqrt(i[k] / (2 * np.pi * 100.5)) < 2.0


def test_profile_with_geometry(rings):
    g = rings.geometry()
    px_mm = rings.pixel_size * 1e3
    r, i, _ = azimuthal_profile(
        rings.truth[0],
        rings.valid,
        geometry=g,
        unit="r_mm",
        npt=1000,
        radial_range=(0, 125 * px_mm),
        correct_solid_angle=False,
    )
    for R in rings.ring_radii:
        w = np.abs(r / px_mm - R) < 2.5
        assert abs(r[w][np.nanargmax(i[w])] / px_mm - R) < 0.3
    t, it, _ = azimuthal_profile(rings.truth[0], rings.valid, geometry=g, unit="2th_deg", npt=1000)
    for R in rings.ring_radii:
        expect = np.degrees(np.arctan(R * rings.pixel_size / rings.distance))
        w = np.abs(t - expect) < 0.2
        assert abs(t[w][np.nanargmax(it[w])] - expect) < 0.03
    q, iq, _ = azimuthal_profile(rings.truth[0], rings.valid, geometry=g)  # default unit q_nm^-1
    assert np.nanmax(q) > 1.0 and np.isfinite(iq).sum() > 50


def test_beam_center_of_synthetic_geometry(rings):
    yx = beam_center_from_poni(rings.geometry(), rings.frame_shape)
    np.testing.assert_allclose(yx, rings.center, atol=1e-6)
    ai = make_integrator(rings.geometry())
    assert make_integrator(ai) is ai


@pytest.mark.parametrize("orientation", [1, 2, 3, 4])
def test_beam_center_with_tilts_and_orientations(orientation):
    shape = (120, 160)
    g = {
        "dist": 0.08,
        "poni1": 0.0041,
        "poni2": 0.0052,
        "rot1": 0.04,
        "rot2": -0.03,
        "rot3": 0.0,
        "detector": "Detector",
        "detector_config": {"pixel1": 1e-4, "pixel2": 1e-4, "max_shape": shape, "orientation": orientation},
        "wavelength": 1e-10,
    }
    y, x = beam_center_from_poni(g, shape)
    ai = make_integrator(g)
    tth = ai.array_from_unit(shape=shape, typ="center", unit="2th_deg")
    iy, ix = np.unravel_index(np.argmin(tth), shape)
    # the tilt moves the centre well away from the PONI
    assert abs(iy - 40.5) + abs(ix - 51.5) > 5 or orientation != 3
    assert abs(iy - y) <= 0.75 and abs(ix - x) <= 0.75
    # sub-pixel: a paraboloid through the 3x3 neighbourhood of the minimum sits at the returned centre
    if 1 <= iy < shape[0] - 1 and 1 <= ix < shape[1] - 1:
        dy = (tth[iy - 1, ix] - tth[iy + 1, ix]) / (2 * (tth[iy - 1, ix] - 2 * tth[iy, ix] + tth[iy + 1, ix]))
        dx = (tth[iy, ix - 1] - tth[iy, ix + 1]) / (2 * (tth[iy, ix - 1] - 2 * tth[iy, ix] + tth[iy, ix + 1]))
        assert abs(iy + dy - y) < 0.25 and abs(ix + dx - x) < 0.25
    yf, xf = beam_center_from_poni(g, shape, flip_vertical=True)
    assert yf == pytest.approx(shape[0] - 1 - y) and xf == pytest.approx(x)


def test_lambda_poni_center():
    poni = REAL / "lambda750k_nexus" / "L2.poni"
    if not poni.is_file():
        pytest.skip("shared real data not present")
    d = load_poni(poni)
    assert d["dist"] == pytest.approx(0.3091923560063649)
    assert d["detector_config"]["pixel1"] == pytest.approx(55e-6)
    y, x = beam_center_from_poni(poni, (516, 1554))
    # small tilts: the direct beam is near poni / pixel, moved by dist * tan(rot) / pixel
    assert abs(y - d["poni1"] / 55e-6) < 0.01 * 0.31 / 55e-6
    assert abs(x - d["poni2"] / 55e-6) < 0.02 * 0.31 / 55e-6
    # and at that point 2theta is zero, larger one pixel away
    ai = make_integrator(poni)
    at = ai.tth(np.array([y, y + 1, y, y - 1]), np.array([x, x, x + 1, x]))
    assert at[0] < 1e-6 and np.all(at[1:] > 1e-4)


def test_poni_errors(tmp_path):
    with pytest.raises(XRDError, match="missing.poni"):
        load_poni(tmp_path / "missing.poni")
    bad = tmp_path / "bad.poni"
    bad.write_text("this is not a poni file\n")
    with pytest.raises(XRDError, match="bad.poni"):
        load_poni(bad)
    with pytest.raises(XRDError, match="geometry"):
        make_integrator(3.0)
    with pytest.raises(XRDError, match="geometry .* or a beam centre"):
        azimuthal_profile(np.ones((32, 32)))
    with pytest.raises(XRDError, match="mask shape"):
        azimuthal_profile(np.ones((32, 32)), np.ones((32, 31), bool), center=(16, 16))


def test_profile_error():
    ref = np.array([1.0, 2.0, 3.0, np.nan, 4.0])
    assert profile_error(ref, ref) == 0.0
    assert profile_error(1.1 * ref, ref) == pytest.approx(0.1)
    a = ref.copy()
    a[0] = np.nan
    assert profile_error(a, ref) == pytest.approx(0.0)
    # tuples (radial, intensity, sigma) are accepted
    assert profile_error((None, 1.2 * ref, None), (None, ref, None)) == pytest.approx(0.2)
    # sigma weighting: an error on a bin with a large sigma counts less
    b = np.array([1.0, 2.0, 3.0, 0.0, 5.0])
    w_small = profile_error(b, ref, sigma=np.array([1, 1, 1, 1, 100.0]))
    assert w_small < profile_error(b, ref)
    with pytest.raises(XRDError, match="bins"):
        profile_error(ref[:3], ref)
    with pytest.raises(XRDError, match="no bin"):
        profile_error(np.full(5, np.nan), ref)


def test_lab6_ring_positions():
    tth = lab6_ring_two_theta(0.8856, n=5)
    d = np.array([4.157, 2.939, 2.400, 2.078, 1.859])
    np.testing.assert_allclose(tth, np.degrees(2 * np.arcsin(0.8856 / (2 * d))), atol=0.01)


def _peak_near(t, i, x, half=0.5):
    w = np.abs(t - x) < half
    return t[w][np.nanargmax(i[w])]


def test_lab6_goniometer_integrator_on_packaged_frames():
    s = load_lab6()
    rings = lab6_ring_two_theta(s["wavelength_angstrom"], n=6)
    seen = set()
    for frame, tth in zip(s["data"], s["two_theta_deg"]):
        ai = lab6_integrator(tth)
        t, i, _ = azimuthal_profile(frame, s["valid"], geometry=ai, unit="2th_deg", npt=1200)
        inside = [k for k, x in enumerate(rings) if np.nanmin(t) + 0.4 < x < np.nanmax(t) - 0.4]
        assert inside, tth
        for k in inside:
            assert abs(_peak_near(t, i, rings[k]) - rings[k]) < 0.1
            seen.add(k)
    assert seen >= {0, 1, 2, 3, 4}  # the first five LaB6 rings, d = 4.157 ... 1.859 A
    # the wrong arm angle puts the ring away from its 2theta: the check can fail
    frame, tth = s["data"][0], s["two_theta_deg"][0]
    t, i, _ = azimuthal_profile(frame, s["valid"], geometry=lab6_integrator(tth + 0.68), unit="2th_deg", npt=1200)
    assert abs(_peak_near(t, i, rings[0], half=1.0) - rings[0]) > 0.4


def test_lab6_integrator_errors(tmp_path):
    with pytest.raises(XRDError, match="not found"):
        lab6_integrator(10.0, calibration=tmp_path / "none.json")
    with pytest.raises(XRDError, match="two_theta"):
        lab6_integrator(float("nan"))


def test_a_cropped_stack_keeps_its_rings():
    """The 2theta map of a cropped frame is the full frame's map cropped (the PONI moves with the crop
    origin); it was the full detector's map laid on the crop, up to 3 degrees off on the Lambda frames."""
    import glob

    from napari_xrd_denoise.io.readers import open_stack
    from napari_xrd_denoise.physics.geometry import radial_map

    files = sorted(glob.glob(str(REAL_LAMBDA / "*00000.nxs")))
    if not files:
        pytest.skip("real Lambda data not present")
    s = open_stack(files[0], poni=REAL_LAMBDA / "L2.poni")
    full = radial_map(s.frame_shape, geometry=s.geometry)
    c = s.crop([100, 400, 300, 1200])
    np.testing.assert_allclose(radial_map(c.frame_shape, geometry=c.geometry), full[100:400, 300:1200], atol=1e-9)
    cc = c.crop([10, 200, 50, 500])  # cropped twice
    np.testing.assert_allclose(radial_map(cc.frame_shape, geometry=cc.geometry), full[110:300, 350:800], atol=1e-9)
    assert cc.beam_center == pytest.approx((s.beam_center[0] - 110, s.beam_center[1] - 350))


def test_a_poni_of_another_detector_is_refused(tmp_path):
    """A PONI made for another detector gives wrong rings everywhere: its detector's shape (a named
    Pilatus 1M) or its pixel size (172 um against the file's 75 um) is checked against the data, in one
    line naming the PONI; the data's own detector passes."""
    from pyFAI.detectors import Detector, detector_factory
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    from napari_xrd_denoise.io.readers import open_stack
    from napari_xrd_denoise.synthetic import write_scan

    scan = make_scan(scan_shape=(2,), frame_shape=(64, 80), dose="mid", seed=1)
    fn = write_scan(tmp_path / "scan_master.h5", scan, format="eiger", external=False)
    assert open_stack(fn).pixel_size == (75e-6, 75e-6)

    def poni(name, det):
        ai = AzimuthalIntegrator(dist=0.1, poni1=0.002, poni2=0.003, detector=det, wavelength=1e-10)
        p = tmp_path / name
        ai.write(str(p))
        return p

    with pytest.raises(XRDError, match=r"pilatus\.poni: the PONI's detector is 1043x981 pixels but the frames .* 64x80"):
        open_stack(fn, poni=poni("pilatus.poni", detector_factory("Pilatus1M")))
    with pytest.raises(XRDError, match=r"big\.poni: the PONI's pixels are 172\.0x172\.0 um .* 75\.0x75\.0 um"):
        open_stack(fn, poni=poni("big.poni", Detector(172e-6, 172e-6)))
    ok = open_stack(fn, poni=poni("own.poni", Detector(75e-6, 75e-6)))
    assert ok.geometry is not None
