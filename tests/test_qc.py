"""QC on synthetic Poisson ring patterns whose true mean is known."""

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from napari_xrd_denoise import qc
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.io.stack import ScanStack

CENTER = (60.3, 66.7)
SENTINEL = np.iinfo(np.uint32).max


def ring_truth(shape=(128, 128), n_frames=6, spot_frame=2, seed=0):
    """Rings (1.2 px wide) on a smooth background, plus a 3x3 Bragg spot in one frame."""
    yy, xx = np.indices(shape, dtype=np.float64)
    r = np.hypot(yy - CENTER[0], xx - CENTER[1])
    base = 2.0 + 3.0 * np.exp(-r / 60.0)
    rings = sum(a * np.exp(-0.5 * ((r - r0) / 1.2) ** 2) for r0, a in ((18, 40.0), (33, 25.0), (49, 30.0)))
    truth = np.repeat((base + rings)[None], n_frames, axis=0)
    truth *= np.linspace(0.8, 1.2, n_frames)[:, None, None]
    spot = (slice(95, 98), slice(20, 23))
    truth[(spot_frame,) + spot] += 30.0
    return truth, spot


def poisson_frames(truth, seed=1):
    raw = np.random.default_rng(seed).poisson(truth).astype(np.uint32)
    raw[..., 70:72] = SENTINEL  # a detector gap
    return raw


@pytest.fixture(scope="module")
def data():
    truth, spot = ring_truth()
    return truth, poisson_frames(truth), spot


def test_identity_passes(data):
    truth, raw, _ = data
    r = qc.poisson_residuals(raw, truth)
    assert np.isnan(r[..., 70:72]).all() and np.isfinite(r[..., :70]).all()
    st = qc.residual_stats(r)
    assert abs(st["mean"]) < 0.02 and abs(st["var"] - 1) < 0.03
    chi2 = qc.chi2_per_frame(raw, truth)
    assert chi2.shape == (6,) and np.all(np.abs(chi2 - 1) < 0.05)
    fc = qc.frame_checks(raw, truth, center=CENTER)
    assert not fc.flags().any()
    assert np.all(np.abs(fc.block[4]["chi2"] - 1) < 0.2)
    assert np.all(np.abs(fc.ring["chi2"] - 1) < 0.5)


def test_blur_is_flagged(data):
    truth, raw, _ = data
    blurred = ndimage.gaussian_filter(truth, (0, 2, 2))
    fc = qc.frame_checks(raw, blurred, center=CENTER)
    assert fc.flags().all()
    assert np.all(fc.ring["chi2"] > 3)
    # the pixel chi-square alone also sees it, but less strongly than the ring sums
    assert np.all(fc.ring["chi2"] > fc.chi2)
    assert any("rings" in s for s in fc.reasons(0))


def test_removed_peak_is_flagged_only_in_its_frame(data):
    truth, raw, spot = data
    lost = truth.copy()
    lost[(2,) + spot] = truth[(1,) + spot] * truth[2, 0, 0] / truth[1, 0, 0]  # spot set to background
    fc = qc.frame_checks(raw, lost, center=CENTER)
    flags = fc.flags()
    assert flags[2] and flags.sum() == 1
    # nine pixels of 16k barely move the pixel chi-square: the block tail test is what catches it
    assert abs(fc.chi2[2] - 1) < 0.25
    assert fc.block[4]["p_min"][2] < 1e-6
    assert any("blocks departs" in s for s in fc.reasons(2))


def test_invented_peak_is_flagged(data):
    truth, raw, _ = data
    fake = truth.copy()
    fake[4, 10:13, 100:103] += 25.0
    flags = qc.frame_checks(raw, fake).flags()
    assert flags[4] and flags.sum() == 1


def test_copying_the_noise_is_flagged(data):
    truth, raw, _ = data
    rawf = np.where(raw == SENTINEL, 0, raw).astype(np.float64)
    half = 0.5 * rawf + 0.5 * truth  # follows half of the noise: chi2 about 0.25
    fc = qc.frame_checks(raw, half)
    assert np.all(fc.chi2 < 0.4) and fc.flags().all()
    assert "follows the noise" in " ".join(fc.reasons(0))


def test_flag_frames_from_chi2_values():
    f = qc.flag_frames(np.array([1.0, 1.1, 1.6, 0.5, np.nan]), tol=0.25)
    assert f.tolist() == [False, False, True, True, False]


def test_profile_bias_flags_a_lost_ring(data):
    truth, raw, _ = data
    yy, xx = np.indices(truth.shape[1:], dtype=np.float64)
    r = np.hypot(yy - CENTER[0], xx - CENTER[1])
    lost = truth - 25.0 * np.exp(-0.5 * ((r - 33) / 1.2) ** 2)[None] * np.linspace(0.8, 1.2, 6)[:, None, None]
    ok = qc.profile_bias(raw, truth, center=CENTER)
    assert ok["kind"] == "radial" and ok["n_flagged"] == 0
    bad = qc.profile_bias(raw, lost, center=CENTER)
    fx = bad["x"][bad["flagged"]]
    assert bad["n_flagged"] >= 1 and np.all(np.abs(fx - 33) < 4)
    assert bad["max_abs_z"] > 10 and bad["rel_error"] > 3 * ok["rel_error"]
    # without a centre: the column projection still sees the missing flux
    proj = qc.profile_bias(raw, lost)
    assert proj["n_flagged"] > 0 and qc.profile_bias(raw, truth)["n_flagged"] == 0


def test_profile_bias_on_spectra():
    rng = np.random.default_rng(3)
    ch = np.arange(512)
    spec = 5 + 200 * np.exp(-0.5 * ((ch - 200) / 3) ** 2)
    truth = np.repeat(spec[None], 4, 0)
    raw = rng.poisson(truth).astype(np.int64)
    assert qc.profile_bias(raw, truth, frame_ndim=1)["n_flagged"] == 0
    wrong = truth.copy()
    wrong[:, 190:211] = 5.0
    res = qc.profile_bias(raw, wrong, frame_ndim=1)
    assert res["kind"] == "spectrum" and res["n_flagged"] > 3


def test_noreference_split_ranks_denoisers():
    rng = np.random.default_rng(5)
    yy, xx = np.indices((64, 64))
    truth = np.repeat((8 + 6 * np.sin(yy / 9.0) * np.cos(xx / 11.0))[None], 4, 0)
    raw = rng.poisson(truth).astype(np.uint32)
    s_raw = qc.noreference_score("raw", raw)["score"]
    s_gauss = qc.noreference_score(lambda c, v: ndimage.gaussian_filter(c, (0, 2, 2)), raw)["score"]
    s_oracle = qc.noreference_score(lambda c, v: truth, raw)["score"]  # truth at the full dose
    assert s_oracle < s_gauss < s_raw
    j_raw = qc.noreference_score("raw", raw, mode="jinv")
    j_gauss = qc.noreference_score(lambda c, v: ndimage.gaussian_filter(c, (0, 2, 2)), raw, mode="jinv")
    assert j_gauss["score"] < j_raw["score"] and j_gauss["n_pixels"] == raw.size
    with pytest.raises(XRDError, match="mode"):
        qc.noreference_score("raw", raw, mode="nope")


def test_write_report_from_stack(tmp_path, data):
    truth, raw, _ = data
    stack = ScanStack.from_array(raw.reshape(2, 3, 128, 128))
    den = ndimage.gaussian_filter(truth, (0, 2, 2)).reshape(2, 3, 128, 128).astype(np.float32)
    den[..., 70:72] = np.nan
    jp, pp = qc.write_report(stack, den, np.ones((128, 128), bool), tmp_path / "out.h5", center=CENTER)
    assert jp.name == "out.h5.qc.json" and pp.name == "out.h5.qc.png"
    rep = json.loads(jp.read_text())
    assert rep["n_frames"] == 6 and len(rep["frames"]["chi2"]) == 6
    assert all(rep["flags"]) and rep["profile"]["kind"] == "radial" and rep["profile"]["n_flagged"] > 0
    assert pp.stat().st_size > 10_000 and pp.read_bytes()[:4] == b"\x89PNG"
    jp2, _ = qc.write_report(raw, truth, None, tmp_path / "ok.npy")
    rep2 = json.loads(jp2.read_text())
    assert not any(rep2["flags"]) and abs(rep2["residuals"]["var"] - 1) < 0.05
    assert sum(rep2["residuals"]["hist_counts"]) + rep2["residuals"]["below"] + rep2["residuals"]["above"] == \
        rep2["residuals"]["n"]


def test_shape_mismatch_is_one_line_error(data):
    truth, raw, _ = data
    with pytest.raises(XRDError, match="shape"):
        qc.chi2_per_frame(raw, truth[:3])


def test_noreference_score_of_a_trained_model():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_xrd_denoise.config import Config
    from napari_xrd_denoise.training import Trainer

    truth, _ = ring_truth(shape=(64, 80), n_frames=4)
    raw = poisson_frames(truth)
    stack = ScanStack.from_array(raw)
    cfg = Config().replace(method__name="n2n-split", epochs=1, steps_per_epoch=3, patch_size=32,
                           device="cpu", threads=1, val_fraction=0.0, preview_every=0)
    model = Trainer(cfg, stack).run()
    s = qc.noreference_score(model, stack, max_frames=2)
    j = qc.noreference_score(model, stack, mode="jinv", width=2, max_frames=1)
    assert s["frames"] == [0, 3] and math.isfinite(s["score"]) and s["n_pixels"] > 0
    assert math.isfinite(j["score"]) and j["n_pixels"] == 64 * 78  # the gap columns are left out
