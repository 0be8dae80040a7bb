"""Make the screenshots of docs/gui.md: every dock widget in use on a synthetic scan, and the viewer.

    python docs/screenshots.py            # writes docs/images/*.png

Runs headless: without DISPLAY it starts a private Xvfb server (Qt offscreen platform on it). It
writes a synthetic 4 x 4 scan of 160 x 160 frames to a temporary folder, opens it, draws an ROI, finds
hot pixels, checks the Friedel symmetry, trains a small Noise2Self U-Net for a short while, denoises,
compares with the ground truth and exports; each dock widget is grabbed in that state.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _wait(app, cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"screenshots: timed out waiting for {what}")
    for _ in range(5):
        app.processEvents()


def canvas_png(viewer, path: Path) -> None:
    """Save the canvas. Under Qt's offscreen platform ``viewer.screenshot`` (QOpenGLWidget.grabFramebuffer)
    returns only the background, so the vispy scene is rendered to an offscreen buffer instead."""
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    viewer.reset_view()
    for _ in range(10):
        QApplication.instance().processEvents()
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        img = viewer.window._qt_viewer.canvas._scene_canvas.render()  # vispy offscreen render
    else:
        img = viewer.screenshot(canvas_only=True, flash=False)
    imsave(str(path), np.asarray(img, dtype=np.uint8), check_contrast=False)
    print("wrote", path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE / "images", help="folder for the PNG files")
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)

    from napari_xrd_denoise.widgets._headless import ensure_display

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if ensure_display() is None:
        print("screenshots: no X display and no Xvfb; napari needs OpenGL", file=sys.stderr)
        return 2
    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_xrd_denoise.synthetic import make_scan, write_scan
    from napari_xrd_denoise.widgets import ExportWidget, LoadWidget, MaskWidget, PredictWidget, TrainWidget

    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="xrd-denoise-shots-"))
    scan = make_scan(scan_shape=(4, 4), frame_shape=(160, 160), dose="mid", seed=7)
    src = write_scan(tmp / "demo_scan_master.h5", scan, format="eiger", external=False)

    viewer = napari.Viewer(title="napari-xrd-denoise", show=True)
    viewer.window._qt_window.resize(2000, 1150)
    app = QApplication.instance()
    widgets = {
        "load": LoadWidget(viewer),
        "masks": MaskWidget(viewer),
        "train": TrainWidget(viewer),
        "predict": PredictWidget(viewer),
        "export": ExportWidget(viewer),
    }
    titles = {"load": "1. Load and preprocess", "masks": "2. Masks and beam centre", "train": "3. Train",
              "predict": "4. Predict and compare", "export": "5. Export"}  # as in napari.yaml
    docks = {}
    for i, (k, w) in enumerate(widgets.items()):
        docks[k] = viewer.window.add_dock_widget(w, name=titles[k], area="right", tabify=i > 0)
    load, masks, train, predict, export = widgets.values()

    def shot(key: str, name: str) -> None:
        dock = docks[key]
        dock.show()
        dock.raise_()
        for _ in range(10):
            app.processEvents()
            time.sleep(0.02)
        dock.grab().save(str(out / f"{name}.png"))
        print("wrote", out / f"{name}.png")

    # 1. load: flat file of 16 frames given its 4 x 4 scan grid, transformed-frame preview on
    load.path.setText(str(src))
    load._refresh_datasets()
    load.scan_shape.setText("4x4")
    load.open()
    _wait(app, lambda: not load.busy and load.state.stack is not None, 60, "the file to open")
    viewer.dims.current_step = (1, 2) + tuple(viewer.dims.current_step[2:])
    load.preview_on.setChecked(True)
    viewer.layers["transformed frame"].visible = False
    shot("load", "load")

    # 2. masks: ROI rectangle, hot pixels, symmetry about the file's beam centre
    viewer.add_shapes([np.array([[20, 20], [20, 140], [140, 140], [140, 20]])], shape_type="rectangle",
                      name="ROI", edge_color="yellow", face_color="transparent", edge_width=1.5)
    masks.roi_from_shapes()
    masks.find_hot_dead()
    _wait(app, lambda: masks.find_btn.isEnabled() and "found" in masks.excl_info.text(), 60, "hot pixels")
    masks.preview_symmetry()
    shot("masks", "masks")
    canvas_png(viewer, out / "viewer_masks.png")
    for name in ("symmetric partner", "common mask"):
        viewer.layers[name].visible = False

    # 3. train: a short Noise2Self run with live curves and preview
    train.method.setCurrentIndex(train.method.findData("n2s"))
    train.size.setCurrentIndex(train.size.findData("small"))
    train.epochs.setValue(args.epochs)
    train.steps_per_epoch.setValue(25)
    train.batch.setValue(4)
    train.patch.setValue(64)
    train.preview_every.setValue(10)
    train.device.setCurrentIndex(train.device.findData("cpu"))
    train.model_path.setText(str(tmp / "model.pt"))
    train.start()
    _wait(app, lambda: not train.is_running, 900, "training")
    shot("train", "train")

    # 4. predict and compare against the ground truth
    viewer.add_image(scan.truth, name="ground truth", colormap="magma", visible=False)
    predict.start()
    _wait(app, lambda: not predict.is_running and predict.state.result is not None, 300, "prediction")
    predict.reference.setCurrentIndex(predict.reference.findText("ground truth"))
    viewer.dims.current_step = (2, 1) + tuple(viewer.dims.current_step[2:])
    predict.update_frame_views()
    predict.grid_on.setChecked(True)
    for _ in range(10):
        app.processEvents()
    shot("predict", "predict")
    canvas_png(viewer, out / "viewer_grid.png")
    predict.grid_on.setChecked(False)

    # 5. export
    export.data_path.setText(str(tmp / "demo_denoised.h5"))
    export.mask_path.setText(str(tmp / "demo_mask.edf"))
    export.model_path.setText(str(tmp / "demo_model.pt"))
    export.config_path.setText(str(tmp / "demo_config.json"))
    export.export_model()
    export.export_mask()
    export.export_config()
    export.export_data()
    _wait(app, lambda: not export.is_running, 120, "export")
    shot("export", "export")
    print("exported:", ", ".join(p.name for p in export.written))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
