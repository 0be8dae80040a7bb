"""The Python API verbs on small synthetic scans."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import napari_xrd_denoise as xd
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.synthetic import make_scan

FAST = dict(epochs=1, train__steps_per_epoch=4, train__batch_size=2, patch_size=32, width=8, depth=2,
            device="cpu", seed=0)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_train_predict_round_trip_and_lazy_verbs(tmp_path):
    scan = make_scan(scan_shape=(2, 2), frame_shape=(48, 48), dose="mid", seed=3)
    model = xd.train(scan.counts, method="n2s", model_path=tmp_path / "m.pt", **FAST)
    again = xd.load_model(tmp_path / "m.pt", device="cpu")
    a = xd.predict(scan.counts, model)
    b = xd.predict(scan.counts, again)
    assert a.shape == scan.counts.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
    gaps = scan.counts == 2**32 - 1
    assert np.isnan(a[gaps]).all() and np.isfinite(a[~gaps]).all()
    # predict reads the data as the call says (ndim=1: rows of spectra), and a 2D model refuses spectra
    spectra = tmp_path / "spectra.npy"
    np.save(spectra, np.random.default_rng(0).poisson(3.0, size=(8, 1024)).astype(np.uint16))
    with pytest.raises(XRDError, match="denoises 2D frames but the data have 1D frames"):
        xd.predict(spectra, model, ndim=1)
    # the call's saturation describes these data (it was the model's, silently)
    sat = xd.predict(scan.counts, model, saturation=5)
    assert np.isnan(sat[scan.counts >= 5]).all() and np.isfinite(sat[scan.counts < 5]).all()


def test_neighbors_refinement_runs_in_denoise_only(tmp_path):
    scan = make_scan(scan_shape=(3, 3), frame_shape=(32, 32), dose="mid", seed=4)
    with pytest.raises(XRDError, match="--cycles 2"):
        xd.train(scan.counts, method="neighbors", cycles=2, **FAST)
    out = xd.denoise(scan.counts, tmp_path / "ref.h5", method="neighbors", cycles=2, warmup_epochs=0,
                     model_path=tmp_path / "nb.pt", **FAST)
    with h5py.File(out, "r") as f:
        den = f["entry/data/data"][()]
        assert "refinement_cycles" in str(dict(f["entry/provenance"].attrs)) or "entry/provenance" in f
    assert den.shape == scan.counts.shape
    gaps = scan.counts == 2**32 - 1
    assert np.isnan(den[gaps]).all()
    assert (tmp_path / "nb.pt.cycle1.pt").exists() and (tmp_path / "nb.pt.cycle2.pt").exists()


def _psnr_sqrt(est, truth, valid):
    e, t = np.sqrt(np.maximum(est[valid], 0)), np.sqrt(truth[valid])
    return 10 * np.log10(t.max() ** 2 / np.mean((e - t) ** 2))


def test_a_config_passed_in_is_not_changed_and_serves_another_dataset():
    a = make_scan(scan_shape=(2,), frame_shape=(48, 48), dose="mid", seed=1, center=(20.0, 26.0))
    cfg = xd.Config().replace(**FAST)
    before = cfg.to_dict()
    xd.train(xd.ScanStack.from_array(a.counts, beam_center=(20.0, 26.0)), cfg)
    assert cfg.to_dict() == before  # method stays 'auto', no centre taken from the first data


def test_predict_takes_the_centre_and_data_options_of_its_own_call(tmp_path, caplog):
    """A model applied to new data: their own beam centre (metadata) or center= places the symmetry
    partner and the flux correction, not the training data's; crop and mask of the training are not re-applied."""
    a = make_scan(scan_shape=(2,), frame_shape=(64, 64), dose="mid", seed=1, center=(28.0, 30.0))
    b = make_scan(scan_shape=(2,), frame_shape=(64, 64), dose="mid", seed=2, center=(36.5, 33.0))
    sa = xd.ScanStack.from_array(a.counts, beam_center=(28.0, 30.0))
    model = xd.train(sa, method="symmetry", **FAST)
    assert tuple(model.config.method.center) == (28.0, 30.0)
    sb = xd.ScanStack.from_array(b.counts, beam_center=(36.5, 33.0))
    with caplog.at_level("INFO", logger="napari_xrd_denoise"):
        out = xd.predict(sb, model, tmp_path / "b.h5")
    assert any("(36.5, 33.0) from" in r.getMessage() and "not the model's" in r.getMessage() for r in caplog.records)
    with h5py.File(out, "r") as f:
        prov = f["entry/provenance"].attrs
        used = xd.Config.from_dict(__import__("json").loads(prov["config"])).method.center
    assert tuple(used) == (36.5, 33.0)
    assert tuple(model.config.method.center) == (28.0, 30.0)  # the model itself is left as it was
    assert tuple(model.with_center((36.5, 33.0)).method.center((64, 64))) == (36.5, 33.0)
    # an explicit centre wins over the data's own
    out2 = xd.predict(sb, model, tmp_path / "b2.h5", center=[30.0, 31.0])
    with h5py.File(out2, "r") as f:
        used = xd.Config.from_dict(__import__("json").loads(f["entry/provenance"].attrs["config"])).method.center
    assert tuple(used) == (30.0, 31.0)
    # data without a centre of their own: the symmetry model's, with a warning, and recorded as used
    caplog.clear()
    with caplog.at_level("WARNING", logger="napari_xrd_denoise"):
        out3 = xd.predict(b.counts, model, tmp_path / "b3.h5")
    assert any("no beam centre of its own" in r.getMessage() and "(28.0, 30.0)" in r.getMessage()
               for r in caplog.records)
    with h5py.File(out3, "r") as f:
        used = xd.Config.from_dict(__import__("json").loads(f["entry/provenance"].attrs["config"])).method.center
    assert tuple(used) == (28.0, 30.0)
    # a non-symmetry model's centre describes its training data: data without one get the whole-frame correction
    m1 = xd.train(sa, method="n2n-split", **FAST)
    assert tuple(m1.config.method.center) == (28.0, 30.0)
    with h5py.File(xd.predict(b.counts, m1, tmp_path / "nc.h5"), "r") as f:
        assert f["entry/provenance"].attrs["flux_correction"].startswith("whole frame")
    with h5py.File(xd.predict(sb, m1, tmp_path / "c.h5"), "r") as f:
        assert f["entry/provenance"].attrs["flux_correction"].startswith("along the rings")
    # crop and mask given at training describe those data only
    m2 = xd.train(a.counts, method="n2s", crop=[0, 48, 0, 48], **FAST)
    assert xd.predict(b.counts, m2).shape == b.counts.shape


def test_in_memory_masks_shapes_and_stacks(tmp_path):
    scan = make_scan(scan_shape=(3,), frame_shape=(48, 48), dose="mid", seed=3, gaps=False, beam_stop=False,
                     n_dead=0, n_hot=0)
    excluded = np.zeros((48, 48), bool)
    excluded[10:20, 5:9] = True
    model = xd.train(scan.counts, method="n2s", mask=excluded, **FAST)
    out = xd.predict(scan.counts, model, mask=excluded)
    assert np.isnan(out[:, excluded]).all() and np.isfinite(out[:, ~excluded]).all()
    with pytest.raises(XRDError, match=r"mask shape \(4, 4\)"):
        xd.predict(scan.counts, model, mask=np.zeros((4, 4), bool))
    # a single frame comes back as a single frame
    one = xd.predict(scan.counts[0], model)
    assert one.shape == (48, 48)
    # options that describe the data apply to a ScanStack too
    st = xd.ScanStack.from_array(scan.counts)
    hi = np.nanpercentile(scan.counts, 99)
    sat = xd.predict(st, model, saturation=hi)
    assert np.isnan(sat[scan.counts >= hi]).all() and np.isfinite(sat[scan.counts < hi]).all()
    with pytest.raises(XRDError, match="ndim=1"):
        xd.predict(st, model, ndim=1)
    with pytest.raises(XRDError, match="model: a trained model"):
        xd.predict(scan.counts, None)
    # a saved model is not replaced unless asked
    path = tmp_path / "m.pt"
    xd.train(scan.counts, method="n2s", model_path=path, **FAST)
    with pytest.raises(XRDError, match="exists"):
        xd.train(scan.counts, method="n2s", model_path=path, **FAST)
    xd.train(scan.counts, method="n2s", model_path=path, overwrite=True, **FAST)
    assert xd.Config().replace(scan_shape=3).data.scan_shape == [3]


@pytest.mark.parametrize("refined", [False, True])
def test_a_second_training_on_the_same_model_file_is_refused(tmp_path, refined):
    """Two trainings saving one model file wrote one checkpoint in turn (a later --resume continued
    whichever wrote last) and the file held whichever finished last. While one trains (train, or denoise
    with refinement cycles), a second on the same model file is refused in one line; afterwards the file
    can be trained again."""
    scan = make_scan(scan_shape=(2, 2), frame_shape=(48, 48), dose="mid", seed=3)
    path = tmp_path / "m.pt"
    refused = []

    def run(callback=None, overwrite=False):
        if refined:
            return xd.denoise(scan.counts, method="neighbors", cycles=2, model_path=path, callback=callback,
                              overwrite=overwrite, **FAST)
        return xd.train(scan.counts, method="n2s", model_path=path, callback=callback, overwrite=overwrite,
                        **FAST)

    def second_run(event):
        if event.kind == "step" and not refused:
            with pytest.raises(XRDError, match="another training is writing this model now") as e:
                run(overwrite=True)
            refused.append(str(e.value))

    run(second_run)
    assert refused and "\n" not in refused[0] and str(path) in refused[0]
    assert path.exists() and not (tmp_path / "m.pt.lock").exists()
    run(overwrite=True)


def test_a_config_given_where_the_output_goes_is_one_line():
    """denoise(source, output, config): a Config passed second is an error naming the output and
    config=, not a traceback from inside the writer."""
    scan = make_scan(scan_shape=(2,), frame_shape=(48, 48), dose="mid", seed=3)
    with pytest.raises(XRDError, match=r"output: a file path or None, not Config; pass a configuration as config="):
        xd.denoise(scan.counts, xd.Config(), epochs=1)
    with pytest.raises(XRDError, match="output: a file path or None, not dict"):
        xd.denoise(scan.counts, {"train": {}})


def test_a_blank_scan_is_refused_before_training():
    """All-zero frames have nothing to learn; a network trained on them invented counts (thousands from none)."""
    with pytest.raises(XRDError, match="holds 0: nothing to learn"):
        xd.denoise(np.zeros((4, 64, 64), np.uint32), **FAST)
    x = np.zeros((4, 64, 64), np.uint32)
    x[2, 5, 5] = 1  # one photon is data
    assert np.isfinite(xd.denoise(x, **FAST)).all()


def test_refinement_gets_the_flux_correction(tmp_path):
    """neighbors with refinement cycles: the result keeps the counts along the rings like every other run."""
    scan = make_scan(scan_shape=(3, 3), frame_shape=(32, 32), dose="mid", seed=4)
    stack = scan.to_stack()
    assert stack.beam_center is not None
    out = xd.denoise(stack, tmp_path / "ref.h5", method="neighbors", cycles=2, warmup_epochs=0, **FAST)
    with h5py.File(out, "r") as f:
        den = f["entry/data/data"][()]
        assert f["entry/provenance"].attrs["flux_correction"].startswith("along the rings")
    c, v = stack.counts(np.asarray(stack.flat().compute()))
    ok = v.reshape(den.shape) & np.isfinite(den)
    raw_tot = np.where(ok, c.reshape(den.shape), 0).sum(axis=(-2, -1))
    den_tot = np.where(ok, den, 0).sum(axis=(-2, -1))
    off = np.abs(den_tot / raw_tot - 1)
    plain = xd.denoise(stack, method="neighbors", cycles=2, warmup_epochs=0, preserve_profile=False, **FAST)
    plain_off = np.abs(np.where(ok, plain.reshape(den.shape), 0).sum(axis=(-2, -1)) / raw_tot - 1)
    assert off.max() < 0.01 and np.median(off) < np.median(plain_off), (off, plain_off)
