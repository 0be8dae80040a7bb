"""Dock widget 5: export the denoised stack (HDF5 with provenance, npy, TIFF), the masks, the model, the Config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QCheckBox, QWidget

from ..errors import XRDError
from ._common import PathField, button, check_save, group, guarded, info_label, run_in_thread, vbox
from ..io.writers import save_mask
from ._state import get_state
from .masks import all_excluded

DATA_FILTER = "HDF5 (*.h5 *.hdf5);;NumPy (*.npy);;TIFF (*.tif *.tiff)"
DATA_SUFFIXES = (".h5", ".hdf5", ".npy", ".tif", ".tiff")


def _write_job(path: Path, data, provenance: dict, overwrite: bool, frame_ndim: int) -> Path:
    """Worker thread: write the result in blocks (a lazy result is read block by block); NaN = invalid."""
    from ..io.writers import write_array

    return Path(write_array(path, data, valid=None, provenance=provenance, overwrite=overwrite,
                            frame_ndim=frame_ndim))


class ExportWidget(QWidget):
    """Write the denoised stack, the masks, the model and the configuration to files."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self.written: list[Path] = []
        self._worker = None
        lay = vbox(self)

        g, f = group("Denoised stack")
        self.data_path = PathField("save", DATA_FILTER, "denoised.h5 / .npy / .tif")
        f.addRow("File", self.data_path)
        self.data_btn = button("Export denoised", self.export_data,
                               "HDF5 keeps provenance (config, model, input) and the validity mask")
        f.addRow(self.data_btn)
        lay.addWidget(g)

        g, f = group("Mask, model, configuration")
        self.mask_path = PathField("save", "Mask (*.npy *.tif *.tiff *.edf)", "mask.npy / .tif / .edf")
        f.addRow("Mask", self.mask_path)
        self.mask_btn = button("Export mask", self.export_mask, "all invalid pixels; nonzero = masked (pyFAI)")
        f.addRow(self.mask_btn)
        self.model_path = PathField("save", "Model (*.pt)", "model.pt")
        f.addRow("Model", self.model_path)
        self.model_btn = button("Export model", self.export_model)
        f.addRow(self.model_btn)
        self.config_path = PathField("save", "Config (*.json)", "config.json (for xrd-denoise --config)")
        f.addRow("Config", self.config_path)
        self.config_btn = button("Export configuration", self.export_config)
        f.addRow(self.config_btn)
        lay.addWidget(g)

        self.overwrite = QCheckBox("overwrite existing files")
        lay.addWidget(self.overwrite)
        self.status = info_label("")
        lay.addWidget(self.status)
        lay.addStretch(1)

    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def _target(self, field: PathField, what: str, suffixes: tuple[str, ...]) -> Path:
        p = field.path(what)
        if p.suffix.lower() not in suffixes:
            raise XRDError(f"{p}: {what} must end in {', '.join(suffixes)}")
        check_save(p, self.overwrite, self.state, "overwrite existing files")  # never the input's files
        if not p.parent.is_dir():
            raise XRDError(f"{p.parent}: folder does not exist")
        return p

    def _done(self, p: Path, what: str) -> None:
        self.written.append(Path(p))
        self.status.setText(f"Wrote {what} to {p}")

    @guarded
    def export_data(self) -> None:
        res = self.state.result
        if res is None:
            raise XRDError("no result: denoise the stack in the Predict widget first")
        p = self._target(self.data_path, "denoised output", DATA_SUFFIXES)
        stack = self.state.working_stack()
        prov = self.state.result_provenance(res)
        self.data_btn.setEnabled(False)
        self.status.setText(f"Writing {p.name}…")

        def finished():
            self._worker = None
            self.data_btn.setEnabled(True)

        self._worker = run_in_thread(_write_job, p, res.data, prov, self.overwrite.isChecked(), stack.frame_ndim,
                                     on_return=lambda out: self._done(out, "the denoised stack"),
                                     on_finish=finished)

    @guarded
    def export_mask(self) -> None:
        p = self._target(self.mask_path, "mask file", (".npy", ".tif", ".tiff", ".edf"))
        ex = all_excluded(self.state)
        save_mask(p, ex, overwrite=True)
        self.state.update_config("data", mask_file=str(p))  # the exported configuration replays this mask
        self._done(p, f"the mask ({int(np.count_nonzero(ex))} masked pixels)")

    @guarded
    def export_model(self) -> None:
        if self.state.model is None:
            raise XRDError("no model: train or load one first")
        p = self._target(self.model_path, "model file", (".pt", ".pth"))
        self.state.model.save(p)
        self._done(p, "the model")

    @guarded
    def export_config(self) -> None:
        p = self._target(self.config_path, "config file", (".json",))
        from napari.utils.notifications import show_warning

        cfg = self.state.config_copy()
        if self.state.user_valid() is not None and not cfg.data.mask_file:
            show_warning("the configuration names no mask file: export the mask first so that "
                         "xrd-denoise --config replays your exclusions")
        if cfg.method.name == "auto" and self.state.model is not None:
            cfg.method.name = self.state.model.config.method.name  # what "auto" chose
        cfg.validate()
        cfg.save(p)
        self._done(p, "the configuration")


__all__ = ["ExportWidget"]
