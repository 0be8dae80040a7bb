"""1D spectra on real data: Noise2Noise over 4 repeated XRF spectra beats their plain mean.

Full numbers: benchmarks/xrf_n2n.py. Here a reduced run (a third of the training steps).
"""

from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
CSV = REAL / "xrf_spectra" / "05_xrf_spectra.csv"


@pytest.fixture(scope="module")
def spectra():
    if not CSV.is_file():
        pytest.skip(f"real data not found: {CSV}")
    a = np.loadtxt(CSV, delimiter=",", skiprows=1)
    return a[:, 1:-1]  # drop the index column and the overflow bin


def rmse(x, ref):
    return float(np.sqrt(np.mean((x - ref) ** 2)))


def test_reference_numbers(spectra):
    assert spectra.shape == (32, 4095)
    ref = spectra.mean(axis=0)
    assert rmse(spectra[0], ref) == pytest.approx(2.32, abs=0.01)
    assert rmse(spectra[:4].mean(axis=0), ref) == pytest.approx(1.16, abs=0.01)


def test_n2n_frames_1d_beats_the_plain_mean_of_4(spectra):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_xrd_denoise.config import Config
    from napari_xrd_denoise.inference import predict_stack
    from napari_xrd_denoise.io.stack import ScanStack
    from napari_xrd_denoise.training import Trainer

    cfg = Config().replace(
        method__name="n2n-frames", n2n_strategy="1:X", loss="poisson", ndim=1, arch="dncnn", dncnn_layers=8,
        width=16, epochs=10, steps_per_epoch=20, train__batch_size=4, patch_size=4096, lr=3e-3, weight_decay=0.0,
        val_fraction=0.0, patience=0, threads=1, device="cpu", seed=0,
    )
    stack = ScanStack.from_array(spectra[:4].astype(np.uint32), frame_ndim=1)
    model = Trainer(cfg, stack).run()
    out = predict_stack(model, stack)
    assert out.shape == (4, 4095) and np.isfinite(out).all() and (out >= 0).all()
    den = out.mean(axis=0)
    mean4 = spectra[:4].mean(axis=0)
    ref32 = spectra.mean(axis=0)
    ref28 = spectra[4:].mean(axis=0)  # independent of the 4 inputs
    assert rmse(den, ref32) < 0.9 * rmse(mean4, ref32)
    assert rmse(den, ref28) < 0.9 * rmse(mean4, ref28)
    # counts are kept: total flux within 2 % of the inputs'
    assert abs(den.sum() / mean4.sum() - 1.0) < 0.02


def test_spectra_defaults_never_replace_explicit_choices(tmp_path):
    """1D data get the spectra defaults (1D DnCNN, whole spectra, batch 4) where the user chose nothing,
    but a choice that happens to equal the generic default (arch unet, batch 8) is kept."""
    import napari_xrd_denoise as xd
    from napari_xrd_denoise.cli import main

    spec = np.random.default_rng(0).poisson(5.0, size=(4, 256))
    m = xd.train(spec, ndim=1, arch="unet", train__batch_size=8, epochs=1, steps=2, device="cpu")
    assert (m.config.model.arch, m.config.train.batch_size) == ("unet", 8)
    m = xd.train(spec, ndim=1, epochs=1, steps=2, device="cpu")
    assert (m.config.model.arch, m.config.train.batch_size) == ("dncnn", 4)
    np.save(tmp_path / "s.npy", spec)
    assert main(["train", str(tmp_path / "s.npy"), "--ndim", "1", "--arch", "unet", "--epochs", "1", "--steps", "2",
                 "-m", str(tmp_path / "m.pt"), "-q"]) == 0
    assert xd.load_model(tmp_path / "m.pt", device="cpu").config.model.arch == "unet"
