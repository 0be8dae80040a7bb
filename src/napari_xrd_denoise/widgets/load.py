"""Dock widget 1: open a file or an Image layer as a ScanStack, set scan shape, crop, invalid pixels, transform."""

from __future__ import annotations

import copy

from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QLineEdit, QWidget

from ..config import Config, parse_shape
from ..errors import XRDError
from ..io.stack import ScanStack
from ._common import (
    PathField,
    button,
    combo,
    dspin,
    group,
    guarded,
    info_label,
    layers_of,
    robust_limits,
    row,
    run_in_thread,
    scan_index,
    set_combo,
    set_layer,
    spin,
    vbox,
)
from ._state import get_state

FROM_FILE = "(file)"
AUTO = "auto"
AUTO_DATASET = "(automatic)"
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".nx5", ".cxi", ".emd")
FILE_FILTER = (
    "Detector data (*.h5 *.hdf5 *.hdf *.nxs *.cxi *.emd *.npy *.npz *.tif *.tiff *.edf *.cbf *.img *.mib *.zip "
    "*.csv *.txt *.xy *.dat);;All files (*)"
)


#: layer roles (metadata ``xrd_role``) tied to one opened stack, removed when another is opened
STALE_ROLES = ("denoised", "residual", "map", "preview")


def counts_view(stack: ScanStack):
    """A lazy float32 view of the stack for display: raw values, NaN where invalid (never computed whole)."""
    data = stack.data
    fa = range(data.ndim - stack.frame_ndim, data.ndim)
    if any(len(data.chunks[a]) > 1 for a in fa):
        data = data.rechunk({a: -1 for a in fa})

    def block(b):
        b = np.asarray(b)
        return np.where(stack.valid(b), b, np.nan).astype(np.float32)

    return data.map_blocks(block, dtype=np.float32)


def _dataset_names(entries) -> list[tuple[str, str]]:
    """(name, label) pairs from what ``list_datasets`` returns (names, tuples or dicts)."""
    out = []
    for e in entries or []:
        if isinstance(e, str):
            out.append((e, e))
        elif isinstance(e, dict):
            name = e.get("path") or e.get("name")
            shape = e.get("shape")
            out.append((name, f"{name}  {tuple(shape)}" if shape is not None else name))
        elif isinstance(e, (tuple, list)) and e:
            name = str(e[0])
            extra = " ".join(str(tuple(x)) if isinstance(x, (tuple, list)) else str(x) for x in e[1:]
                             if x != () and x != "mib")  # Merlin members: their shape is read when opened
            out.append((name, f"{name}  {extra}".strip()))
    return [o for o in out if o[0]]


def _open_job(source: Any, cfg: Config, label: str) -> dict:
    """Worker thread: open lazily, describe, and read one frame for the contrast limits."""
    import copy

    from ..api import open_input

    full_cfg = copy.deepcopy(cfg)
    full_cfg.data.crop = None
    full = open_input(source, full_cfg)
    crop = cfg.data.crop
    if crop and len(crop) == 4 and full.frame_ndim == 1:
        crop = list(crop[2:])  # spectra: the x range is the channel range (the widget did not know yet)
    stack = full.crop(crop)
    stack.check_denoisable()
    center = cfg.method.center  # the file's own beam centre wins over one left in the config
    if stack.beam_center is not None and stack.frame_ndim == 2:
        center = [float(stack.beam_center[0]), float(stack.beam_center[1])]
    info = ""
    try:
        from ..io.info import describe, format_info

        info = format_info(describe(stack))
    except ImportError:
        info = f"{stack.label}: {stack.n_frames} frames of {stack.frame_shape}, {stack.dtype}"
    raw = stack.frame(0)
    x = np.where(stack.valid(raw), raw, np.nan).astype(np.float32)
    return {"stack": stack, "info": info, "limits": robust_limits(x), "label": label, "center": center,
            "full_frame_shape": full.frame_shape, "crop": crop}


class LoadWidget(QWidget):
    """Open detector data (file or layer) and prepare it: scan shape, crop, invalid pixels, transform."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.busy = False
        self._worker = None
        lay = vbox(self)

        g, f = group("Source")
        self.path = PathField("open", FILE_FILTER, "detector file (HDF5/NeXus, npy, TIFF, EDF, CBF, …)")
        self.path.edit.editingFinished.connect(self._refresh_datasets)
        self.path.edit.textEdited.connect(self._file_chosen)
        f.addRow("File", self.path)
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Use an Image layer that is already open instead of a file")
        f.addRow("or layer", self.layer_combo)
        self.dataset = combo([AUTO_DATASET], tip="HDF5 dataset holding the frames")
        self.dataset.setEditable(True)
        f.addRow("Dataset", self.dataset)
        self.ndim = combo([(AUTO, "automatic (from the file)"), (2, "2D frames (images)"),
                           (1, "1D frames (spectra)")], AUTO)
        f.addRow("Frames", self.ndim)
        self.scan_shape = QLineEdit()
        self.scan_shape.setPlaceholderText("as stored, or e.g. 141x121")
        self.scan_shape.setToolTip("Scan grid of a flat stack of frames (rows x columns)")
        f.addRow("Scan shape", self.scan_shape)
        lay.addWidget(g)

        g, f = group("Crop (half-open pixel box of each frame)")
        self.crop_on = QCheckBox("crop frames")
        self.y0, self.y1 = spin(0, 1 << 20, 0), spin(0, 1 << 20, 0)
        self.x0, self.x1 = spin(0, 1 << 20, 0), spin(0, 1 << 20, 0)
        f.addRow(self.crop_on)
        f.addRow("rows y0, y1", row(self.y0, self.y1))
        f.addRow("columns x0, x1", row(self.x0, self.x1))
        self.crop_shapes = button("Crop box from Shapes layer", self.crop_from_shapes,
                                  "Bounding box of the last shape in the selected Shapes layer")
        f.addRow(self.crop_shapes)
        lay.addWidget(g)

        g, f = group("Invalid pixels")
        self.keep_neg = QCheckBox("keep negative values (background-subtracted data)")
        f.addRow(self.keep_neg)
        self.saturation = dspin(0, 1e12, 0, 1000, 1, "Counts at or above are invalid; 0 = from file metadata")
        self.saturation.setSpecialValueText("from file")
        f.addRow("Saturation", self.saturation)
        lay.addWidget(g)

        g, f = group("Variance stabilisation")
        self.transform = combo(["anscombe", "gat", "none"], "anscombe",
                               "anscombe: photon counting; gat: integrating detector (gain, read noise)")
        f.addRow("Transform", self.transform)
        self.gain = dspin(1e-6, 1e6, 1.0, 0.1, 4, "ADU per photon")
        self.read_noise = dspin(0, 1e6, 0.0, 0.1, 3, "Gaussian read noise sigma (ADU)")
        self.offset = dspin(-1e9, 1e9, 0.0, 1.0, 3, "Gaussian mean (ADU)")
        f.addRow("gain, read noise, offset", row(self.gain, self.read_noise, self.offset))
        lay.addWidget(g)

        self.open_btn = button("Open", self.open, "Open the data lazily and show it")
        lay.addWidget(self.open_btn)
        self.preview_on = QCheckBox("show the transformed current frame")
        self.preview_on.toggled.connect(self.update_preview)
        lay.addWidget(self.preview_on)
        self.info = info_label("No data open.")
        self.info.setStyleSheet("font-family: monospace;")
        lay.addWidget(self.info)
        lay.addStretch(1)

        # the transform applies to training without re-opening; everything else takes effect on Open
        self.transform.currentIndexChanged.connect(self._push_transform)
        for w in (self.gain, self.read_noise, self.offset):
            w.valueChanged.connect(self._push_transform)
        self.transform.currentIndexChanged.connect(self.update_preview)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self._refresh_layers()

    # --- settings -> Config ---------------------------------------------------------------------
    def apply_to(self, cfg: Config) -> Config:
        d = cfg.data
        ds = self.dataset.currentText().strip()
        d.dataset = None if (not ds or ds == AUTO_DATASET) else ds.split("  ")[0]
        txt = self.scan_shape.text().strip()
        d.scan_shape = parse_shape(txt, "scan shape") if txt else None
        nd = self.ndim.currentData()
        d.ndim = None if nd == AUTO else int(nd)
        if not self.crop_on.isChecked():
            d.crop = None
        elif (d.ndim or (self.state.stack.frame_ndim if self.state.stack is not None else 2)) == 2:
            d.crop = [self.y0.value(), self.y1.value(), self.x0.value(), self.x1.value()]
        else:  # spectra: the column range is the channel range
            d.crop = [self.x0.value(), self.x1.value()]
        d.keep_negatives = self.keep_neg.isChecked()
        d.saturation = float(self.saturation.value()) or None
        d.transform = str(self.transform.currentData())
        d.gain = float(self.gain.value())
        d.read_noise = float(self.read_noise.value())
        d.offset = float(self.offset.value())
        return cfg

    def to_config(self) -> Config:
        """The shared Config with this widget's settings (data section), validated."""
        return self.state.commit(self.apply_to)

    def set_from_config(self, cfg: Config) -> None:
        d = cfg.data
        if d.dataset:
            self.dataset.setEditText(d.dataset)
        self.scan_shape.setText("x".join(map(str, d.scan_shape)) if d.scan_shape else "")
        set_combo(self.ndim, AUTO if d.ndim is None else d.ndim)
        self.crop_on.setChecked(d.crop is not None)
        if d.crop is not None:
            if len(d.crop) == 4:
                for s, v in zip((self.y0, self.y1, self.x0, self.x1), d.crop):
                    s.setValue(int(v))
            else:
                self.x0.setValue(int(d.crop[0]))
                self.x1.setValue(int(d.crop[1]))
        self.keep_neg.setChecked(d.keep_negatives)
        self.saturation.setValue(d.saturation or 0)
        set_combo(self.transform, d.transform)
        self.gain.setValue(d.gain)
        self.read_noise.setValue(d.read_noise)
        self.offset.setValue(d.offset)

    def _push_transform(self, *_):
        d = self.state.config.data
        d.transform = str(self.transform.currentData())
        d.gain = float(self.gain.value())
        d.read_noise = float(self.read_noise.value())
        d.offset = float(self.offset.value())
        self.state.config_changed.emit(self.state.config)

    # --- actions --------------------------------------------------------------------------------
    def _refresh_layers(self, *_):
        cur = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItem(FROM_FILE)
        skip = {self.state.raw_layer}
        for layer in layers_of(self.viewer, "image"):
            if layer.name not in skip and not layer.multiscale:
                self.layer_combo.addItem(layer.name)
        i = self.layer_combo.findText(cur)
        self.layer_combo.setCurrentIndex(max(i, 0))
        self.layer_combo.blockSignals(False)

    @guarded
    def _refresh_datasets(self) -> None:
        txt = self.path.text()
        if not txt:
            return
        p = Path(txt).expanduser()
        cur = self.dataset.currentText()
        self.dataset.blockSignals(True)
        self.dataset.clear()
        self.dataset.addItem(AUTO_DATASET)
        try:
            if p.suffix.lower() in (*HDF5_SUFFIXES, ".npz", ".zip") and p.is_file():
                from ..io.readers import list_datasets

                for name, label in _dataset_names(list_datasets(p)):
                    self.dataset.addItem(label, name)
        finally:
            i = self.dataset.findText(cur)
            self.dataset.setCurrentIndex(max(i, 0))
            self.dataset.blockSignals(False)

    def _file_chosen(self, *_) -> None:
        """Typing or browsing a path means the file, not a layer still chosen below."""
        i = self.layer_combo.findText(FROM_FILE)
        if i >= 0:
            self.layer_combo.setCurrentIndex(i)

    def _source(self) -> tuple[Any, str]:
        name = self.layer_combo.currentText()
        if name and name != FROM_FILE:
            if name not in self.viewer.layers:
                raise XRDError(f"layer '{name}' no longer exists")
            layer = self.viewer.layers[name]
            if layer.multiscale:
                raise XRDError(f"layer '{name}' is multiscale; open the file instead")
            from ..io.napari_io import layer_stack

            d = self.state.config.data
            stack = layer_stack(layer.data, layer.metadata, name, frame_ndim=d.ndim or 2,
                                keep_negatives=d.keep_negatives, saturation=d.saturation)
            return stack, name
        p = self.path.path("input file")
        if not p.exists():
            raise XRDError(f"{p}: file not found")
        return str(p), p.stem

    @guarded
    def open(self) -> None:
        """Open the chosen file or layer in the background; shows the result as a lazy layer."""
        if self.busy:
            return
        if self.state.running:
            raise XRDError(f"stop the {' and the '.join(sorted(self.state.running))} first: it works on the open "
                           "data, and its result would be attached to the new data")
        try:
            cfg = self.to_config()
            source, label = self._source()
        except Exception as e:
            self._failed(e)
            raise
        prev = self.state.stack
        new_src = source if isinstance(source, str) else getattr(source, "source", None)
        self._new_source = prev is None or str(prev.source) != str(new_src)
        if self._new_source:  # a centre or mask file set for other data does not describe these
            cfg = copy.deepcopy(cfg)
            cfg.method.center = None
            cfg.data.mask_file = None
        self.busy = True
        self.open_btn.setEnabled(False)
        self.info.setText("Opening…")
        self._worker = run_in_thread(
            _open_job, source, cfg, label, on_return=self._opened, on_error=self._failed, on_finish=self._done
        )

    def _failed(self, exc: BaseException) -> None:
        kept = f" ({self.state.stack.label} stays open)" if self.state.stack is not None else ""
        self.info.setText(f"Could not open: {exc}".splitlines()[0] + kept)

    def _done(self) -> None:
        self.busy = False
        self.open_btn.setEnabled(True)

    @guarded
    def _opened(self, res: dict) -> None:
        stack: ScanStack = res["stack"]
        cfg = self.state.config
        if res.get("crop") != cfg.data.crop:
            self.state.update_config("data", crop=res.get("crop"))
        crop = cfg.data.crop
        offset = (0.0,) * stack.frame_ndim
        if crop and stack.frame_ndim == 2:
            offset = (float(crop[0]), float(crop[2]))
        elif crop:
            offset = (float(crop[0]),)
        self.state.frame_offset = offset
        self.state.full_frame_shape = tuple(res["full_frame_shape"])
        name = f"{res['label']} raw"
        nscan = len(stack.scan_shape)
        translate = (0.0,) * nscan + offset
        data = counts_view(stack)
        if stack.frame_ndim == 1 and nscan == 0:
            data = data[None]
            translate = (0.0,) + translate
        old = self.state.raw_layer
        if old and old in self.viewer.layers and old != name:
            self.viewer.layers.remove(old)
        self._drop_stale_layers()
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        self.viewer.add_image(
            data, name=name, contrast_limits=res["limits"], colormap="magma", translate=translate,
            metadata={"xrd_role": "raw", "source": stack.label},
        )
        chosen = self.ndim.currentData()
        if chosen != AUTO and int(chosen) != stack.frame_ndim:  # e.g. spectra files are always 1D
            set_combo(self.ndim, stack.frame_ndim)
            self.state.config.data.ndim = stack.frame_ndim
        before = self.state.center
        self.state.set_stack(stack, name)
        if getattr(self, "_new_source", False) and self.state.config.data.mask_file:
            self.state.update_config("data", mask_file=None)
        new = None if res.get("center") is None else tuple(res["center"])
        self.state.set_center(new)
        if before is not None and new != before and stack.frame_ndim == 2:
            from napari.utils.notifications import show_info

            show_info("beam centre " + (f"({new[0]:.2f}, {new[1]:.2f}) from the file" if new is not None else
                                        "cleared: these data give none (set one in the Masks widget)"))
        self.info.setText(res["info"])
        self._refresh_layers()
        self.update_preview()

    def _drop_stale_layers(self) -> None:
        """Remove the previous stack's results and previews (denoised, residual, maps, training and symmetry
        previews): they no longer match the data, and side by side would show them against the new frames."""
        from napari.utils.notifications import show_info

        stale = [layer.name for layer in self.viewer.layers if layer.metadata.get("xrd_role") in STALE_ROLES]
        for n in stale:
            self.viewer.layers.remove(n)
        if stale:
            show_info(f"removed the previous data's result and preview layers: {', '.join(stale)}")

    @guarded
    def crop_from_shapes(self) -> None:
        """Set the crop box to the bounding box of the last shape of the active (or first) Shapes layer."""
        shapes = self.viewer.layers.selection.active
        if shapes is None or shapes._type_string != "shapes":
            cands = layers_of(self.viewer, "shapes")
            if not cands:
                raise XRDError("crop: add a Shapes layer and draw a rectangle first")
            shapes = cands[-1]
        if len(shapes.data) == 0:
            raise XRDError(f"crop: Shapes layer '{shapes.name}' has no shapes")
        verts = np.asarray([shapes.data_to_world(v) for v in shapes.data[-1]])[:, -2:]
        y0, x0 = np.ceil(verts.min(axis=0) - 1e-6).astype(int)
        y1, x1 = np.floor(verts.max(axis=0) + 1e-6).astype(int) + 1
        y0, x0 = max(int(y0), 0), max(int(x0), 0)
        if y1 <= y0 or x1 <= x0:
            raise XRDError(f"crop: the last shape in '{shapes.name}' is empty")
        self.y0.setValue(y0)
        self.y1.setValue(int(y1))
        self.x0.setValue(x0)
        self.x1.setValue(int(x1))
        self.crop_on.setChecked(True)

    def _on_step(self, *_):
        if self.preview_on.isChecked():
            self.update_preview()

    @guarded
    def update_preview(self, *_) -> None:
        """Show the variance-stabilised current frame (NaN where invalid) as a layer."""
        from ..physics.vst import forward

        if not self.preview_on.isChecked():
            return
        stack = self.state.working_stack()
        if stack is None:
            return
        i = scan_index(self.viewer, stack.scan_shape, stack.frame_ndim)
        x, v = stack.counts(stack.frame(i))
        d = self.state.config.data
        t = np.asarray(forward(x, str(self.transform.currentData()), d.gain, d.read_noise, d.offset), np.float32)
        t = np.where(v, t, np.nan).astype(np.float32)
        if t.ndim == 1:
            t = t[None]
        off = self.state.frame_offset if len(self.state.frame_offset) == t.ndim else (0.0,) * t.ndim
        set_layer(self.viewer, "transformed frame", t, contrast_limits=robust_limits(t), colormap="viridis",
                  translate=off, metadata={"xrd_role": "preview"})  # removed when other data open


__all__ = ["LoadWidget", "counts_view"]
