"""Dock widget 4: denoise the whole stack in the background and compare raw, denoised and residuals."""

from __future__ import annotations

import copy

import tempfile
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QSpinBox, QTableWidget, QTableWidgetItem, QWidget

from ..config import Config, InferConfig
from ..errors import Cancelled, XRDError
from ._common import (
    check_save,
    gui_words,
    PathField,
    PlotCanvas,
    button,
    combo,
    error_line,
    fmt_seconds,
    go_to_frame,
    group,
    guarded,
    layers_of,
    row,
    run_controls,
    run_job,
    scan_index,
    spin,
    vbox,
)
from ._helpers import psnr_sqrt, roi_sums
from ._state import Result, get_state

MEMORY_LIMIT = 512 * 2**20  # bytes of float32 output kept in memory; larger results go to an HDF5 file
NO_REFERENCE = "(none)"
OUT_AUTO, OUT_MEMORY, OUT_FILE = "auto", "memory", "file"
RESULT_FILTER = "HDF5 (*.h5 *.hdf5)"
MAP_RAW, MAP_DEN = "ROI map raw", "ROI map denoised"


def _flat(a, frame_ndim: int):
    return a.reshape((-1,) + tuple(a.shape[a.ndim - frame_ndim:]))


def _read_lazy(path: Path):
    """The denoised dataset of a result file as a lazy array (and the file's validity, if stored)."""
    from ..io.writers import read_result

    den, _, _ = read_result(path)
    if not isinstance(den, da.Array):
        chunks = (1,) * (den.ndim - 2) + tuple(den.shape[-2:]) if den.ndim > 2 else tuple(den.shape)
        den = da.from_array(den, chunks=chunks, lock=True)
    return den


def _predict_job(post, model, stack, output, infer: InferConfig, prov: dict, cancel: threading.Event,
                 roi, want_maps: bool, center=None):
    """Worker thread: predict (streaming), then the ROI maps; progress goes through ``post``."""
    from ..inference import predict_stack

    t0 = time.monotonic()

    def progress(done, total):
        post(("progress", "denoising", int(done), int(total), time.monotonic() - t0))

    notes: list[str] = []
    res = predict_stack(model, stack, output, infer=infer, progress=progress, cancel=cancel, overwrite=True,
                        provenance=prov, center=center, notes=notes)
    den = _read_lazy(Path(res)) if output is not None else res
    maps = {}
    if want_maps and len(stack.scan_shape) == 2 and stack.frame_ndim == 2:
        n = stack.n_frames
        flat_den = _flat(den, stack.frame_ndim)
        raw_s = np.zeros(n)
        den_s = np.zeros(n)
        step = max(1, int(infer.chunk_frames))
        t1 = time.monotonic()
        for c0 in range(0, n, step):
            if cancel.is_set():
                raise Cancelled("virtual-detector maps cancelled")
            c1 = min(n, c0 + step)
            c, v = stack.counts(stack.frames(c0, c1))
            r = np.where(v, c, np.nan)
            d = np.asarray(flat_den[c0:c1])
            raw_s[c0:c1], den_s[c0:c1] = roi_sums(r, d, roi)
            post(("progress", "ROI maps", c1, n, time.monotonic() - t1))
        maps = {MAP_RAW: raw_s.reshape(stack.scan_shape), MAP_DEN: den_s.reshape(stack.scan_shape)}
    return {"data": den, "path": None if output is None else Path(output), "maps": maps, "notes": notes}


def _residual_block(r, d):
    from ..qc import poisson_residuals

    return poisson_residuals(r, d)


def _import_quietly(name: str) -> None:
    import importlib

    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the profile reports a missing pyFAI itself when it needs it
        pass


class PredictWidget(QWidget):
    """Denoise the stack, show raw | denoised | residual side by side, ROI maps, profiles and metrics."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        # pyFAI takes about a second to import: do it now in the background, not on the first profile
        threading.Thread(target=_import_quietly, args=("pyFAI.integrator.azimuthal",), daemon=True).start()
        self._worker = None
        self._cancel = threading.Event()
        box = self._box = {"cancel": self._cancel}
        self.destroyed.connect(lambda *_: box["cancel"].set())  # viewer closed: stop predicting
        self._hidden: list[str] = []
        self.metrics: dict[str, tuple[float, float]] = {}  # current frame: name -> (raw, denoised)
        self.frame_index = 0
        self.profile = None
        lay = vbox(self)

        g, f = group("Inference")
        self.batch = spin(1, 4096, 4)
        self.chunk = spin(1, 1 << 20, 16, tip="frames read and written per chunk")
        f.addRow("batch, frames per chunk", row(self.batch, self.chunk))
        self.tile = spin(16, 1 << 16, 512, 16, "frames larger than this are tiled")
        self.overlap = spin(0, 4096, 32, 4, "tile overlap (blended)")
        f.addRow("tile, overlap", row(self.tile, self.overlap))
        self.j_inv = QCheckBox("J-invariant (n2s: sum over mask phases; slower)")
        self.tta = QCheckBox("test-time augmentation (8 rotations/reflections)")
        self.flux = QCheckBox("flux correction (along the rings with a beam centre or PONI, else whole frame; 2D)")
        self.flux.setChecked(True)
        self.flux.setToolTip(f"Scale the result so that, over windows of {InferConfig().profile_window} one-pixel "
                             "rings, its flux is the counts' (integrated intensities keep the data's). Rings need a "
                             "beam centre (Masks widget, or the file's) or a PONI; without one, each frame of integer "
                             "counts keeps its total counts. Spectra (1D) are not corrected.")
        f.addRow(self.j_inv)
        f.addRow(self.tta)
        f.addRow(self.flux)
        self.out_mode = combo([(OUT_AUTO, "in memory if small, else a temporary HDF5"),
                               (OUT_MEMORY, "in memory"), (OUT_FILE, "HDF5 file below")], OUT_AUTO)
        f.addRow("Result", self.out_mode)
        self.out_path = PathField("save", RESULT_FILTER, "denoised.h5 (streamed, read back lazily)")
        f.addRow("File", self.out_path)
        self.out_replace = QCheckBox("replace an existing file")
        f.addRow(self.out_replace)
        self.maps_on = QCheckBox("virtual-detector maps (ROI sums per scan point; 2D scans)")
        self.maps_on.setChecked(True)
        f.addRow(self.maps_on)
        lay.addWidget(g)

        self.run_btn = button("Denoise stack", self.start)
        self.stop_btn = button("Stop", self.stop)
        self.progress, self.status = run_controls(lay, self.run_btn, self.stop_btn, "No result yet.")

        g, f = group("Compare")
        self.grid_on = QCheckBox("side by side: raw | denoised | residual (linked)")
        self.grid_on.toggled.connect(self.set_grid)
        f.addRow(self.grid_on)
        self.reference = QComboBox()
        self.reference.setToolTip("a high-SNR or ground-truth layer for PSNR on the square-root scale")
        f.addRow("Reference", self.reference)
        self.follow = QCheckBox("update profile and metrics with the current frame")
        self.follow.setChecked(True)
        self.update_btn = button("Update", self.update_frame_views)
        f.addRow(row(self.follow, self.update_btn))
        self.spectrum = QSpinBox()  # spectra are shown as an image (one row each): no slider picks one
        self.spectrum.setToolTip("which spectrum the table and plot show (1D data)")
        self.spectrum.valueChanged.connect(lambda *_: self.update_frame_views())
        f.addRow("Spectrum", self.spectrum)
        self._form = f
        self._show_spectrum(False)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["current frame", "raw", "denoised"])
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(130)
        f.addRow(self.table)
        self.plot = PlotCanvas(2.4)
        f.addRow(self.plot)
        lay.addWidget(g)
        lay.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._on_step)
        self.state.stack_changed.connect(self._on_stack_changed)
        self._refresh_layers()

    # --- settings -> Config ---------------------------------------------------------------------
    def apply_to(self, cfg: Config) -> Config:
        i = cfg.infer
        i.batch_size = int(self.batch.value())
        i.chunk_frames = int(self.chunk.value())
        i.tile = int(self.tile.value())
        i.overlap = int(self.overlap.value())
        i.j_invariant = self.j_inv.isChecked()
        i.tta = self.tta.isChecked()
        i.preserve_profile = None if self.flux.isChecked() else False  # None: rings when known, else whole frame
        return cfg

    def to_config(self) -> Config:
        return self.state.commit(self.apply_to)

    def _refresh_layers(self, *_):
        cur = self.reference.currentText()
        self.reference.blockSignals(True)
        self.reference.clear()
        self.reference.addItem(NO_REFERENCE)
        for layer in layers_of(self.viewer, "image"):
            if layer.name != self.state.raw_layer and layer.metadata.get("xrd_role") is None:
                self.reference.addItem(layer.name)
        i = self.reference.findText(cur)
        self.reference.setCurrentIndex(max(i, 0))
        self.reference.blockSignals(False)

    # --- prediction -----------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def _output_path(self, stack) -> Path | None:
        mode = self.out_mode.currentData()
        nbytes = stack.n_frames * int(np.prod(stack.frame_shape)) * 4
        if mode == OUT_MEMORY or (mode == OUT_AUTO and nbytes <= MEMORY_LIMIT):
            return None
        if mode == OUT_FILE:
            p = self.out_path.path("result file")
            if p.suffix.lower() not in (".h5", ".hdf5"):
                raise XRDError(f"{p}: the streamed result must be an HDF5 file (.h5)")
            return check_save(p, self.out_replace, self.state, "replace an existing file")
        stem = Path(str(stack.source)).stem or "stack"
        return Path(tempfile.mkdtemp(prefix="xrd-denoise-")) / f"{stem}_denoised.h5"

    @guarded
    def start(self) -> None:
        """Denoise the working stack with the current model in the background."""
        if self.is_running:
            return
        if "training" in self.state.running:
            raise XRDError("training is running: stop it or wait for it first (the model is still changing)")
        model = self.state.model
        if model is None:
            raise XRDError("no model: train one in the Train widget or load a model file first")
        stack = self.state.working_stack()
        if stack is None:
            raise XRDError("no data: open a file in the Load widget first")
        cfg = self.to_config()
        output = self._output_path(stack)
        from ._state import adopt_model_settings

        self._run = (model, adopt_model_settings(copy.deepcopy(cfg), model.config))  # what the result records
        from ..api import provenance

        prov = provenance(model.config, stack, {"model_version": str(getattr(model, "version", "")),
                                                "interface": "napari"})
        self._cancel = threading.Event()
        self._box["cancel"] = self._cancel
        cancel = self._cancel
        roi = self.state.roi
        want_maps = self.maps_on.isChecked()
        infer = cfg.infer
        self.progress.setRange(0, max(stack.n_frames, 1))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.status.setText(f"Denoising {stack.n_frames} frames" + (f" into {output}" if output else " in memory"))
        self._set_running(True)
        self._worker = run_job(
            lambda post: _predict_job(post, model, stack, output, infer, prov, cancel, roi, want_maps,
                                      cfg.method.center),
            on_item=self._on_item,
            on_return=self._on_result,
            on_error=self._failed,
            on_finish=self._finished,
        )

    def stop(self) -> None:
        if self.is_running:
            self._cancel.set()
            self.stop_btn.setEnabled(False)
            self.progress.setFormat("stopping…")

    def _failed(self, exc: BaseException) -> None:
        """Stopped by the user or failed (the notification is already shown): no result, and the bar says so."""
        stopped = isinstance(exc, Cancelled)
        self.status.setText(f"{'Stopped' if stopped else 'Failed'}: {error_line(exc)}")
        self.progress.setFormat("stopped" if stopped else "failed")

    def _set_running(self, running: bool) -> None:
        (self.state.running.add if running else self.state.running.discard)("prediction")
        self.run_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)

    def _finished(self) -> None:
        self._worker = None
        self._set_running(False)

    def _on_item(self, item) -> None:
        _, what, done, total, elapsed = item
        if self.progress.maximum() != total:
            self.progress.setRange(0, max(int(total), 1))
        self.progress.setValue(int(done))
        eta = elapsed / done * (total - done) if done else None
        self.progress.setFormat(f"{what} {done}/{total}  left {fmt_seconds(eta)}")

    @guarded
    def _on_result(self, res: dict) -> None:
        model, run_cfg = self._run
        result = Result(data=res["data"], path=res["path"], method=model.config.method.name,
                        config=run_cfg, maps=res["maps"])
        self.state.set_result(result)
        self.show_result(result)
        where = f" (file {result.path})" if result.path else ""
        self.status.setText(f"Denoised {self.state.stack.n_frames} frames{where}.")
        self.progress.setFormat("done")
        notes = res.get("notes") or []
        if notes:
            from napari.utils.notifications import show_warning

            notes = [gui_words(n) for n in notes]  # engine notes name command-line options
            for note in notes:
                show_warning(note)
            self.status.setText(f"Denoised {self.state.stack.n_frames} frames{where}. Warning: {notes[0]}")
            self.progress.setFormat("done, with a warning")

    # --- layers ---------------------------------------------------------------------------------
    def layer_names(self) -> dict[str, str]:
        base = self.state.raw_layer or "data"
        stem = base[:-4] if base.endswith(" raw") else base
        return {"raw": base, "denoised": f"{stem} denoised", "residual": f"{stem} residual"}

    def show_result(self, result: Result) -> None:
        """Add the denoised stack and its Poisson residual (lazy) as layers, plus the ROI maps."""
        names = self.layer_names()
        raw_layer = self.viewer.layers[names["raw"]] if names["raw"] in self.viewer.layers else None
        stack = self.state.stack
        translate = tuple(raw_layer.translate) if raw_layer is not None else None
        den = result.data
        if raw_layer is not None and tuple(raw_layer.data.shape) != tuple(den.shape):
            den = den.reshape(raw_layer.data.shape)
        limits = tuple(raw_layer.contrast_limits) if raw_layer is not None else None
        for key in ("denoised", "residual"):
            if names[key] in self.viewer.layers:
                self.viewer.layers.remove(names[key])
        kw = {} if translate is None else {"translate": translate}
        meta = {"xrd_role": "denoised", "provenance": self.state.result_provenance(result)}  # for napari's Save layer
        if stack is not None:
            meta["frame_ndim"] = stack.frame_ndim
        self.viewer.add_image(den, name=names["denoised"], colormap="magma", metadata=meta,
                              **({"contrast_limits": limits} if limits else {}), **kw)
        if raw_layer is not None:
            raw_da = raw_layer.data
            den_da = den if isinstance(den, da.Array) else da.from_array(np.asarray(den), chunks=raw_da.chunks)
            den_da = den_da.rechunk(raw_da.chunks)
            res_da = da.map_blocks(_residual_block, raw_da, den_da, dtype=np.float32)
            self.viewer.add_image(res_da, name=names["residual"], colormap="coolwarm", contrast_limits=(-3.0, 3.0),
                                  metadata={"xrd_role": "residual"}, **kw)
        for name, m in result.maps.items():
            self._add_map(name, m, stack)
        if self.grid_on.isChecked():
            self.set_grid(True)
        self.update_frame_views()

    def _add_map(self, name: str, m: np.ndarray, stack) -> None:
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        fs = stack.frame_shape
        scale = (fs[0] / m.shape[0], fs[1] / m.shape[1])
        off = self.state.frame_offset if len(self.state.frame_offset) == 2 else (0.0, 0.0)
        translate = tuple(off[k] - 0.5 + 0.5 * scale[k] for k in range(2))
        finite = m[np.isfinite(m)]
        lims = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lims[1] <= lims[0]:
            lims = (lims[0], lims[0] + 1.0)
        layer = self.viewer.add_image(m.astype(np.float32), name=name, colormap="viridis", scale=scale,
                                      translate=translate, contrast_limits=lims, metadata={"xrd_role": "map"},
                                      interpolation2d="nearest")
        layer.mouse_drag_callbacks.append(self._map_clicked)
        layer.mouse_double_click_callbacks.append(self._map_clicked)

    def _map_clicked(self, layer, event) -> None:
        self.jump_to(layer, event.position)

    def jump_to(self, map_layer, world_position) -> tuple[int, int] | None:
        """Move the scan sliders to the scan point under ``world_position`` of a ROI map layer."""
        stack = self.state.stack
        if stack is None:
            return None
        pos = np.asarray(world_position, dtype=float)[-2:]
        scale = np.asarray(map_layer.scale)[-2:]
        translate = np.asarray(map_layer.translate)[-2:]
        ij = np.round((pos - translate) / scale).astype(int)
        sy, sx = map_layer.data.shape
        if not (0 <= ij[0] < sy and 0 <= ij[1] < sx):
            return None
        go_to_frame(self.viewer, (int(ij[0]), int(ij[1])), stack.frame_ndim)
        return int(ij[0]), int(ij[1])

    @guarded
    def set_grid(self, on: bool) -> None:
        """Linked side-by-side view of raw, denoised, residual (and the maps); other layers hidden meanwhile."""
        names = self.layer_names()
        keep = [names["raw"], names["denoised"], names["residual"], MAP_RAW, MAP_DEN]
        if on:
            present = [n for n in keep if n in self.viewer.layers]
            if len(present) < 2:
                raise XRDError("side by side: denoise the stack first")
            self._hidden = []
            for layer in self.viewer.layers:
                if layer.name not in present and layer.visible:
                    layer.visible = False
                    self._hidden.append(layer.name)
            for n in present:
                self.viewer.layers[n].visible = True
            self.viewer.grid.stride = 1
            self.viewer.grid.enabled = True
        else:
            self.viewer.grid.enabled = False
            for n in self._hidden:
                if n in self.viewer.layers:
                    self.viewer.layers[n].visible = True
            self._hidden = []

    def _on_stack_changed(self, stack=None, *_) -> None:
        self._clear()
        one_d = stack is not None and stack.frame_ndim == 1 and stack.n_frames > 1
        if one_d:
            self.spectrum.blockSignals(True)
            self.spectrum.setRange(0, stack.n_frames - 1)
            self.spectrum.setValue(0)
            self.spectrum.blockSignals(False)
        self._show_spectrum(one_d)

    def _show_spectrum(self, on: bool) -> None:
        self.spectrum.setVisible(on)
        label = self._form.labelForField(self.spectrum)
        if label is not None:
            label.setVisible(on)

    def _clear(self) -> None:
        self.table.setRowCount(0)
        self.plot.ax.clear()
        self.plot.draw()
        self.metrics = {}
        self.profile = None

    # --- current-frame views --------------------------------------------------------------------
    def _on_step(self, *_):
        if self.follow.isChecked() and self.state.result is not None and not self.is_running:
            self.update_frame_views()

    def _frames(self):
        stack = self.state.working_stack()
        res = self.state.result
        if stack is None or res is None:
            raise XRDError("no result: denoise the stack first")
        if stack.frame_ndim == 1:
            i = min(int(self.spectrum.value()), stack.n_frames - 1)
        else:
            i = scan_index(self.viewer, stack.scan_shape, stack.frame_ndim)
        c, v = stack.counts(stack.frame(i))
        raw = np.where(v, c, np.nan).astype(np.float32)
        den = np.asarray(_flat(res.data, stack.frame_ndim)[i], dtype=np.float32)
        return stack, i, raw, den, v

    def _reference_frame(self, stack, i: int):
        name = self.reference.currentText()
        if not name or name == NO_REFERENCE or name not in self.viewer.layers:
            return None
        data = self.viewer.layers[name].data
        fs = stack.frame_shape
        nd = stack.frame_ndim
        shape = tuple(data.shape)
        if shape[len(shape) - nd:] == fs:
            lead = shape[: len(shape) - nd]
            if not lead:
                return np.asarray(data, dtype=np.float32)
            if int(np.prod(lead)) == stack.n_frames:
                return np.asarray(_flat(data, nd)[i], dtype=np.float32)
        full = self.state.full_frame_shape
        if full is not None and shape[len(shape) - nd:] == tuple(full):
            off = [int(o) for o in self.state.frame_offset]
            sl = tuple(slice(o, o + s) for o, s in zip(off, fs))
            lead = shape[: len(shape) - nd]
            if lead and int(np.prod(lead)) != stack.n_frames:
                raise XRDError(f"reference layer '{name}' has {int(np.prod(lead))} frames, the data {stack.n_frames}")
            fr = np.asarray(data) if not lead else np.asarray(_flat(data, nd)[i])
            return fr[sl].astype(np.float32)
        raise XRDError(f"reference layer '{name}' of shape {shape} does not match the frames {fs}")

    @guarded
    def update_frame_views(self, *_) -> None:
        """Metrics table and azimuthal profile of the current frame."""
        if self.state.result is None:
            return
        from ..qc import chi2_per_frame, poisson_residuals, residual_stats

        stack, i, raw, den, v = self._frames()
        ok = v & np.isfinite(den)
        rs = residual_stats(poisson_residuals(raw, den))
        chi2 = float(np.ravel(chi2_per_frame(raw[None], den[None]))[0])
        nan = float("nan")
        m = {
            "total counts": (float(np.nansum(np.where(ok, raw, 0))), float(np.nansum(np.where(ok, den, 0)))),
            "reduced chi² (Poisson)": (nan, chi2),
            "residual mean (≈ 0)": (nan, rs["mean"]),
            "residual variance (≈ 1)": (nan, rs["var"]),
        }
        ref = self._reference_frame(stack, i)
        if ref is not None:
            m["PSNR √-scale vs ref (dB)"] = (psnr_sqrt(raw, ref, ok), psnr_sqrt(den, ref, ok))
        self.metrics = m
        self.frame_index = i
        self._fill_table(m)
        self._draw_profile(stack, raw, den, v)

    def _fill_table(self, m: dict) -> None:
        self.table.setRowCount(len(m))
        st = self.state.stack
        what = "spectrum" if st is not None and st.frame_ndim == 1 else "frame"
        self.table.setHorizontalHeaderLabels([f"{what} {self.frame_index}", "raw", "denoised"])
        for r, (k, (a, b)) in enumerate(m.items()):
            self.table.setItem(r, 0, QTableWidgetItem(k))
            self.table.setItem(r, 1, QTableWidgetItem("" if not np.isfinite(a) else f"{a:.4g}"))
            self.table.setItem(r, 2, QTableWidgetItem("" if not np.isfinite(b) else f"{b:.4g}"))
        self.table.resizeColumnsToContents()

    def _draw_profile(self, stack, raw, den, v) -> None:
        ax = self.plot.ax
        ax.clear()
        center = self.state.center
        geometry = stack.geometry if not self.state.config.data.crop else None
        if stack.frame_ndim == 1:
            x = np.arange(raw.shape[0])
            ax.plot(x, raw, ".", ms=2, color="0.55", label="raw")
            ax.plot(x, den, "-", lw=1.0, color="tab:red", label="denoised")
            ax.set_xlabel("channel")
            ax.set_ylabel("counts")
            ax.legend(fontsize=7)
            self.profile = (x, raw, den)
            self.plot.draw()
            return
        if center is None and geometry is None:
            ax.text(0.5, 0.5, "set the beam centre (Masks widget)\nto see the azimuthal profile",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
            self.profile = None
            self.plot.draw()
            return
        from ..physics.geometry import azimuthal_profile

        kw = {"center": center} if center is not None else {"geometry": geometry}
        r0, p_raw, _ = azimuthal_profile(raw, v, **kw)
        r1, p_den, _ = azimuthal_profile(den, v & np.isfinite(den), **kw)
        self.profile = (r0, p_raw, p_den)
        ax.plot(r0, p_raw, "-", lw=0.8, color="0.55", label="raw")
        ax.plot(r1, p_den, "-", lw=1.2, color="tab:red", label="denoised")
        ax.set_xlabel("radius (px)" if center is not None else "q (nm⁻¹)")
        ax.set_ylabel("mean counts / pixel")
        ax.set_title("azimuthal profile, current frame", fontsize=9)
        ax.legend(fontsize=7)
        self.plot.draw()


__all__ = ["PredictWidget"]
