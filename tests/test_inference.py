"""Streaming inference: tiling without seams, chunking, invalid pixels, cancel, writers, resume."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_xrd_denoise.config import Config
from napari_xrd_denoise.errors import Cancelled
from napari_xrd_denoise.inference import predict_stack
from napari_xrd_denoise.io.stack import ScanStack
from napari_xrd_denoise.methods.base import Normalizer
from napari_xrd_denoise.model_file import DenoiserModel, run_network
from napari_xrd_denoise.models import DnCNN, UNet, build_model

torch.set_num_threads(1)
CPU = torch.device("cpu")


def random_net(net, seed=0, std=0.2):
    torch.manual_seed(seed)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=std)
    return net.eval()


def make_model(name="n2s", ndim=2, arch="unet", **kw):
    cfg = Config().replace(name=name, arch=arch, width=4, depth=2, dncnn_layers=4, data__ndim=ndim, **kw)
    in_ch = 1
    net = random_net(build_model(cfg.model, ndim, in_channels=in_ch), std=0.1)
    return DenoiserModel(cfg, net, Normalizer(mean=3.0, std=1.0).to_dict(), device=CPU)


def frames_with_gap(n=5, shape=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    f = rng.poisson(4.0, size=(n,) + shape).astype(np.uint32)
    f[:, :, 10:12] = 2**32 - 1  # a gap column pair
    f[1, 5, 5] = 2**32 - 1  # one dead pixel in one frame
    return f


# --- tiling ------------------------------------------------------------------------------------------
def test_tiled_equals_untiled_for_fully_convolutional_net():
    net = random_net(DnCNN(2, 1, layers=4, width=6, residual=True))  # receptive field 9x9
    x = np.random.default_rng(0).normal(size=(2, 1, 100, 90)).astype(np.float32)
    full = run_network(net, x, device=CPU, batch_size=3, tile=512, overlap=0)
    tiled = run_network(net, x, device=CPU, batch_size=3, tile=32, overlap=16)
    assert tiled.shape == full.shape == (2, 100, 90)
    np.testing.assert_allclose(tiled[:, 4:-4, 4:-4], full[:, 4:-4, 4:-4], atol=1e-5)
    np.testing.assert_allclose(tiled, full, atol=1e-5)  # the frame border is padded identically too


def test_tiled_1d_and_unet_blend_smoothly():
    net = random_net(DnCNN(1, 1, layers=3, width=4))
    x = np.random.default_rng(1).normal(size=(1, 1, 300)).astype(np.float32)
    np.testing.assert_allclose(
        run_network(net, x, device=CPU, tile=64, overlap=16), run_network(net, x, device=CPU, tile=1024, overlap=0), atol=1e-5
    )
    unet = random_net(UNet(2, 1, depth=2, width=4, residual=False), std=0.1)
    xs = np.random.default_rng(2).normal(size=(1, 1, 96, 96)).astype(np.float32)
    full = run_network(unet, xs, device=CPU, tile=512, overlap=0)
    tiled = run_network(unet, xs, device=CPU, tile=64, overlap=32)
    # the U-Net sees further than the overlap: close, not identical, and no jump at tile seams
    err = np.abs(tiled - full)[0, 8:-8, 8:-8]
    assert err.mean() < 0.1 * np.abs(full).mean()


# --- predict_stack -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["n2s", "n2n-split"])
def test_predict_stack_chunks_invalid_and_progress(name):
    m = make_model(name)
    raw = frames_with_gap()
    stack = ScanStack.from_array(raw)
    calls = []
    m.config.infer.chunk_frames = 2
    m.config.infer.batch_size = 3
    a = predict_stack(m, stack, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (0, 5) and calls[-1] == (5, 5) and len(calls) == 4
    infer = Config().infer
    infer.chunk_frames, infer.batch_size = 5, 1
    b = predict_stack(m, stack, infer=infer)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert a.shape == raw.shape and a.dtype == np.float32
    assert np.isnan(a[:, :, 10:12]).all() and np.isnan(a[1, 5, 5]) and not np.isnan(a[0, 5, 5])
    ok = ~np.isnan(a)
    assert np.all(a[ok] >= 0) and ok.sum() == a.size - 5 * 40 * 2 - 1


@pytest.mark.parametrize("name", ["n2s", "n2n-split"])
def test_invalid_raw_values_do_not_change_the_output(name):
    m = make_model(name)
    raw = frames_with_gap(n=2)
    a = m.denoise_frames(raw)
    raw2 = raw.copy()
    # the invalid pixels hold other (plausible-looking) values, still invalid through the validity mask
    raw2[:, :, 10:12] = 987654
    raw2[1, 5, 5] = 3
    valid = np.ones(raw.shape, bool)
    valid[:, :, 10:12] = False
    valid[1, 5, 5] = False
    b = m.denoise_frames(raw2, valid=valid)
    np.testing.assert_allclose(a, b, atol=1e-5, equal_nan=True)
    assert np.isnan(b[:, :, 10:12]).all()


def test_j_invariant_and_tta_inference():
    m = make_model("n2s", masking="grid", mask_width=3)
    raw = frames_with_gap(n=2)
    stack = ScanStack.from_array(raw)
    single = predict_stack(m, stack)
    infer = Config().infer
    infer.j_invariant = True
    jinv = predict_stack(m, stack, infer=infer)
    infer.j_invariant, infer.tta = False, True
    tta = predict_stack(m, stack, infer=infer)
    for out in (jinv, tta):
        assert np.array_equal(np.isnan(out), np.isnan(single))
        assert not np.allclose(out, single, equal_nan=True)


def test_cancel_stops_and_raises():
    m = make_model("n2s")
    stack = ScanStack.from_array(frames_with_gap(n=6))
    ev = threading.Event()
    seen = []

    def progress(d, t):
        seen.append(d)
        if d >= 2:
            ev.set()

    m.config.infer.chunk_frames = 2
    with pytest.raises(Cancelled):
        predict_stack(m, stack, progress=progress, cancel=ev)
    assert max(seen) == 2


def test_1d_stack_prediction():
    m = make_model("n2n-frames", ndim=1)
    spectra = np.random.default_rng(0).poisson(5.0, size=(3, 4, 200)).astype(np.int32)
    spectra[0, 0, 7] = -1  # a Pilatus-style invalid value
    out = predict_stack(m, ScanStack.from_array(spectra, frame_ndim=1))
    assert out.shape == spectra.shape and np.isnan(out[0, 0, 7]) and np.isfinite(out).sum() == out.size - 1


# --- writers -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npy", ".h5"])
def test_streams_to_file_and_cancel_leaves_nothing(tmp_path, suffix):
    writers = pytest.importorskip("napari_xrd_denoise.io.writers")
    m = make_model("n2s")
    raw = frames_with_gap(n=5)
    stack = ScanStack.from_array(raw)
    mem = predict_stack(m, stack)
    out = tmp_path / f"den{suffix}"
    m.config.infer.chunk_frames = 2
    assert predict_stack(m, stack, out) == out
    if suffix == ".npy":
        got = np.load(out)
    else:
        import h5py

        with h5py.File(out, "r") as f:
            name = [k for k in ("entry/data/data", "entry/denoised/data", "data") if k in f]
            ds = f[name[0]] if name else None
            if ds is None:
                found = []
                f.visititems(lambda k, v: found.append(k) if hasattr(v, "shape") and v.shape == raw.shape else None)
                ds = f[found[0]]
            got = ds[()]
    np.testing.assert_allclose(got, mem, atol=1e-6, equal_nan=True)

    ev = threading.Event()
    out2 = tmp_path / f"cancelled{suffix}"
    with pytest.raises(Cancelled):
        predict_stack(m, stack, out2, cancel=ev, progress=lambda d, t: ev.set() if d >= 2 else None)
    assert not out2.exists() and not writers.part_path(out2).exists()


def test_resume_continues_an_interrupted_output(tmp_path):
    writers = pytest.importorskip("napari_xrd_denoise.io.writers")
    from napari_xrd_denoise.inference import default_provenance

    m = make_model("n2s")
    raw = frames_with_gap(n=5)
    stack = ScanStack.from_array(raw)
    mem = predict_stack(m, stack)
    out = tmp_path / "r.npy"
    w = writers.ResultWriter(out, stack.shape, 2, provenance=default_provenance(m, stack, m.config.infer))
    marker = mem[:2] + 1000.0
    w.write(0, marker, ~np.isnan(mem[:2]))
    w._mm = None  # a killed run: no close(), no abort(); the OS drops its lock
    w._lockf._f.close()  # the process died: its file descriptors closed, the lock file left
    w._lockf = None
    assert writers.part_path(out).exists() and not out.exists()
    calls = []
    predict_stack(m, stack, out, resume=True, progress=lambda d, t: calls.append(d))
    assert calls[0] == 2 and calls[-1] == 5
    got = np.load(out)
    np.testing.assert_allclose(got[:2], marker, equal_nan=True)  # kept, not recomputed
    np.testing.assert_allclose(got[2:], mem[2:], atol=1e-6, equal_nan=True)


def test_out_of_memory_retries_with_smaller_batch_and_tile(caplog):
    """A device that runs out of memory for batches > 1 or tiles > 64 px: the result equals the plain run."""
    import logging

    from napari_xrd_denoise.model_file import run_network

    class Picky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            if x.shape[0] > 1 or x.shape[-1] > 64:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.conv(x)

    torch.manual_seed(0)
    net = Picky()
    x = np.random.default_rng(0).normal(size=(3, 1, 100, 100)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="napari_xrd_denoise"):
        out = run_network(net, x, device=torch.device("cpu"), batch_size=4, tile=128, overlap=16)
    assert "out of memory" in caplog.text and "batch 1" in caplog.text and "tile 64" in caplog.text
    with torch.no_grad():
        ref = net.conv(torch.from_numpy(x))[:, 0].numpy()
    inner = (slice(None), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(out[inner], ref[inner], atol=1e-4)


def _conv_model(weight: float, bias: float) -> DenoiserModel:
    """A 1x1 convolution as the network: weight 1, bias 0 is the identity; weight 0 a constant output."""
    cfg = Config().replace(name="n2s", width=4, depth=2)
    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(weight)
        net.bias.fill_(bias)
    return DenoiserModel(cfg, net.eval(), Normalizer(mean=3.0, std=1.0).to_dict(), device=CPU)


def test_an_output_that_lost_the_counts_is_reported(caplog):
    """A network that returns (nearly) nothing on integer counts, as an undertrained one did on very sparse
    frames, gives a warning naming the stack and the fraction of counts kept; an identity network does not."""
    stack = ScanStack.from_array(frames_with_gap(n=4), source="sparse.h5")
    c, v = stack.counts(stack.frames(0, 4))
    assert np.where(v, c, 0).sum() > 1000
    notes: list[str] = []
    with caplog.at_level("WARNING", logger="napari_xrd_denoise"):
        out = predict_stack(_conv_model(0.0, -50.0), stack, notes=notes)
    assert np.nansum(out) == 0
    assert len(notes) == 1 and "sparse.h5" in notes[0] and "hold 0%" in notes[0] and "\n" not in notes[0]
    assert any(r.levelname == "WARNING" and "hold 0%" in r.getMessage() for r in caplog.records)
    notes.clear()
    out = predict_stack(_conv_model(1.0, 0.0), stack, notes=notes)
    assert notes == [] and 0.9 < np.nansum(out) / np.where(v, c, 0).sum() < 1.1
    # float data (calibrated, perhaps background-subtracted) are not judged by counts
    fl = ScanStack.from_array(np.where(v, c, np.nan).astype(np.float32))
    predict_stack(_conv_model(0.0, -50.0), fl, notes=notes)
    assert notes == []


def test_a_failure_hidden_by_the_flux_correction_is_still_reported():
    """A network that returns a tenth of the counts: the whole-frame correction restores the totals, but
    the warning (taken before it) still says the model did not learn the signal level."""
    f = np.random.default_rng(1).poisson(8.0, size=(3, 64, 64)).astype(np.uint32)  # > 10 000 counts a frame
    stack = ScanStack.from_array(f, source="bright.h5")
    net = torch.nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
        net.bias.fill_(-0.83)  # a flat output of about 0.8 counts where the data hold 8
    model = DenoiserModel(Config().replace(name="n2s", width=4, depth=2), net.eval(),
                          Normalizer(mean=3.0, std=1.0).to_dict(), device=CPU)
    notes: list[str] = []
    out = predict_stack(model, stack, notes=notes)
    assert np.allclose(np.nansum(out, axis=(1, 2)), f.sum(axis=(1, 2)), rtol=1e-4)  # totals corrected
    assert len(notes) == 1 and "bright.h5" in notes[0] and "network's own output" in notes[0]
