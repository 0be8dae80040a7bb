"""The napari dock widgets, driven in a real viewer (pytest-qt + make_napari_viewer), and their helpers.

Data with known answers: a small synthetic scan (2 x 3 positions of 64 x 64 frames) with ground truth,
written to an Eiger-style HDF5 file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import dask.array as da
import numpy as np
import pytest
import torch

from napari_xrd_denoise.config import Config
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.physics.masks import valid_from_pixel_mask, valid_from_raw
from napari_xrd_denoise.synthetic import make_scan, write_scan
from napari_xrd_denoise.io.writers import save_mask
from napari_xrd_denoise.physics.masks import find_hot_dead
from napari_xrd_denoise.widgets._helpers import psnr_sqrt, roi_sums, shapes_mask

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:System theme detection:UserWarning")

SCAN = (2, 3)
FRAME = (64, 64)


@pytest.fixture(scope="module")
def scan():
    return make_scan(scan_shape=SCAN, frame_shape=FRAME, dose="mid", seed=3)


@pytest.fixture
def scan_file(tmp_path, scan) -> Path:
    return write_scan(tmp_path / "scan_master.h5", scan, format="eiger", external=False)


def _file_valid(scan) -> np.ndarray:
    """Per-frame validity as the file states it (sentinels + pixel_mask), shape scan + frame."""
    return valid_from_raw(scan.counts) & valid_from_pixel_mask(scan.pixel_mask)


def _errors_since(start: int) -> list[str]:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [str(n.message) for n in notification_manager.records[start:] if n.severity == NotificationSeverity.ERROR]


def _n_records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


def _widgets(viewer):
    from napari_xrd_denoise.widgets import ExportWidget, LoadWidget, MaskWidget, PredictWidget, TrainWidget

    ws = [W(viewer) for W in (LoadWidget, MaskWidget, TrainWidget, PredictWidget, ExportWidget)]
    for w in ws:
        viewer.window.add_dock_widget(w)
    return ws


def _open(qtbot, load, path, scan_shape="2x3"):
    load.path.setText(str(path))
    load._refresh_datasets()
    load.scan_shape.setText(scan_shape)
    load.open_btn.click()  # as a user does: the button's clicked(bool) reaches the slot
    qtbot.waitUntil(lambda: not load.busy, timeout=30000)


def _fast_training(train, epochs=200):
    train.method.setCurrentIndex(train.method.findData("n2s"))
    train.size.setCurrentIndex(train.size.findData("tiny"))
    train.epochs.setValue(epochs)
    train.steps_per_epoch.setValue(4)
    train.batch.setValue(2)
    train.patch.setValue(32)
    train.preview_every.setValue(2)
    train.device.setCurrentIndex(train.device.findData("cpu"))


# --------------------------------------------------------------------------------------------------
# helpers (no viewer)
# --------------------------------------------------------------------------------------------------
def test_find_hot_dead_on_synthetic_scan(scan):
    """The planted hot pixels are found exactly; 'dead' only where the neighbourhood predicts counts."""
    v = _file_valid(scan).reshape((-1,) + FRAME)
    c = np.where(v, scan.counts.reshape((-1,) + FRAME), 0).astype(np.float64)
    hot, dead = find_hot_dead(c, v, k=10.0)
    assert np.array_equal(hot, scan.hot)
    # every pixel called dead counts 0 in all frames although its neighbours count; here: the beam-stop edge
    assert dead.any() and np.all(c[:, dead] == 0)
    assert np.all(scan.beam_stop[dead])


def test_find_hot_dead_keeps_sparse_zero_regions():
    """A low-dose region where most pixels count 0 in every frame is not 'dead'; a zeroed bright pixel is."""
    rng = np.random.default_rng(0)
    lam = np.full((40, 40), 0.02)
    lam[:, 20:] = 8.0
    frames = rng.poisson(lam, size=(10, 40, 40)).astype(float)
    frames[:, 10, 30] = 0  # dead pixel in the bright half
    frames[:, 30, 25] = 400  # hot pixel
    valid = np.ones(frames.shape, bool)
    hot, dead = find_hot_dead(frames, valid)
    assert np.argwhere(hot).tolist() == [[30, 25]]
    assert np.argwhere(dead).tolist() == [[10, 30]]


def test_mask_files_round_trip(tmp_path):
    from napari_xrd_denoise.io.readers import load_mask

    ex = np.zeros((20, 30), bool)
    ex[3:5, 7:11] = True
    ex[-1, -1] = True
    for suffix in (".npy", ".tif", ".edf"):
        p = save_mask(tmp_path / f"m{suffix}", ex)
        valid = load_mask(p)  # pyFAI / Dioptas convention: nonzero = masked
        assert np.array_equal(~valid, ex), suffix
    with pytest.raises(XRDError, match="mask files must end"):
        save_mask(tmp_path / "m.png", ex)


def test_shapes_mask_rectangle_and_ellipse():
    rect = np.array([[10.0, 12.0], [10.0, 52.0], [40.0, 52.0], [40.0, 12.0]])
    m = shapes_mask([rect], ["rectangle"], FRAME)
    ys, xs = np.nonzero(m)
    # napari counts a pixel whose centre lies on the outline as inside: rows 10..40, columns 12..52
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 40, 12, 52) and m.sum() == 31 * 41
    # the crop origin is subtracted: the same world rectangle seen in a frame cropped at (5, 2)
    m2 = shapes_mask([rect], ["rectangle"], FRAME, offset=(5.0, 2.0))
    assert np.array_equal(m2[:-5, :-2], m[5:, 2:])
    # an ellipse inscribed in a 21 x 21 box: area close to pi * 10.5^2
    ell = np.array([[20.0, 20.0], [20.0, 41.0], [41.0, 41.0], [41.0, 20.0]])
    e = shapes_mask([ell], ["ellipse"], FRAME)
    assert abs(int(e.sum()) - np.pi * 10.5**2) < 0.06 * np.pi * 10.5**2
    with pytest.raises(XRDError, match="no shapes"):
        shapes_mask([], [], FRAME)


def test_psnr_and_roi_sums():
    ref = np.full((8, 8), 9.0)
    est = ref.copy()
    est[0, 0] = 16.0  # Anscombe values: 2*sqrt(9.375) vs 2*sqrt(16.375)
    ref[7, 7] = 25.0
    te, tr = 2 * np.sqrt(est + 0.375), 2 * np.sqrt(ref + 0.375)
    expected = 10 * np.log10((tr.max() - tr.min()) ** 2 / np.mean((te - tr) ** 2))
    assert psnr_sqrt(est, ref) == pytest.approx(expected)
    raw = np.arange(2 * 4 * 4, dtype=float).reshape(2, 4, 4)
    den = raw + 1
    den[1, 0, 0] = np.nan
    roi = np.zeros((4, 4), bool)
    roi[:2, :2] = True
    r, d = roi_sums(raw, den, roi)
    assert r.tolist() == [0 + 1 + 4 + 5, 17 + 20 + 21]  # pixel (0,0) of frame 1 is invalid in den
    assert d.tolist() == [r[0] + 4, r[1] + 3]


# --------------------------------------------------------------------------------------------------
# widgets in a viewer
# --------------------------------------------------------------------------------------------------
@pytest.mark.gui
def test_each_widget_builds(make_napari_viewer):
    viewer = make_napari_viewer()
    ws = _widgets(viewer)
    assert len(viewer.window.dock_widgets) >= 5
    for w in ws:
        cfg = w.to_config() if hasattr(w, "to_config") else None
        if cfg is not None:
            assert isinstance(cfg, Config)
            cfg.validate()
    load, masks, train, predict, export = ws
    # the device list always offers the CPU
    devs = [train.device.itemData(i) for i in range(train.device.count())]
    assert "cpu" in devs
    # nothing is running and nothing can be exported yet: errors, not crashes
    n0 = _n_records()
    export.model_btn.click()
    predict.start()
    assert any("no model" in e for e in _errors_since(n0))


@pytest.mark.gui
def test_settings_become_config(make_napari_viewer):
    viewer = make_napari_viewer()
    load, masks, train, predict, export = _widgets(viewer)

    train.method.setCurrentIndex(train.method.findData("n2s"))
    train.epochs.setValue(7)
    train.device.setCurrentIndex(train.device.findData("cpu"))
    train.size.setCurrentIndex(train.size.findData("tiny"))
    train.arch.setCurrentIndex(train.arch.findData("dncnn"))
    train.lr.setValue(0.002)
    train.loss.setCurrentIndex(train.loss.findData("poisson"))
    cfg = train.to_config()
    assert cfg.method.name == "n2s"
    assert cfg.train.epochs == 7
    assert cfg.train.device == "cpu"
    assert (cfg.model.arch, cfg.model.depth, cfg.model.width, cfg.model.dncnn_layers) == ("dncnn", 2, 8, 6)
    assert cfg.train.lr == pytest.approx(0.002)
    assert cfg.method.loss == "poisson"
    assert cfg.method.combine_split is None  # binomial split for symmetry / neighbours: auto
    train.split.setCurrentIndex(train.split.findData("off"))
    assert train.to_config().method.combine_split is False
    assert cfg.method.fill_invalid is True  # neighbour input fill: on by default, as in the config
    train.fill.setChecked(False)
    assert train.to_config().method.fill_invalid is False

    assert load.to_config().data.ndim is None  # frame dimensionality from the file by default
    load.ndim.setCurrentIndex(load.ndim.findData(2))
    load.scan_shape.setText("141x121")
    load.crop_on.setChecked(True)
    for s, v in zip((load.y0, load.y1, load.x0, load.x1), (4, 60, 8, 56)):
        s.setValue(v)
    load.keep_neg.setChecked(True)
    load.saturation.setValue(5000)
    load.transform.setCurrentIndex(load.transform.findData("gat"))
    load.gain.setValue(2.5)
    load.read_noise.setValue(1.5)
    cfg = load.to_config()
    d = cfg.data
    assert d.ndim == 2 and d.scan_shape == [141, 121]
    assert d.crop == [4, 60, 8, 56]
    assert d.keep_negatives is True and d.saturation == 5000.0
    assert (d.transform, d.gain, d.read_noise) == ("gat", 2.5, 1.5)
    # the train settings made before are still in the shared Config
    assert cfg.method.name == "n2s" and cfg.train.epochs == 7

    masks.kind.setCurrentIndex(masks.kind.findData("mirror"))
    masks.angle.setValue(30.0)
    masks.guard.setValue(2.0)
    assert masks.interp.currentData() == "lanczos3"  # the config's default
    masks.interp.setCurrentIndex(masks.interp.findData("cubic"))
    cfg = masks.to_config()
    assert (cfg.method.symmetry, cfg.method.mirror_angle, cfg.method.center_guard) == ("mirror", 30.0, 2.0)
    assert cfg.method.partner_interp == "cubic"

    predict.tta.setChecked(True)
    predict.tile.setValue(256)
    predict.overlap.setValue(16)
    cfg = predict.to_config()
    assert cfg.infer.tta is True and cfg.infer.tile == 256 and cfg.infer.overlap == 16
    assert cfg.infer.preserve_profile is None  # flux correction: on whenever a centre or PONI is known
    predict.flux.setChecked(False)
    assert predict.to_config().infer.preserve_profile is False

    # the whole configuration round-trips through JSON and back into a fresh Train widget
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    from napari_xrd_denoise.widgets import TrainWidget

    t2 = TrainWidget(viewer)
    t2.set_from_config(again)
    assert t2.apply_to(Config()).train.epochs == 7 and t2.apply_to(Config()).model.arch == "dncnn"
    assert t2.split.currentData() == "off" and t2.apply_to(Config()).method.combine_split is False
    assert not t2.fill.isChecked() and t2.apply_to(Config()).method.fill_invalid is False
    t2.deleteLater()

    # a bad value becomes an error naming the parameter, not an exception in Qt
    load.scan_shape.setText("12xq")
    n0 = _n_records()
    load.open()
    assert any("scan shape" in e for e in _errors_since(n0))


@pytest.mark.gui
def test_bad_path_shows_error_and_widget_stays_usable(make_napari_viewer, tmp_path, scan_file, qtbot):
    viewer = make_napari_viewer()
    load, *_ = _widgets(viewer)
    n0 = _n_records()
    load.path.setText(str(tmp_path / "missing.h5"))
    load.open()
    errs = _errors_since(n0)
    assert len(errs) == 1 and "missing.h5" in errs[0] and "\n" not in errs[0]
    assert load.open_btn.isEnabled() and not load.busy
    # an error raised inside the background worker (a dataset that is not in the file) is shown too
    n1 = _n_records()
    load.path.setText(str(scan_file))
    load.dataset.setEditText("entry/no_such_data")
    load.open()
    qtbot.waitUntil(lambda: not load.busy, timeout=30000)
    errs = _errors_since(n1)
    assert len(errs) == 1 and "no_such_data" in errs[0]
    assert load.state.stack is None and load.open_btn.isEnabled()
    # and the same widget then opens the good file
    load.dataset.setCurrentIndex(0)
    _open(qtbot, load, scan_file)
    assert load.state.stack is not None and load.state.stack.shape == SCAN + FRAME


def test_layer_stack_keeps_what_the_reader_and_samples_know(scan_file):
    """An image layer from the plugin's reader or sample data opens with its detector mask, pixel size and
    beam centre (kept in the layer's metadata); a layer whose data no longer match is opened bare."""
    from napari_xrd_denoise.io.napari_io import layer_stack, read_layers
    from napari_xrd_denoise.sample_data import lab6_scan, synthetic_scan

    data, kw, _ = lab6_scan()[0]
    st = layer_stack(data, kw["metadata"], kw["name"], saturation=1e6)
    assert int((~st.static_valid).sum()) == 2730 and st.pixel_size == (0.000172, 0.000172)
    assert st.saturation == 1e6  # the user's setting wins
    frame = np.asarray(st.data[0]).astype(float)
    assert np.isnan(np.where(st.valid(frame), frame, np.nan)[:, 487:494]).all()  # the module gap is invalid
    data, kw, _ = synthetic_scan()[0]
    st = layer_stack(data, kw["metadata"], kw["name"])
    assert st.beam_center is not None and np.allclose(st.beam_center, kw["metadata"]["center"])
    assert int((~st.static_valid).sum()) > 0
    data, kw, _ = read_layers(str(scan_file))[0]
    st = layer_stack(data, kw["metadata"], kw["name"])
    assert st.source == str(scan_file) and st.static_valid is not None
    bare = layer_stack(np.zeros((3, 8, 8), np.uint16), kw["metadata"], "edited")  # data replaced: shapes differ
    assert bare.static_valid is None and bare.source == "layer 'edited'"
    edited = np.asarray(data).copy()  # data replaced by an edited array of the same shape: taken as it is
    edited[:, :8] = 1000
    st = layer_stack(edited, kw["metadata"], "edited")
    assert st.source == "layer 'edited'" and (np.asarray(st.data[:, :8]) == 1000).all()


@pytest.mark.gui
def test_narrow_docks_scroll_and_positive_minimums_stay_positive(make_napari_viewer, qtbot):
    """A dock made narrower than its rows scrolls sideways (the Stop button stays reachable), and a spin box
    with a tiny positive minimum (the gain) cannot be set to a 0 the Config rejects once rounded."""
    from napari_xrd_denoise.widgets._common import dspin

    from napari_xrd_denoise.widgets import LoadWidget, PredictWidget, TrainWidget

    viewer = make_napari_viewer()
    for W in (LoadWidget, TrainWidget, PredictWidget):
        w = W(viewer)
        qtbot.addWidget(w)
        w.resize(300, 600)
        w.show()
        sb = w.scroll_area.horizontalScrollBar()
        qtbot.waitUntil(lambda: sb.isVisible() and sb.maximum() > 0, timeout=5000)
        # the whole row is reachable: the body keeps its natural width and the bar spans the rest
        assert w.body.width() >= w.body.minimumSizeHint().width() > w.scroll_area.viewport().width()
        assert sb.maximum() == w.body.width() - w.scroll_area.viewport().width()
    load = LoadWidget(viewer)
    s = dspin(1e-6, 1e6, 1.0, 0.1, 4)
    s.setValue(0.0)
    assert s.value() > 0
    assert load.gain.minimum() > 0


@pytest.mark.gui
def test_stop_interrupts_training_within_a_second(make_napari_viewer, qtbot, scan):
    viewer = make_napari_viewer()
    load, masks, train, predict, export = _widgets(viewer)
    viewer.add_image(scan.counts, name="counts")
    load.layer_combo.setCurrentIndex(load.layer_combo.findText("counts"))
    load.open()
    qtbot.waitUntil(lambda: not load.busy, timeout=30000)
    assert load.state.stack.shape == SCAN + FRAME
    _fast_training(train, epochs=1)  # a first model, from one finished epoch
    train.steps_per_epoch.setValue(2)
    train.start()
    qtbot.waitUntil(lambda: not train.is_running, timeout=60000)
    first = train.state.model
    assert first is not None and len(first.history["train_loss"]) == 1
    _fast_training(train, epochs=10000)
    train.steps_per_epoch.setValue(1000)
    train.start()
    assert train.is_running and not train.start_btn.isEnabled()
    qtbot.waitUntil(lambda: train.last_event is not None and train.last_event.kind == "step", timeout=60000)
    t0 = time.monotonic()
    train.stop()
    qtbot.waitUntil(lambda: not train.is_running, timeout=1000)
    assert time.monotonic() - t0 < 1.0
    assert train.last_event.kind == "cancelled"
    assert train.stop_latency is not None and train.stop_latency < 1.0
    # stopped inside its first epoch, the run made no model: the previous one is kept, and the status says so
    assert train.state.model is first
    assert "no new model" in train.status.text() and "previous model is kept" in train.status.text()
    assert train.progress.format() == "stopped"
    assert train.start_btn.isEnabled() and not train.stop_btn.isEnabled()


@pytest.mark.gui
def test_whole_flow(make_napari_viewer, qtbot, tmp_path, scan, scan_file):
    from napari_xrd_denoise.io.writers import read_result
    from napari_xrd_denoise.model_file import DenoiserModel

    viewer = make_napari_viewer()
    load, masks, train, predict, export = _widgets(viewer)
    state = load.state

    # --- open: a flat file of 6 frames given its 2 x 3 scan grid; the layer stays lazy -------------
    _open(qtbot, load, scan_file)
    names = [load.dataset.itemData(i) for i in range(load.dataset.count())]
    assert "entry/data/data" in names
    raw_layer = viewer.layers["scan_master raw"]
    assert isinstance(raw_layer.data, da.Array) and raw_layer.data.shape == SCAN + FRAME
    valid = _file_valid(scan)
    frame = np.asarray(raw_layer.data[1, 2])
    assert np.array_equal(np.isfinite(frame), valid[1, 2])
    assert np.array_equal(frame[valid[1, 2]], scan.counts[1, 2][valid[1, 2]].astype(np.float32))
    assert "scan shape" in load.info.text()
    # the file's own beam centre is taken
    assert state.center == pytest.approx(scan.center, abs=1e-6)

    # --- ROI from a Shapes rectangle, centre from a Points layer, symmetry preview ------------------
    viewer.add_shapes([np.array([[8, 10], [8, 54], [56, 54], [56, 10]])], shape_type="rectangle", name="roi")
    masks.roi_btn.click()
    roi = state.roi
    assert roi is not None and roi.shape == FRAME
    ys, xs = np.nonzero(roi)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (8, 56, 10, 54) and roi.sum() == 49 * 45
    viewer.add_points([list(scan.center)], name="clicked centre")
    viewer.layers.selection.active = viewer.layers["clicked centre"]
    state.set_center(None)
    masks.pts_btn.click()
    assert state.center == pytest.approx(scan.center, abs=1e-4)
    assert state.config.method.center == pytest.approx(list(scan.center), abs=1e-4)
    # hot pixels (valid in the file, 10^4-10^6 counts) are found and excluded first: they would swamp the score
    masks.find_btn.click()
    qtbot.waitUntil(lambda: masks.find_btn.isEnabled(), timeout=30000)
    assert np.array_equal(np.asarray(viewer.layers["exclusions"].data) == 2, scan.hot)
    assert state.exclusions is not None and np.all(state.exclusions[scan.hot])
    masks.preview_btn.click()
    assert masks.score is not None and masks.score > 0.5  # the synthetic pattern is centrosymmetric
    assert viewer.layers["symmetric partner"].data.shape == FRAME
    assert viewer.layers["common mask"].data.shape == FRAME

    # --- train a few steps, then Stop ---------------------------------------------------------------
    _fast_training(train, epochs=500)
    train.start_btn.click()
    # stopped after an epoch has finished (before it, a run makes no model)
    qtbot.waitUntil(lambda: "denoised preview" in viewer.layers and bool(train.history), timeout=60000)
    assert viewer.layers["denoised preview"].data.shape == FRAME
    train.stop_btn.click()
    qtbot.waitUntil(lambda: not train.is_running, timeout=1000)
    model = state.model
    assert model is not None and model.config.method.name == "n2s"
    assert train.steps  # loss curve data arrived through the worker

    # --- predict and compare ------------------------------------------------------------------------
    predict.run_btn.click()
    qtbot.waitUntil(lambda: not predict.is_running, timeout=60000)
    res = state.result
    assert res is not None and res.path is None  # small stack: in memory
    den_layer = viewer.layers["scan_master denoised"]
    resid_layer = viewer.layers["scan_master residual"]
    assert den_layer.data.shape == SCAN + FRAME and resid_layer.data.shape == SCAN + FRAME
    den = np.asarray(res.data)
    wvalid = valid & ~state.exclusions  # the file's invalid pixels plus the user's exclusions
    assert np.array_equal(np.isfinite(den), wvalid)  # invalid stays invalid, nothing else is
    r = np.asarray(resid_layer.data[0, 1])
    d = den[0, 1]
    x = scan.counts[0, 1].astype(np.float64)
    ok = wvalid[0, 1]
    expect = (x - d) / np.sqrt(np.maximum(d, 1e-2))
    assert np.array_equal(np.isfinite(r), ok)
    np.testing.assert_allclose(r[ok], expect[ok], rtol=1e-4, atol=1e-4)
    # virtual-detector maps: ROI sums per scan point, raw and denoised over the same pixels
    m_raw = viewer.layers["ROI map raw"].data
    m_den = viewer.layers["ROI map denoised"].data
    assert m_raw.shape == SCAN and m_den.shape == SCAN
    want = np.where(wvalid & roi, scan.counts, 0).astype(np.float64).sum(axis=(-2, -1))
    np.testing.assert_allclose(m_raw, want, rtol=1e-6)
    np.testing.assert_allclose(m_den, np.where(wvalid & roi, den, 0).sum(axis=(-2, -1)), rtol=1e-5)
    # clicking a map pixel moves the scan sliders to that frame
    map_layer = viewer.layers["ROI map raw"]
    pos = list(viewer.dims.current_step)
    pos[-2:] = map_layer.data_to_world((1, 2))[-2:]
    predict._map_clicked(map_layer, SimpleNamespace(position=tuple(pos)))
    assert tuple(viewer.dims.current_step[:2]) == (1, 2)
    # side-by-side grid with only the comparison layers visible, restored afterwards
    predict.grid_on.setChecked(True)
    assert viewer.grid.enabled and not viewer.layers["roi"].visible
    predict.grid_on.setChecked(False)
    assert not viewer.grid.enabled and viewer.layers["roi"].visible
    # metrics against the ground truth, and the azimuthal profile of the current frame (1, 2)
    viewer.add_image(scan.truth, name="truth")
    predict.reference.setCurrentIndex(predict.reference.findText("truth"))
    predict.update_btn.click()
    psnr_raw, psnr_den = predict.metrics["PSNR √-scale vs ref (dB)"]
    fr_valid = wvalid[1, 2]
    assert psnr_raw == pytest.approx(psnr_sqrt(np.where(fr_valid, scan.counts[1, 2], np.nan), scan.truth[1, 2],
                                               fr_valid))
    assert np.isfinite(psnr_den)
    assert predict.metrics["total counts"][0] == pytest.approx(float(scan.counts[1, 2][fr_valid].sum()))
    radial, p_raw, p_den = predict.profile
    assert len(radial) > 10 and np.isfinite(p_raw).sum() > 10 and np.isfinite(p_den).sum() > 10

    # --- export --------------------------------------------------------------------------------------
    export.data_path.setText(str(tmp_path / "den.h5"))
    export.data_btn.click()
    qtbot.waitUntil(lambda: not export.is_running, timeout=30000)
    export.mask_path.setText(str(tmp_path / "mask.npy"))
    export.mask_btn.click()
    export.model_path.setText(str(tmp_path / "model.pt"))
    export.model_btn.click()
    export.config_path.setText(str(tmp_path / "config.json"))
    export.config_btn.click()
    for name in ("den.h5", "mask.npy", "model.pt", "config.json"):
        assert (tmp_path / name).is_file(), name
    data, _, prov = read_result(tmp_path / "den.h5")
    np.testing.assert_array_equal(np.asarray(data), den)
    assert "config" in prov
    data.file.close()
    mask = np.load(tmp_path / "mask.npy")
    assert np.array_equal(mask != 0, ~valid_from_pixel_mask(scan.pixel_mask) | state.exclusions)
    assert DenoiserModel.load(tmp_path / "model.pt").config.method.name == "n2s"
    cfg = Config.load(tmp_path / "config.json")
    assert cfg.method.name == "n2s" and cfg.train.epochs == 500 and cfg.data.scan_shape == [2, 3]
    assert cfg.data.mask_file == str(tmp_path / "mask.npy")
    # replayed headless (what `xrd-denoise --config` does), the configuration gives the same data and masks
    from napari_xrd_denoise.api import open_input

    replay = open_input(str(scan_file), cfg)
    assert replay.shape == SCAN + FRAME
    assert np.array_equal(replay.static_valid, state.working_stack().static_valid)
    assert cfg.method.center == pytest.approx(list(scan.center), abs=1e-4)
    # refusing to overwrite is an error notification, not a silent replace
    n0 = _n_records()
    export.model_btn.click()
    assert any("exists" in e for e in _errors_since(n0))
    # napari's own Save layer on the denoised layer writes the same provenance as Export
    viewer.layers["scan_master denoised"].save(str(tmp_path / "layer.h5"), plugin="napari-xrd-denoise")
    data2, _, prov2 = read_result(tmp_path / "layer.h5")
    np.testing.assert_array_equal(np.asarray(data2), den)
    data2.file.close()
    assert prov2["input_file"] == prov["input_file"] == str(scan_file) and prov2["method"] == "n2s"
    assert Config.from_dict(json.loads(prov2["config"])).method.name == "n2s" and prov2["model_version"]

    # --- opening other data removes the old results and previews (they no longer match) --------------
    _open(qtbot, load, scan_file, scan_shape="3x2")
    assert viewer.layers["scan_master raw"].data.shape == (3, 2) + FRAME
    left = [lay.name for lay in viewer.layers if lay.metadata.get("xrd_role") in ("denoised", "residual", "map", "preview")]
    assert left == [] and "scan_master denoised" not in viewer.layers and "symmetric partner" not in viewer.layers
    assert "roi" in viewer.layers and "truth" in viewer.layers  # the user's own layers stay


@pytest.mark.gui
def test_crop_keeps_detector_coordinates(make_napari_viewer, qtbot, tmp_path, scan, scan_file):
    """A crop drawn as a Shapes rectangle; layers, centre, ROI and mask files stay in detector pixels."""
    viewer = make_napari_viewer()
    load, masks, train, predict, export = _widgets(viewer)
    state = load.state
    _open(qtbot, load, scan_file)
    viewer.add_shapes([np.array([[8.0, 6.0], [8.0, 58.0], [60.0, 58.0], [60.0, 6.0]])], shape_type="rectangle",
                      name="crop box")
    viewer.layers.selection.active = viewer.layers["crop box"]
    load.crop_from_shapes()
    assert [load.y0.value(), load.y1.value(), load.x0.value(), load.x1.value()] == [8, 61, 6, 59]
    load.open()
    qtbot.waitUntil(lambda: not load.busy, timeout=30000)
    st = state.stack
    assert st.frame_shape == (53, 53) and state.full_frame_shape == FRAME
    assert state.config.data.crop == [8, 61, 6, 59]
    raw = viewer.layers["scan_master raw"]
    assert tuple(raw.translate[-2:]) == (8.0, 6.0)
    frame = np.asarray(raw.data[0, 0])
    valid = _file_valid(scan)[0, 0]
    assert np.array_equal(np.isfinite(frame), valid[8:61, 6:59])
    # the centre in frame pixels is the detector centre less the crop origin
    assert state.center == pytest.approx((scan.center[0] - 8, scan.center[1] - 6), abs=1e-6)
    # a point clicked at the detector centre gives the same
    viewer.add_points([list(scan.center)], name="click")
    viewer.layers.selection.active = viewer.layers["click"]
    state.set_center(None)
    masks.center_from_points()
    assert state.center == pytest.approx((scan.center[0] - 8, scan.center[1] - 6), abs=1e-4)
    # an ROI drawn in detector pixels lands on the same detector pixels of the cropped frame
    viewer.add_shapes([np.array([[20.0, 30.0], [20.0, 40.0], [25.0, 40.0], [25.0, 30.0]])],
                      shape_type="rectangle", name="roi")
    viewer.layers.selection.active = viewer.layers["roi"]
    masks.roi_from_shapes()
    ys, xs = np.nonzero(state.roi)
    assert (ys.min() + 8, ys.max() + 8, xs.min() + 6, xs.max() + 6) == (20, 25, 30, 40)
    # a detector-size mask file is cropped on load; a saved mask is detector-size again
    full = np.zeros(FRAME, np.uint8)
    full[20, 30] = 1
    np.save(tmp_path / "user_mask.npy", full)
    masks.mask_path.setText(str(tmp_path / "user_mask.npy"))
    masks.load_btn.click()
    excl = np.asarray(viewer.layers["exclusions"].data)
    assert tuple(viewer.layers["exclusions"].translate) == (8.0, 6.0)
    assert np.argwhere(excl).tolist() == [[12, 24]]
    assert state.config.data.mask_file == str(tmp_path / "user_mask.npy")
    masks.mask_path.setText(str(tmp_path / "all_mask.npy"))
    masks.save_btn.click()
    saved = np.load(tmp_path / "all_mask.npy") != 0
    assert saved.shape == FRAME
    inside = np.zeros(FRAME, bool)
    inside[8:61, 6:59] = True
    assert not saved[~inside].any()  # outside the crop nothing is marked
    expect = ~valid_from_pixel_mask(scan.pixel_mask)
    expect[20, 30] = True
    assert np.array_equal(saved[inside], expect[inside])


REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.mark.gui
def test_real_xrf_spectra_streamed_to_file(make_napari_viewer, qtbot, tmp_path):
    """Real 1D data (32 repeated XRF spectra): train, denoise into an HDF5 file read back lazily, export npy."""
    csv = REAL / "xrf_spectra" / "05_xrf_spectra.csv"
    if not csv.is_file():
        pytest.skip(f"real data not found: {csv}")
    from napari_xrd_denoise.widgets.predict import OUT_FILE

    viewer = make_napari_viewer()
    load, masks, train, predict, export = _widgets(viewer)
    load.ndim.setCurrentIndex(load.ndim.findData(2))  # a wrong choice: spectra files are always 1D
    _open(qtbot, load, csv, scan_shape="")
    stack = load.state.stack
    assert stack.frame_ndim == 1 and stack.shape == (32, 4095)
    assert load.ndim.currentData() == 1 and load.state.config.data.ndim == 1  # the widget follows the file
    n0 = _n_records()
    masks.preview_symmetry()
    assert any("2D frames" in e for e in _errors_since(n0))

    train.method.setCurrentIndex(train.method.findData("n2n-frames"))
    train.size.setCurrentIndex(train.size.findData("tiny"))
    train.epochs.setValue(2)
    train.steps_per_epoch.setValue(3)
    train.batch.setValue(2)
    train.device.setCurrentIndex(train.device.findData("cpu"))
    train.start()
    qtbot.waitUntil(lambda: not train.is_running, timeout=60000)
    assert train.state.model is not None and train.state.model.frame_ndim == 1
    assert [h[0] for h in train.history] == [1, 2]

    predict.out_mode.setCurrentIndex(predict.out_mode.findData(OUT_FILE))
    predict.out_path.setText(str(tmp_path / "xrf_den.h5"))
    predict.start()
    qtbot.waitUntil(lambda: not predict.is_running, timeout=60000)
    res = predict.state.result
    assert res.path == tmp_path / "xrf_den.h5" and res.path.is_file()
    layer = viewer.layers["05_xrf_spectra denoised"]
    assert isinstance(layer.data, da.Array) and layer.data.shape == (32, 4095)  # read back lazily
    den = np.asarray(res.data)
    raw = np.asarray(viewer.layers["05_xrf_spectra raw"].data)
    assert np.array_equal(np.isfinite(den), np.isfinite(raw))
    assert np.nanmin(den) >= 0  # counts, after the exact unbiased inverse
    x, p_raw, p_den = predict.profile  # the current spectrum, raw and denoised
    assert len(x) == 4095 and np.array_equal(p_raw, raw[0], equal_nan=True)
    assert predict.spectrum.isVisible() or not predict.isVisible()
    predict.spectrum.setValue(7)  # spectra are one image: the spin box picks the spectrum
    x, p_raw, p_den = predict.profile
    assert predict.frame_index == 7 and np.array_equal(p_raw, raw[7], equal_nan=True)
    assert predict.table.horizontalHeaderItem(0).text() == "spectrum 7"

    export.data_path.setText(str(tmp_path / "xrf_den.npy"))
    export.data_btn.click()
    qtbot.waitUntil(lambda: not export.is_running, timeout=30000)
    np.testing.assert_array_equal(np.load(tmp_path / "xrf_den.npy"), den)


@pytest.mark.gui
def test_open_and_predict_guard_the_users_data(make_napari_viewer, qtbot, tmp_path, scan, scan_file):
    """Open is refused while training runs (its result would be attached to the new data); a mask file and
    a beam centre of one file are not carried to another; Clear forgets a loaded mask file; the streamed
    result file never replaces the input or an existing file unless asked; a typed path wins over a layer;
    a loaded model's settings become the session's."""
    from napari_xrd_denoise.model_file import DenoiserModel

    viewer = make_napari_viewer()
    load, masks, train, predict, export = _widgets(viewer)
    state = load.state
    _open(qtbot, load, scan_file)
    # a mask file loaded for this file ...
    np.save(tmp_path / "m.npy", np.zeros(FRAME, np.uint8))
    masks.mask_path.setText(str(tmp_path / "m.npy"))
    masks.load_btn.click()
    assert state.config.data.mask_file
    masks.clear_btn.click()
    assert state.config.data.mask_file is None  # Clear forgets it
    masks.load_btn.click()
    # ... and a typed beam centre do not follow to another file without a centre of its own
    state.set_center((20.0, 21.0))
    other = tmp_path / "other.npy"
    np.save(other, scan.counts[:, :, :40, :50])
    n0 = _n_records()
    _open(qtbot, load, other)
    assert state.stack.frame_shape == (40, 50) and state.center is None
    assert state.config.data.mask_file is None and state.config.method.center is None
    assert not _errors_since(n0)
    # typing a path selects the file even where a layer was chosen
    viewer.add_image(scan.counts, name="counts")
    load._refresh_layers()
    load.layer_combo.setCurrentIndex(load.layer_combo.findText("counts"))
    load.path.edit.setText("")
    qtbot.keyClicks(load.path.edit, str(scan_file))
    assert load.layer_combo.currentText() == "(file)"
    _open(qtbot, load, scan_file)
    assert viewer.layers[-1].name == "beam centre"  # the marker stays above the re-opened data
    load.preview_on.setChecked(True)
    assert "transformed frame" in viewer.layers
    load.path.setText(str(tmp_path / "missing.h5"))
    load.open_btn.click()
    assert "missing.h5" in load.info.text() and "stays open" in load.info.text()
    load.path.setText(str(scan_file))
    # Open while training runs: refused, one line, the data stay
    _fast_training(train, epochs=10000)
    train.steps_per_epoch.setValue(1000)
    train.start_btn.click()
    assert train.is_running
    n1 = _n_records()
    load.path.setText(str(other))
    load.open_btn.click()
    errs = _errors_since(n1)
    assert len(errs) == 1 and "stop the training first" in errs[0]
    assert state.stack.frame_shape == FRAME
    n1b = _n_records()
    predict.run_btn.click()  # nor Predict: the model is still changing
    assert any("training is running" in e for e in _errors_since(n1b))
    assert predict.status.text().startswith("Not done: training is running")  # not the last success
    train.stop_btn.click()
    qtbot.waitUntil(lambda: not train.is_running, timeout=5000)
    # the streamed result: never the input, an existing file only when asked
    state.set_model(DenoiserModel.load(_tiny_model(tmp_path, scan), device="cpu"))
    # Save (mask, model) never writes onto the input, nor over a file unless asked
    for field, btn, box in ((masks.mask_path, masks.save_btn, masks.mask_replace),
                            (train.model_path, train.save_btn, train.model_replace)):
        for target, want in ((scan_file, "input file"), (tmp_path / "m.npy", "tick 'Save may replace")):
            field.setText(str(target if btn is masks.save_btn or target is scan_file else tmp_path / "old.pt"))
            if btn is train.save_btn and target is not scan_file:
                (tmp_path / "old.pt").write_bytes(b"precious")
            before = Path(field.text()).read_bytes()
            n3 = _n_records()
            btn.click()
            errs = _errors_since(n3)
            if btn is train.save_btn and target is scan_file:
                want = "ends in .pt"  # a data file is never a model file
            assert len(errs) == 1 and want in errs[0], errs
            assert Path(field.text()).read_bytes() == before
    predict.out_mode.setCurrentIndex(predict.out_mode.findData("file"))
    for target, want in ((scan_file, "input file"), (tmp_path / "m.npy.h5", None)):
        Path(target).touch()
        predict.out_path.setText(str(target))
        n2 = _n_records()
        predict.run_btn.click()
        errs = _errors_since(n2)
        assert len(errs) == 1 and (want or "tick 'replace an existing file'") in errs[0], errs
    predict.out_replace.setChecked(True)
    predict.run_btn.click()
    qtbot.waitUntil(lambda: not predict.is_running, timeout=60000)
    assert state.result is not None and Path(state.result.path) == tmp_path / "m.npy.h5"
    # nor does Export, even with its overwrite box ticked
    export.overwrite.setChecked(True)
    export.data_path.setText(str(scan_file))
    before = Path(scan_file).read_bytes()
    n4 = _n_records()
    export.data_btn.click()
    errs = _errors_since(n4)
    assert len(errs) == 1 and "input file" in errs[0], errs
    assert Path(scan_file).read_bytes() == before and not export.is_running
    # a loaded model's settings are the session's (provenance and exported configuration)
    train.model_path.setText(str(_tiny_model(tmp_path, scan)))
    train.load_btn.click()
    qtbot.waitUntil(lambda: state.config.model.width == 4, timeout=30000)
    assert state.config.method.name == "n2s"
    # other data: no stale centre marker or transformed frame of the previous file
    _open(qtbot, load, other)
    assert "beam centre" not in viewer.layers
    assert "transformed frame" not in viewer.layers or viewer.layers["transformed frame"].data.shape[-2:] == (40, 50)


def _tiny_model(tmp_path, scan) -> Path:
    import napari_xrd_denoise as xd

    p = tmp_path / "tiny.pt"
    if not p.exists():
        xd.train(scan.counts, method="n2s", width=4, depth=2, epochs=1, steps=2, train__batch_size=2, patch_size=32,
                 device="cpu", model_path=p)
    return p


@pytest.mark.gui
def test_spectra_cropped_on_their_first_open(make_napari_viewer, qtbot):
    """The crop's x range is the channel range of spectra, even before the widget knows the file is 1D."""
    csv = REAL / "xrf_spectra" / "05_xrf_spectra.csv"
    if not csv.is_file():
        pytest.skip(f"real data not found: {csv}")
    viewer = make_napari_viewer()
    load, *_ = _widgets(viewer)
    load.crop_on.setChecked(True)
    load.x0.setValue(100)
    load.x1.setValue(1100)
    n0 = _n_records()
    _open(qtbot, load, csv, scan_shape="")
    assert not _errors_since(n0)
    assert load.state.stack.frame_shape == (1000,) and load.state.config.data.crop == [100, 1100]


def test_saved_mask_holds_pixels_the_raw_values_mark_invalid_in_every_frame():
    """A .npy whose gap pixels hold 2**32-1 in every frame (no pixel mask in the file): Export mask and
    Save mask mark them (the saved pyFAI mask had none of them); a pixel saturated in one frame only is
    not a static exclusion."""
    from types import SimpleNamespace

    from napari_xrd_denoise.io.stack import ScanStack
    from napari_xrd_denoise.widgets.masks import all_excluded

    raw = np.random.default_rng(0).poisson(3.0, size=(6, 40, 48)).astype(np.uint32)
    raw[:, 20, :] = 2**32 - 1  # a sentinel gap row
    raw[2, 5, 5] = 2**32 - 1  # one frame only
    st = ScanStack.from_array(raw, frame_ndim=2, source="x.npy")
    state = SimpleNamespace(working_stack=lambda: st, full_frame_shape=None, frame_offset=(0, 0))
    ex = all_excluded(state)
    want = np.zeros((40, 48), bool)
    want[20, :] = True
    np.testing.assert_array_equal(ex, want)


def test_widget_messages_name_the_controls_not_command_line_options():
    """The engine's messages are shared with the command line; in the widgets an option they name
    becomes the control that sets it."""
    from napari_xrd_denoise.errors import XRDError
    from napari_xrd_denoise.widgets._common import error_line

    e = XRDError("method.name='neighbors' needs the 2-D scan grid of the 12 frames: give --scan-shape ROWSxCOLS "
                 "(1xN for a line scan)")
    assert error_line(e) == ("method.name='neighbors' needs the 2-D scan grid of the 12 frames: give 'Scan shape' "
                             "(Load) (1xN for a line scan)")
    e = XRDError("--preserve-profile needs a geometry (--poni) or a beam centre (--center)")
    assert "--" not in error_line(e) and "(Masks and beam centre)" in error_line(e)
    assert error_line(XRDError("x.h5: output exists; pass --overwrite")) == "x.h5: output exists; pass --overwrite"
