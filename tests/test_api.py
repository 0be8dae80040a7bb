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
