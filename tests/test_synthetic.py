"""Synthetic scans with ground truth, their file writer, and the packaged sample data."""

from __future__ import annotations

import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.physics.masks import valid_from_pixel_mask, valid_from_raw
from napari_xrd_denoise.sample_data import (
    lab6_scan,
    load_lab6,
    sample_path,
    synthetic_path,
    synthetic_scan,
)
from napari_xrd_denoise.synthetic import (
    EIGER_SENTINEL,
    SyntheticScan,
    make_scan,
    make_spectra,
    write_scan,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="module")
def scan() -> SyntheticScan:
    return make_scan(scan_shape=(4, 4), frame_shape=(256, 256), dose="low", seed=0)


def _ring_pixels(s: SyntheticScan) -> np.ndarray:
    H, W = s.frame_shape
    yy, xx = np.mgrid[:H, :W]
    r = np.hypot(yy - s.center[0], xx - s.center[1])
    m = np.zeros((H, W), dtype=bool)
    for R, w in zip(s.ring_radii, s.ring_widths):
        m |= np.abs(r - R) <= max(w, 0.75)
    return m & s.valid


def _friedel_r(s: SyntheticScan, index=(1, 2)) -> float:
    """Correlation of a truth frame with its 180-degree rotation about the scan's centre."""
    t = s.truth[index].astype(np.float64)
    H, W = t.shape
    cy, cx = s.center
    yy, xx = np.mgrid[:H, :W].astype(np.float64)
    coords = [2 * cy - yy, 2 * cx - xx]
    rot = ndimage.map_coordinates(t, coords, order=3, mode="constant", cval=np.nan)
    pv = ndimage.map_coordinates(s.valid.astype(np.float64), coords, order=0, mode="constant", cval=0.0) > 0.5
    m = s.valid & pv & np.isfinite(rot)
    assert m.sum() > 0.5 * H * W
    return float(np.corrcoef(t[m], rot[m])[0, 1])


# --- scans ------------------------------------------------------------------------------------
def test_deterministic_from_seed(scan):
    again = make_scan(scan_shape=(4, 4), frame_shape=(256, 256), dose="low", seed=0)
    np.testing.assert_array_equal(again.counts, scan.counts)
    np.testing.assert_array_equal(again.truth, scan.truth)
    np.testing.assert_array_equal(again.spot_positions, scan.spot_positions)
    other = make_scan(scan_shape=(4, 4), frame_shape=(256, 256), dose="low", seed=1)
    assert not np.array_equal(other.counts, scan.counts)
    assert other.center != scan.center


def test_layout_does_not_depend_on_scan_shape(scan):
    small = make_scan(scan_shape=(2, 3), frame_shape=(256, 256), dose="low", seed=0)
    assert small.center == scan.center
    np.testing.assert_array_equal(small.ring_radii, scan.ring_radii)
    np.testing.assert_array_equal(small.valid, scan.valid)


def test_shapes_types_truth(scan):
    assert scan.counts.shape == (4, 4, 256, 256) and scan.counts.dtype == np.uint32
    assert scan.truth.shape == scan.counts.shape and scan.truth.dtype == np.float32
    assert scan.valid.shape == (256, 256) and scan.valid.dtype == bool
    assert np.all(scan.truth >= 0) and np.all(np.isfinite(scan.truth))
    cy, cx = scan.center
    assert cy != round(cy) and cx != round(cx)  # sub-pixel centre
    assert scan.spot_positions.shape == (4, 4, 12, 2)
    assert scan.spot_intensities.shape == (4, 4, 12)
    assert 0.9 < scan.valid.mean() < 0.99


def test_fast_enough():
    t0 = time.perf_counter()
    make_scan(scan_shape=(4, 4), frame_shape=(256, 256), seed=5)
    assert time.perf_counter() - t0 < 1.0


def test_counts_are_poisson_of_truth(scan):
    v = scan.frame_valid()
    c = scan.counts[v].astype(np.float64)
    t = scan.truth[v].astype(np.float64)
    n = c.size
    # mean: sum of counts matches sum of truth within 4 standard errors of a Poisson total
    assert abs(c.sum() - t.sum()) < 4 * np.sqrt(t.sum())
    # variance: residual variance equals the mean (Poisson), not some other noise level
    resid = c - t
    ratio = np.mean(resid**2) / np.mean(t)
    assert abs(ratio - 1) < 0.02, ratio
    # the fraction of zeros matches exp(-lambda): a property of the Poisson law itself
    p0 = np.mean(np.exp(-t))
    assert abs(np.mean(c == 0) - p0) < 4 * np.sqrt(p0 * (1 - p0) / n)
    # within one truth bin, mean and variance agree
    sel = (t > 0.8) & (t < 1.2)
    assert sel.sum() > 20000
    assert abs(c[sel].mean() - t[sel].mean()) < 0.02
    assert abs(c[sel].var() / t[sel].mean() - 1) < 0.05
    assert np.all(c == np.round(c))


@pytest.mark.parametrize(
    "dose, lo, hi", [("low", 0.5, 2.0), ("mid", 5.0, 20.0), ("high", 50.0, 200.0), (3.0, 1.5, 6.0)]
)
def test_dose_levels(dose, lo, hi):
    s = make_scan(scan_shape=(2, 2), frame_shape=(128, 128), dose=dose, seed=2)
    ring = _ring_pixels(s)
    med = float(np.median(s.truth[..., ring]))
    assert lo <= med <= hi
    assert lo <= float(np.median(s.counts[..., ring])) <= hi


def test_invalid_pixels_and_sentinels(scan):
    c = scan.counts
    assert np.all(c[..., scan.gaps] == EIGER_SENTINEL)
    assert np.all(c[..., scan.dead] == EIGER_SENTINEL)
    assert np.all(c[..., scan.beam_stop & ~scan.gaps] == 0)  # where the arm crosses a gap, the gap wins
    assert np.all(scan.truth[..., scan.beam_stop] == 0)
    assert np.all(c[..., scan.hot] > 10_000)
    assert scan.gaps.any() and scan.dead.any() and scan.hot.any() and scan.beam_stop.any()
    # gaps are horizontal and vertical bands
    assert scan.gaps.all(axis=1).any() and scan.gaps.all(axis=0).any()
    for m in (scan.gaps, scan.dead, scan.hot, scan.beam_stop):
        assert not np.any(scan.valid & m)
    assert np.array_equal(scan.valid, ~(scan.gaps | scan.dead | scan.hot | scan.beam_stop))
    # the beam stop covers the centre
    cy, cx = scan.center
    assert scan.beam_stop[int(round(cy)), int(round(cx))]
    # the sentinel alone finds gaps and dead pixels; hot pixels and the beam stop need `valid`
    raw_valid = valid_from_raw(c)
    assert np.array_equal(raw_valid[0, 0], ~(scan.gaps | scan.dead))
    # pixel_mask bits: gaps bit 0, dead bit 1
    assert np.array_equal(valid_from_pixel_mask(scan.pixel_mask), ~(scan.gaps | scan.dead))
    assert np.all(scan.pixel_mask[scan.gaps] & 1) and np.all(scan.pixel_mask[scan.dead] & 2)


def test_pilatus_convention():
    s = make_scan(scan_shape=(2,), frame_shape=(96, 128), detector="pilatus", seed=4)
    assert s.counts.dtype == np.int32 and s.counts.shape == (2, 96, 128)
    assert np.all(s.counts[..., s.gaps] == -1)
    assert np.all(s.counts[..., s.dead] == -2)
    assert np.array_equal(valid_from_raw(s.counts)[1], ~(s.gaps | s.dead))
    assert np.all(valid_from_raw(s.counts, keep_negatives=True))


def test_friedel_symmetry():
    sym = make_scan(seed=0, friedel_symmetric=True)
    asym = make_scan(seed=0, friedel_symmetric=False, asymmetry=0.5)
    r_sym, r_asym = _friedel_r(sym), _friedel_r(asym)
    assert r_sym > 0.95, r_sym
    assert r_asym < 0.9, r_asym  # the check can fail on a pattern that is not centrosymmetric
    # a wrong centre (3 px off) also breaks the symmetry
    shifted = SyntheticScan(**{**sym.__dict__, "center": (sym.center[0] + 3.0, sym.center[1])})
    assert _friedel_r(shifted) < 0.9
    # spot pairs sit at opposite positions about the centre
    n = sym.spot_positions.shape[-2] // 2
    p = sym.spot_positions[2, 1]
    np.testing.assert_allclose(p[:n] + p[n:], np.broadcast_to(2 * np.array(sym.center), (n, 2)), atol=1e-9)
    np.testing.assert_allclose(sym.spot_intensities[..., :n], sym.spot_intensities[..., n:])
    assert np.all(asym.spot_intensities[..., n:] <= 0.3 * asym.spot_intensities[..., :n] + 1e-12)


def test_spots_move_and_scan_is_smooth(scan):
    pos = scan.spot_positions
    far = np.hypot(*(pos[0, 0] - pos[-1, -1]).T)
    near = np.hypot(*(pos[1, 1] - pos[1, 2]).T)
    assert np.median(far) > 1.0 and far.max() > 2.0  # spots travel across the scan ...
    assert np.all(near < 1.0) and np.all(near > 0)  # ... by less than a pixel per step
    # intensity varies across the scan: each spot is brightest somewhere and fades elsewhere
    amp = scan.spot_intensities.reshape(16, -1)
    assert np.all(amp.max(axis=0) > 1.5 * amp.min(axis=0))
    # neighbouring scan positions are similar but not equal
    for a, b in (((0, 0), (0, 1)), ((1, 1), (2, 1))):
        ta, tb = scan.truth[a].ravel(), scan.truth[b].ravel()
        assert not np.array_equal(ta, tb)
        assert np.corrcoef(ta, tb)[0, 1] > 0.9
    # the brightest spot of a frame is a local maximum of the truth at its recorded position
    f = (3, 0)
    k = int(np.argmax(scan.spot_intensities[f]))
    y, x = scan.spot_positions[f][k]
    iy, ix = int(round(y)), int(round(x))
    win = scan.truth[f][iy - 3 : iy + 4, ix - 3 : ix + 4]
    wy, wx = np.unravel_index(np.argmax(win), win.shape)
    assert abs(iy - 3 + wy - y) <= 1 and abs(ix - 3 + wx - x) <= 1
    assert win.max() > 5 * np.median(scan.truth[f][scan.valid])


def test_scan_shapes_and_errors():
    assert make_scan(scan_shape=(3,), frame_shape=(64, 48)).counts.shape == (3, 64, 48)
    assert make_scan(scan_shape=(1, 2, 2), frame_shape=(40, 40)).truth.shape == (1, 2, 2, 40, 40)
    with pytest.raises(XRDError, match="dose"):
        make_scan(dose="extreme")
    with pytest.raises(XRDError, match="dose"):
        make_scan(dose=-1)
    with pytest.raises(XRDError, match="frame_shape"):
        make_scan(frame_shape=(16, 256))
    with pytest.raises(XRDError, match="detector"):
        make_scan(detector="medipix")
    with pytest.raises(XRDError, match="center"):
        make_scan(frame_shape=(64, 64), center=(80.0, 10.0))


def test_to_stack(scan):
    st = scan.to_stack()
    assert st.shape == scan.counts.shape and st.frame_shape == (256, 256)
    raw = st.frame(5)
    x, v = st.counts(raw)
    assert np.array_equal(v, scan.valid)
    assert np.all(x[~v] == 0)
    assert st.beam_center == scan.center


def test_spectra():
    sp = make_spectra(n=32, channels=1024, seed=0)
    assert sp.counts.shape == (32, 1024) and sp.truth.shape == (32, 1024)
    assert np.all(sp.truth > 0)
    again = make_spectra(n=32, channels=1024, seed=0)
    np.testing.assert_array_equal(sp.counts, again.counts)
    # repeats share the truth; the noise is Poisson
    assert np.all(sp.truth == sp.truth[0])
    resid = sp.counts - sp.truth.astype(np.float64)
    assert abs(np.mean(resid**2) / np.mean(sp.truth) - 1) < 0.05
    # every visible maximum of the truth is one of the listed lines, and there are several
    from scipy.signal import find_peaks

    t = sp.truth[0]
    found, _ = find_peaks(t, prominence=0.02 * t.max())
    assert len(found) >= 4
    for i in found:
        assert np.min(np.abs(sp.peak_channels - i)) <= 1.0
    assert np.min(np.abs(sp.peak_channels - np.argmax(t))) <= 1.0
    varied = make_spectra(n=8, channels=256, seed=1, vary=0.5)
    assert not np.allclose(varied.truth[0], varied.truth[4])


# --- writer -----------------------------------------------------------------------------------
def test_write_eiger_external(tmp_path, scan):
    p = write_scan(tmp_path / "syn_master.h5", scan, frames_per_file=5)
    files = sorted(x.name for x in tmp_path.iterdir())
    assert files == [f"syn_data_{i:06d}.h5" for i in (1, 2, 3, 4)] + ["syn_master.h5"]
    with h5py.File(p, "r") as fh:
        d = fh["entry/data"]
        parts = [d[k][()] for k in sorted(d.keys())]
        flat = np.concatenate(parts)
        assert flat.dtype == np.uint32
        np.testing.assert_array_equal(flat, scan.counts.reshape(16, 256, 256))
        det = fh["entry/instrument/detector"]
        assert int(det["bit_depth_image"][()]) == 32
        pm = det["detectorSpecific/pixel_mask"][()]
        np.testing.assert_array_equal(pm, scan.pixel_mask)
        assert float(det["beam_center_y"][()]) == scan.center[0]
        assert json.loads(fh.attrs["provenance"])["seed"] == 0
    with pytest.raises(XRDError, match="exists"):
        write_scan(tmp_path / "syn_master.h5", scan)


def test_write_bit_depth_single_file_bslz4_and_all_mask(tmp_path):
    import hdf5plugin  # noqa: F401  (registers the filter for reading)

    s = make_scan(scan_shape=(2, 2), frame_shape=(64, 64), dose=3000.0, seed=3)
    p = write_scan(tmp_path / "one.h5", s, external=False, bit_depth=12, compression="bslz4", mask="all")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["one.h5"]
    with h5py.File(p, "r") as fh:
        raw = fh["entry/data/data"][()]
        pm = fh["entry/instrument/detector/detectorSpecific/pixel_mask"][()]
        sat = int(fh["entry/instrument/detector/saturation_value"][()])
    assert raw.dtype == np.uint16 and raw.shape == (4, 64, 64)
    assert np.all(raw[:, pm != 0] == 4095)
    assert sat == 4094 and raw.max() == 4095
    assert np.array_equal(pm != 0, ~s.valid)  # hot pixels and the beam stop are masked too
    v = valid_from_raw(raw, bit_depth=12, saturation=sat)
    bright = s.counts.reshape(4, 64, 64) >= 4094
    assert bright[:, s.valid].any()  # this dose saturates some valid pixels
    np.testing.assert_array_equal(v, s.valid[None] & ~bright)
    ok = v
    np.testing.assert_array_equal(raw[ok], s.counts.reshape(4, 64, 64)[ok])


def test_write_npy_and_errors(tmp_path):
    s = make_scan(scan_shape=(2,), frame_shape=(48, 48), detector="pilatus")
    p = write_scan(tmp_path / "raw.npy", s, format="npy")
    np.testing.assert_array_equal(np.load(p), s.counts)
    with pytest.raises(XRDError, match="format"):
        write_scan(tmp_path / "x.tif", s, format="tiff")
    with pytest.raises(XRDError, match="bit_depth"):
        write_scan(tmp_path / "x.h5", s, bit_depth=24)
    with pytest.raises(XRDError, match="folder"):
        write_scan(tmp_path / "nope" / "x.h5", s)
    # a pilatus-style scan becomes Eiger-style in the file
    q = write_scan(tmp_path / "p_master.h5", s)
    with h5py.File(q, "r") as fh:
        raw = fh["entry/data/data_000001"][()]
    assert raw.dtype == np.uint32
    assert np.all(raw[:, s.gaps | s.dead] == EIGER_SENTINEL)


# --- sample data ------------------------------------------------------------------------------
def test_packaged_lab6():
    p = sample_path("lab6")
    assert p.is_file() and p.stat().st_size < 3_000_000
    s = load_lab6()
    assert s["data"].shape == (6, 195, 1475) and s["data"].dtype == np.uint32
    assert s["valid"].shape == (195, 1475)
    # the module gaps (columns 487-493 and 981-987) are the invalid pixels
    assert not s["valid"][:, 487:494].any() and not s["valid"][:, 981:988].any()
    assert s["valid"].sum() == 195 * (1475 - 14)
    np.testing.assert_allclose(s["two_theta_deg"], [11.8, 16.56, 20.64, 24.04, 26.76, 28.12])
    assert s["wavelength_angstrom"] == pytest.approx(0.885601)
    prov = s["provenance"]
    assert prov["licence"] == "Apache-2.0" and "ssrl-pyfai-basics" in prov["source_repository"]
    # low counts with bright ring arcs
    v = s["data"][:, s["valid"]]
    assert np.median(v) <= 12 and v.max() > 10_000
    assert sample_path("lab6_goniometer").is_file()
    with pytest.raises(XRDError, match="unknown sample"):
        sample_path("quartz")


def test_packaged_lab6_matches_shared_source():
    src = REAL / "ssrl_LaB6_Pilatus300KW_tth_scan" / "ssrl_LaB6_tth_scan_stack_DERIVED.h5"
    if not src.is_file():
        pytest.skip("shared real data not present")
    import hdf5plugin  # noqa: F401

    s = load_lab6()
    idx = s["provenance"]["selected_frames"]
    with h5py.File(src, "r") as fh:
        np.testing.assert_array_equal(fh["entry/data/data"][idx], s["data"])
        np.testing.assert_array_equal(fh["entry/sample/positioners/two_theta_deg"][idx], s["two_theta_deg"])
    gon = REAL / "ssrl_LaB6_Pilatus300KW_tth_scan" / "raw" / "ROBL_v1.json"
    assert gon.read_bytes() == sample_path("lab6_goniometer").read_bytes()


def test_napari_sample_functions():
    layers = synthetic_scan()
    assert [t for *_, t in layers] == ["image", "image", "labels"]
    (counts, m0, _), (truth, m1, _), (invalid, _, _) = layers
    assert m0["name"] == "synthetic scan (noisy)"
    assert counts.shape == truth.shape == (4, 4, 256, 256)
    assert invalid.shape == (256, 256) and set(np.unique(invalid)) == {0, 1}
    lo, hi = m0["contrast_limits"]
    assert lo == 0 and 1 < hi < 1000  # not set by the 2**32-1 sentinel
    assert m0["colormap"] == "magma"
    assert tuple(m0["metadata"]["center"]) == pytest.approx(make_scan().center)
    lab = lab6_scan()
    assert [t for *_, t in lab] == ["image", "labels"]
    data, meta, _ = lab[0]
    assert data.shape == (6, 195, 1475)
    assert 10 < meta["contrast_limits"][1] < 5000
    assert len(meta["metadata"]["two_theta_deg"]) == 6
    assert lab[1][0].sum() == 195 * 14


def test_synthetic_path(tmp_path):
    p = synthetic_path(tmp_path, scan_shape=(2, 2), frame_shape=(64, 64), seed=1)
    assert p.name == "synthetic_master.h5" and (tmp_path / "synthetic_data_000001.h5").is_file()
    s = make_scan(scan_shape=(2, 2), frame_shape=(64, 64), seed=1)
    with h5py.File(p, "r") as fh:
        np.testing.assert_array_equal(fh["entry/data/data_000001"][()], s.counts.reshape(4, 64, 64))
    with pytest.raises(XRDError, match="does not exist"):
        synthetic_path(tmp_path / "missing")
