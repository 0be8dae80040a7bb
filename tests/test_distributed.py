"""Distributed inference on dask: same result as the single-process predictor, whatever way the frames travel."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from napari_xrd_denoise import api
from napari_xrd_denoise import distributed as D
from napari_xrd_denoise.config import Config
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.inference import predict_stack
from napari_xrd_denoise.io.readers import open_stack
from napari_xrd_denoise.io.stack import ScanStack
from napari_xrd_denoise.model_file import DenoiserModel
from napari_xrd_denoise.synthetic import make_scan, write_scan

torch.set_num_threads(1)

TINY = {"model__width": 4, "model__depth": 1, "train__epochs": 1, "train__steps_per_epoch": 2,
        "train__batch_size": 2, "train__patch_size": 32, "train__device": "cpu", "train__threads": 1,
        "train__val_fraction": 0.0, "infer__chunk_frames": 3, "infer__batch_size": 2}


@pytest.fixture(scope="module", autouse=True)
def _fast_worker_start():
    """Start dask worker processes from a fork server that has imported torch and this package once.

    Users get dask's default ("spawn"); the code that runs in the workers is the same, only the start-up
    of the test clusters is quicker on a small machine.
    """
    import dask
    from distributed.utils import get_mp_context

    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        ctx = get_mp_context()
        ctx.set_forkserver_preload(["distributed", "numpy", "dask.array", "h5py", "hdf5plugin", "scipy.ndimage",
                                    "torch", "napari_xrd_denoise.distributed", "napari_xrd_denoise.model_file",
                                    "napari_xrd_denoise.io.readers"])
        yield


@pytest.fixture(scope="module")
def cluster(_fast_worker_start):
    from distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                     scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, silence_logs=logging.ERROR)
    yield c.scheduler_address
    c.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An Eiger-style HDF5 scan of 8 frames of 64x64 (gaps, dead pixels) and two tiny trained models."""
    tmp = tmp_path_factory.mktemp("dist")
    scan = make_scan(scan_shape=(2, 4), frame_shape=(64, 64), dose="mid", seed=3)
    h5 = write_scan(tmp / "scan_master.h5", scan, external=False)
    stack = open_stack(h5)
    n2s = tmp / "n2s.pt"
    api.train(stack, Config().replace(method__name="n2s", **TINY), model_path=n2s)
    nb_scan = make_scan(scan_shape=(3, 3), frame_shape=(48, 48), dose="mid", seed=4)
    nb = tmp / "neighbors.pt"
    api.train(nb_scan.counts, Config().replace(method__name="neighbors", **TINY), model_path=nb)
    return {"h5": h5, "n2s": n2s, "neighbors": nb, "nb_counts": nb_scan.counts, "tmp": tmp}


def _model(path: Path) -> DenoiserModel:
    return DenoiserModel.load(path, device="cpu")


def test_file_stack_is_read_by_the_workers(cluster, files, tmp_path):
    model = _model(files["n2s"])
    stack = open_stack(files["h5"])
    spec = D.reopen_spec(stack)
    assert spec is not None and spec.scan_shape == (2, 4)  # the grid the file declares
    assert np.array_equal(spec.static_valid, stack.static_valid) and not stack.static_valid.all()
    ref = predict_stack(model, stack, infer=model.config.infer)
    seen = []
    out = D.predict_distributed(model, stack, tmp_path / "out.h5", infer=model.config.infer, scheduler=cluster,
                                progress=lambda d, n: seen.append((d, n)))
    with h5py.File(out, "r") as f:
        data = f["entry/data/data"][()]
        valid = f["entry/data/valid"][()].astype(bool)
        assert "read by the workers" in f["entry/provenance"].attrs["distributed"]
    np.testing.assert_array_equal(data, ref)
    assert np.array_equal(valid, np.isfinite(ref))
    assert np.isnan(ref.reshape(8, 64, 64)[:, ~stack.static_valid]).all()  # gaps stay invalid
    assert seen[0] == (0, 8) and seen[-1] == (8, 8) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert not (tmp_path / "out.h5.part").exists()


@pytest.mark.parametrize("ship", ["stack", "frames"])
def test_in_memory_stack(cluster, files, monkeypatch, ship):
    model = _model(files["n2s"])
    raw = np.asarray(open_stack(files["h5"]).data.compute()).reshape(2, 4, 64, 64)
    stack = ScanStack.from_array(raw)
    assert D.reopen_spec(stack) is None
    if ship == "frames":
        monkeypatch.setattr(D, "SHIP_STACK_BYTES", 0)  # too big to send whole: the client sends each chunk
    ref = predict_stack(model, stack, infer=model.config.infer)
    out = D.predict_distributed(model, stack, infer=model.config.infer, scheduler=cluster)
    assert out.shape == (2, 4, 64, 64) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("ship", ["stack", "frames"])
def test_neighbour_context_frames_reach_the_workers(cluster, files, monkeypatch, ship):
    """The neighbour method reads 8 other frames per frame; they must be the right ones on the worker."""
    model = _model(files["neighbors"])
    assert model.method.needs_context
    stack = ScanStack.from_array(files["nb_counts"])
    if ship == "frames":
        monkeypatch.setattr(D, "SHIP_STACK_BYTES", 0)
    inf = model.config.infer
    ref = predict_stack(model, stack, infer=inf)
    out = D.predict_distributed(model, stack, infer=inf, scheduler=cluster)
    np.testing.assert_array_equal(out, ref)
    # and a wrong context would show: shuffling the scan changes the result of a frame
    shuffled = ScanStack.from_array(files["nb_counts"][::-1].copy())
    other = predict_stack(model, shuffled, infer=inf)
    assert not np.allclose(other[::-1][1, 1], ref[1, 1], equal_nan=True)


def test_cropped_file_stack_is_sent_whole(cluster, files):
    model = _model(files["n2s"])
    stack = open_stack(files["h5"]).crop([4, 60, 0, 48])
    assert D.reopen_spec(stack) is None and D._pickled_size(stack) < D.SHIP_STACK_BYTES
    ref = predict_stack(model, stack, infer=model.config.infer)
    out = D.predict_distributed(model, stack, infer=model.config.infer, scheduler=cluster)
    np.testing.assert_array_equal(out, ref)


def test_unreadable_frame_on_a_worker_leaves_no_output(cluster, files, tmp_path):
    """A damaged chunk read by a worker becomes the reader's one-line error on the client; no output is left."""
    bad = tmp_path / "damaged.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("entry/data/data", data=np.full((8, 32, 32), 5, np.uint32), chunks=(1, 32, 32),
                         compression="gzip")
        info = f["entry/data/data"].id.get_chunk_info(2)  # frame 2: not among those checked at open
    with open(bad, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    model = _model(files["n2s"])
    stack = open_stack(bad)
    out = tmp_path / "fail.h5"
    with pytest.raises(XRDError) as e:
        D.predict_distributed(model, stack, out, infer=model.config.infer, scheduler=cluster)
    assert "damaged.h5" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and not (tmp_path / "fail.h5.part").exists()


def test_unreachable_scheduler_is_one_line(files):
    model = _model(files["n2s"])
    stack = open_stack(files["h5"])
    with pytest.raises(XRDError) as e:
        D.predict_distributed(model, stack, infer=model.config.infer, scheduler="tcp://127.0.0.1:9",
                              connect_timeout=1.0)
    msg = str(e.value)
    assert "\n" not in msg and "tcp://127.0.0.1:9" in msg and "--scheduler" in msg
    # an address that cannot be one is refused before any dask client exists (a half-made client used
    # to print dask's 'Exception ignored in Client.__del__' traceback after the error, 40 s later)
    from distributed import Client

    made = []
    real_init = Client.__init__

    def spy(self, *a, **k):
        made.append(a)
        real_init(self, *a, **k)

    import unittest.mock

    with unittest.mock.patch.object(Client, "__init__", spy):
        for bad in ("notanaddress", "tcp://host"):
            with pytest.raises(XRDError, match=f"--scheduler {bad}: not a dask scheduler address"):
                D.predict_distributed(model, stack, infer=model.config.infer, scheduler=bad, connect_timeout=1.0)
    assert not made


def test_cli_scheduler_address(cluster, files, tmp_path, monkeypatch, capsys):
    """``xrd-denoise predict ... --scheduler ADDRESS`` on an existing cluster; an unreachable one is one line."""
    from napari_xrd_denoise.cli import main

    out = tmp_path / "sched.npy"
    code = main(["predict", str(files["h5"]), "-m", str(files["n2s"]), "-o", str(out), "--scheduler", cluster, "-q"])
    assert code == 0, capsys.readouterr().err
    model = _model(files["n2s"])
    np.testing.assert_array_equal(np.load(out), predict_stack(model, open_stack(files["h5"]), infer=Config().infer))

    monkeypatch.setattr(D, "CONNECT_TIMEOUT_S", 1.0)
    code = main(["predict", str(files["h5"]), "-m", str(files["n2s"]), "-o", str(tmp_path / "x.h5"), "--scheduler",
                 "tcp://127.0.0.1:9", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "tcp://127.0.0.1:9" in err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.part").exists()


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.mark.parametrize("rel, kw", [
    ("ssrl_LaB6_Pilatus300KW_tth_scan/ssrl_LaB6_tth_scan_stack_DERIVED.h5", {}),
    ("arina_eiger_master_layout/test_00_master.h5", {}),
    ("merlin_4dstem/Merlin_navigation4x2_ROI.zip", {"scan_shape": (2, 4)}),
])
def test_real_files_can_be_reopened_by_workers(rel, kw):
    """The workers' recipe reopens the real files to the same stack (mask, scan grid, frames)."""
    path = REAL / rel
    if not path.exists():
        pytest.skip(f"real data not available: {rel}")
    stack = open_stack(path, **kw)
    spec = D.reopen_spec(stack)
    assert spec is not None
    other = spec.open()
    assert other.shape == stack.shape and other.dtype == stack.dtype
    mid = stack.n_frames // 2
    np.testing.assert_array_equal(other.frame(mid), stack.frame(mid))
    if stack.static_valid is not None:
        assert np.array_equal(other.static_valid, stack.static_valid)
    # a crop changes the frames: not reopenable, the stack itself (a small pickle) is sent instead
    cropped = stack.crop([0, 64, 0, 64])
    assert D.reopen_spec(cropped) is None and D._pickled_size(cropped) < D.SHIP_STACK_BYTES


def test_worker_device_pick(monkeypatch):
    import distributed

    class W:
        name = "worker-5"
        address = "tcp://x:1"

    monkeypatch.setattr(distributed, "get_worker", lambda: W())
    assert D.worker_index() == 5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert D.worker_device() == "cuda:1"
    W.name = 2  # LocalCluster names its workers 0..N-1
    assert D.worker_device() == "cuda:0"
    assert D.worker_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.worker_device() == "cpu"


def test_worker_task_in_process_loads_the_model_once(files):
    model = _model(files["n2s"])
    stack = open_stack(files["h5"])
    blob = D._model_bytes(model)
    key = D.hashlib.sha256(blob).hexdigest()
    spec = D.reopen_spec(stack)
    inf = {k: getattr(model.config.infer, k) for k in model.config.infer.__dataclass_fields__}
    D._MODELS.clear()
    rings = D.profile_rings(model, stack, model.config.infer)  # the file gives a beam centre: the client's ring map
    c0, a, _, _, _ = D.denoise_chunk(key, blob, spec, 3, 6, inf, "cpu", rings=rings)
    first = D._MODELS[(key, "cpu")]
    c0b, b, _, _, _ = D.denoise_chunk(key, blob, spec, 3, 6, inf, "cpu", rings=rings)
    assert D._MODELS[(key, "cpu")] is first and len(D._MODELS) == 1
    ref = predict_stack(model, stack, infer=model.config.infer).reshape(8, 64, 64)  # chunks are flat frames
    assert c0 == c0b == 3
    np.testing.assert_array_equal(a, ref[3:6])
    np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="damaged"):
        D.denoise_chunk("0" * 64, blob, spec, 0, 1, inf, "cpu")


def test_cli_predict_with_two_workers(files, tmp_path, capsys):
    """``xrd-denoise predict IN -m MODEL -o OUT.h5 --workers 2`` (the CLI's main, in this process)."""
    from napari_xrd_denoise.cli import main

    out = tmp_path / "cli.h5"
    code = main(["predict", str(files["h5"]), "-m", str(files["n2s"]), "-o", str(out), "--workers", "2",
                 "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    model = _model(files["n2s"])
    ref = predict_stack(model, open_stack(files["h5"]), infer=Config().infer)  # the CLI's inference options
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], ref)
        assert "local cluster of 2 worker" in f["entry/provenance"].attrs["distributed"]
    assert (tmp_path / "cli.h5.config.json").exists()


def test_worker_applies_the_default_flux_correction_like_the_single_process_path(files):
    """A model trained with a beam centre gets the flux correction along the rings by default, in the
    workers exactly as in ``predict_stack``."""
    model = _model(files["n2s"])
    model.config.method.center = [30.5, 33.0]
    stack = open_stack(files["h5"])
    blob = D._model_bytes(model)
    key = D.hashlib.sha256(blob).hexdigest()
    inf = {k: getattr(model.config.infer, k) for k in model.config.infer.__dataclass_fields__}
    assert inf["preserve_profile"] is None  # auto
    rings = D.profile_rings(model, stack, model.config.infer)  # the client's ring map, sent to the workers
    _, got, _, _, _ = D.denoise_chunk(key, blob, D.reopen_spec(stack), 0, 3, inf, "cpu", rings=rings)  # one chunk
    ref = predict_stack(model, stack, infer=model.config.infer).reshape(8, 64, 64)  # chunks are flat frames
    np.testing.assert_array_equal(got, ref[:3])
    off = predict_stack(model, stack, infer=Config().replace(infer__preserve_profile=False).infer).reshape(8, 64, 64)
    assert not np.allclose(np.nan_to_num(off[:3]), np.nan_to_num(ref[:3]))


def test_cluster_output_keeps_the_flux_correction_and_refuses_it_without_a_centre(cluster, files, tmp_path):
    model = _model(files["n2s"])
    model.config.method.center = [30.5, 33.0]
    stack = open_stack(files["h5"])
    ref = predict_stack(model, stack, infer=model.config.infer)
    out = D.predict_distributed(model, stack, tmp_path / "flux.h5", infer=model.config.infer, scheduler=cluster)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], ref)
        assert f["entry/provenance"].attrs["flux_correction"].startswith("along the rings")
    plain = _model(files["n2s"])  # no centre anywhere: asking for the correction is refused by the client
    plain.config.method.center = None  # (training copied the file's centre into the model)
    bare = ScanStack.from_array(np.asarray(stack.data.compute()))
    with pytest.raises(XRDError, match="--preserve-profile needs a geometry"):
        D.predict_distributed(plain, bare, infer=Config().replace(infer__preserve_profile=True).infer,
                              scheduler=cluster)


def test_interrupted_then_resumed_on_the_cluster(cluster, files, tmp_path):
    """A KeyboardInterrupt keeps the complete frames; resume=True continues there and equals one whole run."""
    model = _model(files["n2s"])
    stack = open_stack(files["h5"])
    ref = predict_stack(model, stack, infer=model.config.infer)
    out = tmp_path / "res.h5"

    def stop_after_some(done, n):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        D.predict_distributed(model, stack, out, infer=model.config.infer, scheduler=cluster,
                              progress=stop_after_some)
    part = tmp_path / "res.h5.part"
    assert not out.exists() and part.exists()
    with h5py.File(part, "r") as f:
        k = int(f["entry"].attrs["n_done"])
    assert 3 <= k < 8
    seen = []
    D.predict_distributed(model, stack, out, infer=model.config.infer, scheduler=cluster, resume=True,
                          progress=lambda d, n: seen.append(d))
    assert seen[0] == k  # no frame before k is denoised again
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], ref)
    assert not part.exists()


def test_an_output_that_lost_the_counts_is_reported_from_the_workers(cluster, files, caplog):
    """The workers count the input and output totals of their chunks; the client warns as predict_stack does."""
    model = _model(files["n2s"])
    with torch.no_grad():  # a network that returns nothing: zero weights, a very negative output bias
        params = list(model.net.parameters())
        for p in params:
            p.zero_()
        params[-1].fill_(-50.0)
    stack = open_stack(files["h5"])
    with caplog.at_level("WARNING", logger="napari_xrd_denoise"):
        out = D.predict_distributed(model, stack, infer=model.config.infer, scheduler=cluster)
    assert np.nansum(out) == 0
    assert any("hold 0%" in r.getMessage() and "scan_master.h5" in r.getMessage() for r in caplog.records)


def test_sparse_frames_get_the_same_flux_factor_on_the_workers(cluster, files):
    """Frames under MIN_FRAME_COUNTS counts are scaled by the scan's one flux factor (measured on frames
    spread over the scan, by the client): the cluster's output is bit for bit predict_stack's, and the
    sample frames (here all 8) hold the input's counts."""
    from napari_xrd_denoise.inference import MIN_FRAME_COUNTS

    model = _model(files["n2s"])
    model.config.method.center = None
    scan = make_scan(scan_shape=(2, 4), frame_shape=(64, 64), dose="low", seed=5, n_hot=0)
    stack = ScanStack.from_array(scan.counts, static_valid=scan.valid)
    counts = np.where(scan.valid, scan.counts, 0).reshape(8, -1).sum(axis=1)
    assert counts.max() < MIN_FRAME_COUNTS <= counts.sum()
    inf = model.config.infer
    ref = predict_stack(model, stack, infer=inf).reshape(8, 64, 64)
    off = predict_stack(model, stack, infer=Config().replace(infer__preserve_profile=False).infer).reshape(8, 64, 64)
    v = np.broadcast_to(scan.valid, ref.shape)
    assert abs(np.nansum(ref[v]) / counts.sum() - 1) < 1e-4
    assert abs(np.nansum(off[v]) / counts.sum() - 1) > 1e-3  # the network's own output is off
    out = D.predict_distributed(model, stack, infer=inf, scheduler=cluster)
    np.testing.assert_array_equal(out.reshape(8, 64, 64), ref)
