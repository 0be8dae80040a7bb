"""Dock widget 2: ROI, excluded pixels (painted, threshold, files), beam centre and symmetry check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QCheckBox, QWidget

from ..config import Config
from ..errors import XRDError
from ._common import (
    check_save,
    gui_words,
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
from ..io.stack import spread_indices
from ..io.writers import save_mask
from ..physics.masks import find_hot_dead
from ._helpers import crop_frame, place_in_frame, shapes_mask
from ._state import get_state

EXCL_LAYER = "exclusions"
CENTER_LAYER = "beam centre"
PARTNER_LAYER = "symmetric partner"
COMMON_LAYER = "common mask"
# label values in the exclusions layer (any nonzero value = excluded)
PAINTED, HOT, DEAD, FROM_FILE = 1, 2, 3, 4
MASK_FILTER = "Mask (*.npy *.npz *.tif *.tiff *.edf *.h5);;All files (*)"


def _sample_frames(stack, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Worker thread: ``n`` frames spread over the scan, as counts and validity."""
    idx = spread_indices(stack.n_frames, n)
    cs, vs = [], []
    for i in idx:
        c, v = stack.counts(stack.frame(int(i)))
        cs.append(c)
        vs.append(v)
    return np.stack(cs), np.stack(vs)


def _hot_dead_job(stack, n: int, k: float, size: int):
    counts, valid = _sample_frames(stack, n)
    hot, dead = find_hot_dead(counts, valid, k=k, size=size)
    return hot, dead, counts.shape[0]


class MaskWidget(QWidget):
    """ROI and exclusions (Shapes, Labels, threshold, mask files), beam centre, symmetry preview and score."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.score: float | None = None
        self._workers = []
        lay = vbox(self)

        g, f = group("Region of interest")
        self.roi_btn = button("ROI from Shapes layer", self.roi_from_shapes,
                              "Polygons, rectangles and ellipses of the active (or last) Shapes layer")
        self.roi_clear = button("Clear ROI", lambda: self._set_roi(None))
        f.addRow(row(self.roi_btn, self.roi_clear))
        self.roi_limits = QCheckBox("pixels outside the ROI are excluded from training and output")
        self.roi_limits.toggled.connect(lambda on: self.state.set_masks(roi_limits=on))
        f.addRow(self.roi_limits)
        self.roi_info = info_label("No ROI: virtual-detector maps integrate the whole frame.")
        f.addRow(self.roi_info)
        lay.addWidget(g)

        g, f = group("Excluded pixels (nonzero = excluded)")
        self.paint_btn = button("Paint exclusions", self.paint, "Adds an 'exclusions' Labels layer to paint on")
        self.clear_btn = button("Clear", self.clear_exclusions)
        f.addRow(row(self.paint_btn, self.clear_btn))
        self.hot_k = dspin(1.5, 1e6, 10.0, 1.0, 1, "hot: mean count above k x the median-filtered mean")
        self.n_frames = spin(1, 100000, 20, tip="frames sampled across the scan")
        f.addRow("hot factor k, frames", row(self.hot_k, self.n_frames))
        self.find_btn = button("Find hot / dead pixels", self.find_hot_dead)
        f.addRow(self.find_btn)
        self.mask_path = PathField("save", MASK_FILTER, "mask file (npy, TIFF, EDF)")
        f.addRow("Mask file", self.mask_path)
        self.load_btn = button("Load", self.load_mask_file, "nonzero = masked (pyFAI / Dioptas)")
        self.save_btn = button("Save", self.save_mask_file, "all invalid pixels, detector frame size")
        f.addRow(row(self.load_btn, self.save_btn))
        self.mask_replace = QCheckBox("Save may replace an existing file")
        f.addRow(self.mask_replace)
        self.excl_info = info_label("")
        f.addRow(self.excl_info)
        lay.addWidget(g)

        g, f = group("Beam centre and symmetry")
        self.cy = dspin(-1e6, 1e6, 0.0, 0.5, 2)
        self.cx = dspin(-1e6, 1e6, 0.0, 0.5, 2)
        f.addRow("centre y, x (px)", row(self.cy, self.cx))
        self.pts_btn = button("Centre from Points", self.center_from_points, "last point of the active Points layer")
        self.set_btn = button("Use y, x", self.center_from_fields)
        f.addRow(row(self.pts_btn, self.set_btn))
        self.poni = PathField("open", "PONI (*.poni);;All files (*)", "pyFAI PONI file")
        self.poni_btn = button("Centre from PONI", self.center_from_poni)
        self.dioptas = QCheckBox("made by Dioptas (flipped)")
        f.addRow("PONI", self.poni)
        f.addRow(row(self.poni_btn, self.dioptas))
        self.kind = combo(["friedel", "mirror"], "friedel", "friedel: 180-degree rotation; mirror: a line")
        self.angle = dspin(-360, 360, 0.0, 5.0, 1, "mirror line angle from the x axis towards +y (degrees)")
        f.addRow("symmetry, angle", row(self.kind, self.angle))
        self.guard = dspin(1.0, 1e4, 3.0, 0.5, 1, "pixels around the centre (or line) left out")
        self.interp = combo(["lanczos3", "cubic", "linear"], "lanczos3",
                            "interpolation of the partner image between pixels; lanczos3 keeps sharp rings sharp")
        f.addRow("centre guard (px), partners", row(self.guard, self.interp))
        self.preview_btn = button("Preview symmetry", self.preview_symmetry,
                                  "partner image, common mask and score for the current frame")
        self.refine_btn = button("Refine centre", self.refine_center, "maximise the symmetry score nearby")
        f.addRow(row(self.preview_btn, self.refine_btn))
        self.center_info = info_label("Centre not set.")
        f.addRow(self.center_info)
        lay.addWidget(g)
        lay.addStretch(1)

        for w in (self.angle, self.guard):
            w.valueChanged.connect(self._push)
        self.kind.currentIndexChanged.connect(self._push)
        self.interp.currentIndexChanged.connect(self._push)
        self.state.center_changed.connect(self._on_center)
        self.state.stack_changed.connect(self._on_stack)
        self.state.collect.connect(self.sync_exclusions)
        self.set_from_config(self.state.config)
        self._on_center(self.state.center)

    # --- settings -> Config ---------------------------------------------------------------------
    def apply_to(self, cfg: Config) -> Config:
        m = cfg.method
        m.symmetry = str(self.kind.currentData())
        m.mirror_angle = float(self.angle.value())
        m.center_guard = float(self.guard.value())
        m.partner_interp = str(self.interp.currentData())
        m.center = None if self.state.center is None else [float(c) for c in self.state.center]
        return cfg

    def to_config(self) -> Config:
        return self.state.commit(self.apply_to)

    def set_from_config(self, cfg: Config) -> None:
        m = cfg.method
        set_combo(self.kind, m.symmetry)
        self.angle.setValue(m.mirror_angle)
        self.guard.setValue(m.center_guard)
        set_combo(self.interp, m.partner_interp)
        if m.poni:
            self.poni.setText(m.poni)
        if m.center is not None:
            self.cy.setValue(m.center[0])
            self.cx.setValue(m.center[1])

    def _push(self, *_):
        self.apply_to(self.state.config)
        self.state.config_changed.emit(self.state.config)

    # --- helpers --------------------------------------------------------------------------------
    def _stack(self):
        st = self.state.stack
        if st is None:
            raise XRDError("no data: open a file in the Load widget first")
        if st.frame_ndim != 2:
            raise XRDError("masks and centre apply to 2D frames; these are 1D spectra")
        return st

    def _offset(self) -> tuple[float, float]:
        off = self.state.frame_offset
        return (float(off[0]), float(off[1])) if len(off) == 2 else (0.0, 0.0)

    def _current_frame(self):
        st = self.state.working_stack()
        i = scan_index(self.viewer, st.scan_shape, st.frame_ndim)
        c, v = st.counts(st.frame(i))
        return c, v, i

    def _on_stack(self, stack) -> None:
        for name in (EXCL_LAYER, PARTNER_LAYER, COMMON_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.roi_info.setText("No ROI: virtual-detector maps integrate the whole frame.")
        self.excl_info.setText("")
        self.score = None

    # --- ROI ------------------------------------------------------------------------------------
    @guarded
    def roi_from_shapes(self) -> None:
        st = self._stack()
        layer = self.viewer.layers.selection.active
        if layer is None or layer._type_string != "shapes":
            cands = layers_of(self.viewer, "shapes")
            if not cands:
                raise XRDError("ROI: add a Shapes layer and draw a polygon, rectangle or ellipse first")
            layer = cands[-1]
        verts = [np.asarray([layer.data_to_world(p) for p in v]) for v in layer.data]
        roi = shapes_mask(verts, list(layer.shape_type), st.frame_shape, self._offset())
        if not roi.any():
            raise XRDError(f"ROI: the shapes in '{layer.name}' do not cover any pixel of the frame")
        self._set_roi(roi, layer.name)

    def _set_roi(self, roi, name: str = "") -> None:
        self.state.set_masks(roi=roi, roi_limits=self.roi_limits.isChecked())
        if roi is None:
            self.roi_info.setText("No ROI: virtual-detector maps integrate the whole frame.")
        else:
            self.roi_info.setText(f"ROI from '{name}': {int(roi.sum())} pixels.")

    # --- exclusions -----------------------------------------------------------------------------
    def _excl_layer(self, create: bool = True):
        if EXCL_LAYER in self.viewer.layers:
            return self.viewer.layers[EXCL_LAYER]
        if not create:
            return None
        st = self._stack()
        layer = self.viewer.add_labels(np.zeros(st.frame_shape, dtype=np.uint8), name=EXCL_LAYER,
                                       translate=self._offset(), opacity=0.6)
        for ev in ("paint", "data", "set_data"):
            emitter = getattr(layer.events, ev, None)
            if emitter is not None:
                emitter.connect(self.sync_exclusions)
        return layer

    @guarded
    def paint(self) -> None:
        layer = self._excl_layer()
        layer.selected_label = PAINTED
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"

    def sync_exclusions(self, *_) -> None:
        """Copy the exclusions layer into the shared state (called before training or prediction)."""
        layer = self._excl_layer(create=False)
        st = self.state.stack
        if layer is None or st is None or layer.data.shape != st.frame_shape:
            if layer is None and self.state.exclusions is not None:
                self.state.set_masks(exclusions=None)
            return
        ex = np.asarray(layer.data) != 0
        n = int(ex.sum())
        if self.state.exclusions is None or int(self.state.exclusions.sum()) != n:
            self.excl_info.setText(f"{n} pixels excluded by the user.")
        self.state.exclusions = ex

    def _add_to_layer(self, mask: np.ndarray, value: int) -> None:
        layer = self._excl_layer()
        data = np.asarray(layer.data).copy()
        data[mask & (data == 0)] = value
        layer.data = data
        self.sync_exclusions()
        self.state.set_masks(exclusions=self.state.exclusions)

    @guarded
    def clear_exclusions(self) -> None:
        layer = self._excl_layer(create=False)
        if layer is not None:
            layer.data = np.zeros_like(np.asarray(layer.data))
        self.state.set_masks(exclusions=None)
        if self.state.config.data.mask_file:
            self.state.update_config("data", mask_file=None)  # the cleared mask is not replayed
        self.excl_info.setText("No pixels excluded by the user.")

    @guarded
    def find_hot_dead(self) -> None:
        st = self._stack()
        self.find_btn.setEnabled(False)
        self.excl_info.setText("Searching for hot and dead pixels…")
        self._workers.append(run_in_thread(
            _hot_dead_job, st, int(self.n_frames.value()), float(self.hot_k.value()), 5,
            on_return=self._found, on_finish=lambda: self.find_btn.setEnabled(True),
        ))

    @guarded
    def _found(self, res) -> None:
        hot, dead, n = res
        self._add_to_layer(hot, HOT)
        self._add_to_layer(dead, DEAD)
        self.excl_info.setText(f"{int(hot.sum())} hot and {int(dead.sum())} dead pixels found in {n} frames "
                               f"(labels {HOT} and {DEAD}); {int(self.state.exclusions.sum())} excluded in all.")

    @guarded
    def load_mask_file(self) -> None:
        from ..io.readers import load_mask

        st = self._stack()
        p = self.mask_path.path("mask file")
        valid = np.asarray(load_mask(p), dtype=bool)
        excluded = ~valid
        if excluded.shape != st.frame_shape:
            origin = tuple(int(o) for o in self._offset())
            try:
                excluded = crop_frame(excluded, st.frame_shape, origin)
            except XRDError as e:
                raise XRDError(f"{p}: {e}") from None
        self._add_to_layer(excluded, FROM_FILE)
        self.state.update_config("data", mask_file=str(p))
        self.excl_info.setText(f"{p.name}: {int(excluded.sum())} masked pixels added.")

    def all_excluded(self) -> np.ndarray:
        self.sync_exclusions()
        return all_excluded(self.state)

    @guarded
    def save_mask_file(self) -> None:
        p = self.mask_path.path("mask file")
        check_save(p, self.mask_replace, self.state, "Save may replace an existing file")
        ex = self.all_excluded()
        save_mask(p, ex)
        self.state.update_config("data", mask_file=str(p))
        self.excl_info.setText(f"Saved {int(ex.sum())} masked pixels to {p}")

    # --- centre and symmetry --------------------------------------------------------------------
    def _on_center(self, c) -> None:
        if c is None:
            self.center_info.setText("Centre not set.")
            if CENTER_LAYER in self.viewer.layers:  # no stale marker from other data
                self.viewer.layers.remove(CENTER_LAYER)
            return
        st = self.state.stack
        if st is not None and st.frame_ndim == 2 and not all(0 <= v < s for v, s in zip(c, st.frame_shape)):
            from napari.utils.notifications import show_warning

            show_warning(f"beam centre ({c[0]:.1f}, {c[1]:.1f}) lies outside the {st.frame_shape[0]}x"
                         f"{st.frame_shape[1]} frame: the symmetry method needs partners inside it (rings for the "
                         "flux correction are fine)")
        self.cy.blockSignals(True)
        self.cx.blockSignals(True)
        self.cy.setValue(c[0])
        self.cx.setValue(c[1])
        self.cy.blockSignals(False)
        self.cx.blockSignals(False)
        oy, ox = self._offset()
        txt = f"Centre y={c[0]:.2f}, x={c[1]:.2f} (frame pixels)"
        if oy or ox:
            txt += f"; detector y={c[0] + oy:.2f}, x={c[1] + ox:.2f}"
        self.center_info.setText(txt + ".")
        if self.state.stack is not None and self.state.stack.frame_ndim == 2:
            pos = np.array([[c[0] + oy, c[1] + ox]])
            if CENTER_LAYER in self.viewer.layers:
                layers = self.viewer.layers
                layers[CENTER_LAYER].data = pos
                i = layers.index(CENTER_LAYER)
                if i != len(layers) - 1:  # above the data (a re-opened file's raw layer is added on top)
                    layers.move(i, len(layers))
            else:
                self.viewer.add_points(pos, name=CENTER_LAYER, symbol="cross", size=9, face_color="cyan",
                                       border_color="cyan")

    @guarded
    def center_from_fields(self) -> None:
        self._stack()
        self.state.set_center((self.cy.value(), self.cx.value()))

    @guarded
    def center_from_points(self) -> None:
        self._stack()
        layer = self.viewer.layers.selection.active
        if layer is None or layer._type_string != "points" or len(layer.data) == 0:
            cands = [p for p in layers_of(self.viewer, "points") if len(p.data) and p.name != CENTER_LAYER]
            if not cands:
                cands = [p for p in layers_of(self.viewer, "points") if len(p.data)]
            if not cands:
                raise XRDError("centre: add a Points layer and click the beam centre first")
            layer = cands[-1]
        w = np.asarray(layer.data_to_world(layer.data[-1]), dtype=float)[-2:]
        oy, ox = self._offset()
        self.state.set_center((w[0] - oy, w[1] - ox))

    @guarded
    def center_from_poni(self) -> None:
        st = self._stack()
        p = self.poni.path("PONI file")
        if not p.is_file():
            raise XRDError(f"{p}: PONI file not found")
        full = tuple(self.state.full_frame_shape or st.frame_shape)
        c = _poni_center(p, full, self.dioptas.isChecked())
        oy, ox = self._offset()
        self.state.update_config("method", poni=str(p))
        self.state.set_center((c[0] - oy, c[1] - ox))

    def _center(self) -> tuple[float, float]:
        if self.state.center is None:
            raise XRDError("centre: set the beam centre first (Points layer, numbers or PONI file)")
        return self.state.center

    @guarded
    def preview_symmetry(self) -> None:
        """Partner image and common mask of the current frame as layers, and the symmetry score."""
        from napari.utils.notifications import show_warning

        from ..physics.symmetry import PartnerOperator, common_valid, symmetry_score, symmetry_warning

        self._stack()
        center = self._center()
        kind, angle, guard = str(self.kind.currentData()), float(self.angle.value()), float(self.guard.value())
        c, v, i = self._current_frame()
        partner, pv = PartnerOperator(c.shape, center, kind, angle, str(self.interp.currentData()))(c, v)
        common = common_valid(v, pv, center, guard, kind, angle)
        shown = np.where(pv, partner, np.nan).astype(np.float32)
        off = self._offset()
        set_layer(self.viewer, PARTNER_LAYER, shown, contrast_limits=robust_limits(shown), colormap="magma",
                  translate=off, metadata={"xrd_role": "preview"})
        set_layer(self.viewer, COMMON_LAYER, common.astype(np.uint8), kind="labels", translate=off, opacity=0.35,
                  metadata={"xrd_role": "preview"})
        self.score = float(symmetry_score(c, v, center, kind, angle, guard=guard))
        self.center_info.setText(
            f"Frame {i}: {kind} symmetry score {self.score:.3f} about ({center[0]:.2f}, {center[1]:.2f}); "
            f"{int(common.sum())} common valid pixels."
        )
        warn = symmetry_warning(self.score, center, kind)
        if warn:
            show_warning(gui_words(warn))

    @guarded
    def refine_center(self) -> None:
        from ..physics.symmetry import refine_center

        self._stack()
        center = self._center()
        c, v, _ = self._current_frame()
        kind, angle, guard = str(self.kind.currentData()), float(self.angle.value()), float(self.guard.value())
        self.refine_btn.setEnabled(False)

        def done(res):
            (cy, cx), score = res
            self.state.set_center((cy, cx))
            self.preview_symmetry()

        self._workers.append(run_in_thread(
            refine_center, c, v, center, 5.0, kind, angle, guard=guard,
            on_return=guarded(done), on_finish=lambda: self.refine_btn.setEnabled(True),
        ))


#: frames :func:`all_excluded` reads to find pixels the raw values mark invalid in every frame
SENTINEL_SAMPLE = 4


def all_excluded(state) -> np.ndarray:
    """Every invalid pixel of the working stack (detector + user masks, and pixels whose raw values mark
    them invalid in every one of ``SENTINEL_SAMPLE`` frames spread over the scan: sentinel-filled gaps,
    -1/-2 Pilatus pixels, permanently saturated pixels), in the full detector frame.

    Pixels outside the crop are not marked (the crop is a separate setting).
    """
    st = state.working_stack()
    if st is None:
        raise XRDError("no data: open a file in the Load widget first")
    _, seen = _sample_frames(st, min(SENTINEL_SAMPLE, st.n_frames))
    ex = ~seen.any(axis=0)  # static mask included (ScanStack.valid applies it)
    full = state.full_frame_shape or st.frame_shape
    if tuple(full) != tuple(st.frame_shape):
        ex = place_in_frame(ex, tuple(full), tuple(int(o) for o in state.frame_offset), fill=False)
    return ex


def _poni_center(path: Path, full_shape: tuple[int, int], flip_vertical: bool) -> tuple[float, float]:
    """Beam centre (y, x) in detector pixels from a PONI file."""
    from ..physics.geometry import beam_center_from_poni

    c = beam_center_from_poni(path, full_shape, flip_vertical=flip_vertical)
    return float(c[0]), float(c[1])


__all__ = ["MaskWidget"]
