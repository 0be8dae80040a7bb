"""Dock widget 3: train a self-supervised denoiser with live progress, loss curves, preview, Stop."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QWidget

from ..config import METHODS, Config
from ..errors import Cancelled, XRDError
from ..io.stack import ScanStack
from ._common import (
    check_save,
    gui_words,
    PathField,
    PlotCanvas,
    button,
    combo,
    dspin,
    error_line,
    fmt_seconds,
    group,
    guarded,
    layers_of,
    robust_limits,
    row,
    run_in_thread,
    run_controls,
    run_job,
    scan_index,
    set_combo,
    set_layer,
    spin,
    vbox,
)
from ._state import adopt_model_settings, get_state

METHOD_TIPS = {
    "auto": "choose from the data: n2n-split for integer counts, else n2s",
    "n2s": "Noise2Self: grid blind-spot masks, loss on hidden pixels",
    "n2v": "Noise2Void: random blind spots",
    "n2n-frames": "Noise2Noise between repeated frames of the same scan point",
    "n2n-split": "Noise2Noise from one frame split binomially into two independent halves",
    "supervised": "paired high-SNR reference (choose the reference layer)",
    "symmetry": "Friedel / mirror partner of each frame as a second noisy copy (needs the beam centre)",
    "neighbors": "predict each pattern from its scan neighbours (2D scans)",
}
# model size presets: name -> (depth, width, dncnn_layers)
SIZES = {
    "tiny": (2, 8, 6),
    "small": (3, 16, 8),
    "medium": (3, 32, 12),
    "large": (4, 48, 17),
}
NO_REFERENCE = "(none)"
SPLIT_CHOICES = {"auto": None, "on": True, "off": False}  # combo entry -> method.combine_split
MODEL_FILTER = "Denoiser model (*.pt *.pth *.xrdm);;All files (*)"


def _train_job(post, cfg: Config, stack: ScanStack, reference, init_model, preview_index: int, holder: dict):
    """Worker thread: build the Trainer, forward its events through ``post``, return the model."""
    import torch

    from ..methods import resolve_auto
    from ..training import Trainer

    if cfg.train.threads:
        torch.set_num_threads(int(cfg.train.threads))
    if cfg.method.name == "auto":
        cfg.method.name = resolve_auto(cfg, stack)
        post(("method", cfg.method.name))
    trainer = Trainer(cfg, stack, callback=post, reference=reference, init_model=init_model,
                      preview_index=preview_index)
    holder["trainer"] = trainer
    if holder.get("cancel"):
        trainer.cancel()
    if getattr(trainer, "device_message", ""):
        post(("device", trainer.device_message))
    return trainer.run()


class TrainWidget(QWidget):
    """Method, model size, epochs, device; Start/Stop; progress, loss curves, preview; save/load model."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self._worker = None
        self._holder: dict[str, Any] = {}
        box = self._box = {"holder": self._holder}
        # if the widget goes away (viewer closed) while training, stop the trainer thread too
        self.destroyed.connect(lambda *_: _cancel_holder(box["holder"]))
        self._t_stop: float | None = None
        self.history: list[tuple[int, float | None, float | None]] = []  # (epochs completed, train, val)
        self.steps: list[tuple[int, float]] = []  # (global step, train loss)
        self.last_event = None
        self._device_note: str | None = None
        self.stop_latency: float | None = None  # seconds from Stop to the trainer's "cancelled" event
        lay = vbox(self)

        g, f = group("Method")
        self.method = QComboBox()
        for m in METHODS:
            self.method.addItem(m, m)
            self.method.setItemData(self.method.count() - 1, METHOD_TIPS.get(m, ""), 3)  # 3 = ToolTipRole
        f.addRow("Method", self.method)
        self.loss = combo(["auto", "mse", "poisson"], "auto", "mse on the Anscombe scale, or Poisson NLL on counts")
        f.addRow("Loss", self.loss)
        self.mask_width = spin(2, 16, 4, tip="n2s: grid width w (w*w mask phases)")
        f.addRow("Mask grid width", self.mask_width)
        self.neighbors = combo([4, 8, 24], 8, "neighbors: how many scan neighbours feed the input")
        f.addRow("Scan neighbours", self.neighbors)
        self.split = combo(list(SPLIT_CHOICES), "auto",
                           "symmetry / neighbors: also input one binomial half of the frame and target the other "
                           "half (auto: on for photon counts; off: the plain partner / neighbour form)")
        f.addRow("Binomial split", self.split)
        self.fill = QCheckBox("fill invalid input pixels from their surroundings")
        self.fill.setChecked(True)
        self.fill.setToolTip("neighbors: saturated discs, gaps and dead pixels enter the network input filled "
                             "from each frame's own valid pixels (input only: they never enter the loss and stay "
                             "NaN in the result)")
        f.addRow("Invalid pixels", self.fill)
        self.reference = QComboBox()
        self.reference.setToolTip("supervised: Image layer with the paired high-SNR frames (same shape)")
        f.addRow("Reference layer", self.reference)
        lay.addWidget(g)

        g, f = group("Model")
        self.arch = combo(["unet", "dncnn"], "unet")
        self.size = combo(list(SIZES), "small", "tiny (fast on CPU) … large (GPU)")
        f.addRow("Network, size", row(self.arch, self.size))
        lay.addWidget(g)

        g, f = group("Training")
        self.epochs = spin(1, 100000, 20)
        self.steps_per_epoch = spin(1, 10**6, 50)
        f.addRow("Epochs, steps/epoch", row(self.epochs, self.steps_per_epoch))
        self.batch = spin(1, 4096, 8)
        self.patch = spin(8, 8192, 96, 8)
        f.addRow("Batch, patch size", row(self.batch, self.patch))
        self.lr = dspin(1e-6, 1.0, 1e-3, 1e-4, 6)
        self.max_minutes = dspin(0, 1e5, 0, 1, 1, "wall-clock budget in minutes; 0 = none")
        self.max_minutes.setSpecialValueText("no limit")
        f.addRow("Learning rate, time", row(self.lr, self.max_minutes))
        self.preview_every = spin(1, 10**6, 25, tip="steps between preview updates")
        self.seed = spin(0, 2**31 - 1, 0)
        f.addRow("Preview every, seed", row(self.preview_every, self.seed))
        self.device = QComboBox()
        self.device.setToolTip("CUDA devices with their memory; CPU is always there")
        f.addRow("Device", self.device)
        self.finetune = QCheckBox("start from the loaded model (fine-tune)")
        f.addRow(self.finetune)
        lay.addWidget(g)

        self.start_btn = button("Start training", self.start)
        self.stop_btn = button("Stop", self.stop, "Stop now and keep the best model so far")
        self.progress, self.status = run_controls(lay, self.start_btn, self.stop_btn, "No model yet.")
        self.plot = PlotCanvas(2.4)
        lay.addWidget(self.plot)
        self._init_plot()

        g, f = group("Model file")
        self.model_path = PathField("save", MODEL_FILTER, "model file (.pt)")
        f.addRow("File", self.model_path)
        self.save_btn = button("Save model", self.save_model)
        self.load_btn = button("Load model", self.load_model)
        f.addRow(row(self.save_btn, self.load_btn))
        self.model_replace = QCheckBox("Save may replace an existing file")
        f.addRow(self.model_replace)
        lay.addWidget(g)
        lay.addStretch(1)

        self._fill_devices()
        self.set_from_config(self.state.config)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.state.model_changed.connect(self._on_model)
        self._refresh_layers()

    # --- settings -> Config ---------------------------------------------------------------------
    def apply_to(self, cfg: Config) -> Config:
        m, mo, t = cfg.method, cfg.model, cfg.train
        m.name = str(self.method.currentData())
        m.loss = str(self.loss.currentData())
        m.mask_width = int(self.mask_width.value())
        m.neighbors = int(self.neighbors.currentData())
        m.combine_split = SPLIT_CHOICES[str(self.split.currentData())]
        m.fill_invalid = bool(self.fill.isChecked())
        mo.arch = str(self.arch.currentData())
        size = self.size.currentData()
        if size in SIZES:
            mo.depth, mo.width, mo.dncnn_layers = SIZES[size]
        t.epochs = int(self.epochs.value())
        t.steps_per_epoch = int(self.steps_per_epoch.value())
        t.batch_size = int(self.batch.value())
        t.patch_size = int(self.patch.value())
        t.lr = float(self.lr.value())
        t.max_minutes = float(self.max_minutes.value())
        t.preview_every = int(self.preview_every.value())
        t.seed = int(self.seed.value())
        t.device = str(self.device.currentData() or "auto")
        return cfg

    def to_config(self) -> Config:
        """The shared Config (data and masks from the other widgets) with this widget's settings, validated."""
        return self.state.commit(self.apply_to)

    def set_from_config(self, cfg: Config) -> None:
        m, mo, t = cfg.method, cfg.model, cfg.train
        set_combo(self.method, m.name)
        set_combo(self.loss, m.loss)
        self.mask_width.setValue(m.mask_width)
        set_combo(self.neighbors, m.neighbors)
        set_combo(self.split, next(k for k, v in SPLIT_CHOICES.items() if v is m.combine_split))
        self.fill.setChecked(bool(m.fill_invalid))
        set_combo(self.arch, mo.arch)
        key = next((k for k, v in SIZES.items() if v[:2] == (mo.depth, mo.width)), None)
        if key is None:
            key = "custom"
            i = self.size.findData(key)
            if i < 0:
                self.size.addItem(f"custom (depth {mo.depth}, width {mo.width})", key)
        set_combo(self.size, key)
        self.epochs.setValue(t.epochs)
        self.steps_per_epoch.setValue(t.steps_per_epoch)
        self.batch.setValue(t.batch_size)
        self.patch.setValue(t.patch_size)
        self.lr.setValue(t.lr)
        self.max_minutes.setValue(t.max_minutes)
        self.preview_every.setValue(t.preview_every)
        self.seed.setValue(t.seed)
        if not set_combo(self.device, t.device) and t.device != "auto":
            self.device.addItem(f"{t.device} (not found here)", t.device)
            set_combo(self.device, t.device)

    def _fill_devices(self) -> None:
        self.device.clear()
        try:
            from ..devices import available_devices

            devs = available_devices()
        except Exception:  # noqa: BLE001 - torch missing or broken: CPU only
            devs = [("cpu", "CPU")]
        for name, desc in devs:
            self.device.addItem(f"{name}: {desc}" if not desc.lower().startswith(name) else desc, name)
        # prefer the first accelerator
        for i in range(self.device.count()):
            if str(self.device.itemData(i)).startswith(("cuda", "mps")):
                self.device.setCurrentIndex(i)
                break

    def _refresh_layers(self, *_):
        cur = self.reference.currentText()
        self.reference.clear()
        self.reference.addItem(NO_REFERENCE)
        for layer in layers_of(self.viewer, "image"):
            if layer.name != self.state.raw_layer:
                self.reference.addItem(layer.name)
        i = self.reference.findText(cur)
        self.reference.setCurrentIndex(max(i, 0))

    # --- training -------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def _reference_stack(self, stack: ScanStack, cfg: Config) -> ScanStack | None:
        name = self.reference.currentText()
        if cfg.method.name != "supervised":
            return None
        if not name or name == NO_REFERENCE:
            raise XRDError("method supervised: choose the reference layer with the paired high-SNR frames")
        layer = self.viewer.layers[name]
        ref = ScanStack.from_array(layer.data, frame_ndim=stack.frame_ndim, source=f"layer '{name}'",
                                   keep_negatives=stack.keep_negatives)
        if ref.n_frames == stack.n_frames and ref.scan_shape != stack.scan_shape:
            ref = ref.with_scan_shape(stack.scan_shape)
        if cfg.data.crop and ref.frame_shape != stack.frame_shape:
            ref = ref.crop(cfg.data.crop)
        if ref.shape != stack.shape:
            raise XRDError(f"reference layer '{name}' has shape {ref.shape}, the data {stack.shape}")
        return ref

    @guarded
    def start(self) -> None:
        """Start training on the working stack (data + masks) in the background."""
        if self.is_running:
            return
        stack = self.state.working_stack()
        if stack is None:
            raise XRDError("no data: open a file in the Load widget first")
        cfg = self.to_config()
        if cfg.method.name == "symmetry" and cfg.method.center is None:
            raise XRDError("method symmetry needs the beam centre: set it in the Masks widget")
        ref = self._reference_stack(stack, cfg)
        init = None
        if self.finetune.isChecked():
            if self.state.model is None:
                raise XRDError("fine-tune: load or train a model first")
            init = self.state.model
        idx = scan_index(self.viewer, stack.scan_shape, stack.frame_ndim)
        self.history.clear()
        self.steps.clear()
        self._init_plot()
        self._holder = {"trainer": None, "cancel": False}
        self._box["holder"] = self._holder
        self._device_note = None
        self._t_stop = None
        self.progress.setRange(0, max(cfg.train.epochs * cfg.train.steps_per_epoch, 1))
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        self.status.setText(f"Training {cfg.method.name} on {stack.n_frames} frames {stack.frame_shape}…")
        self._set_running(True)
        holder = self._holder
        self._worker = run_job(
            lambda post: _train_job(post, cfg, stack, ref, init, idx, holder),
            on_item=self._on_item,
            on_return=self._on_trained,
            on_error=self._train_failed,
            on_finish=self._finished,
        )

    def stop(self) -> None:
        """Ask the trainer to stop; it returns within about a second with the best model so far."""
        if not self.is_running:
            return
        self._t_stop = time.monotonic()
        _cancel_holder(self._holder)
        self.stop_btn.setEnabled(False)
        self.progress.setFormat("stopping…")

    def _set_running(self, running: bool) -> None:
        (self.state.running.add if running else self.state.running.discard)("training")
        self.start_btn.setEnabled(not running)
        self.stop_btn.setEnabled(running)
        for w in (self.save_btn, self.load_btn):
            w.setEnabled(not running)

    def _finished(self) -> None:
        self._worker = None
        self._set_running(False)

    def _train_failed(self, exc: BaseException) -> None:
        """The trainer raised (the notification is already shown): say so where the user is looking.
        Stopped before the first epoch finished, it made no model, and the previous one stays."""
        kept = " The previous model is kept." if self.state.model is not None else ""
        if isinstance(exc, Cancelled):
            self.status.setText(f"Stopped before the first epoch finished: no new model.{kept}")
            self.progress.setFormat("stopped")
        else:
            self.status.setText(f"Training failed: {error_line(exc)}.{kept}")
            self.progress.setFormat("failed")

    @guarded
    def _on_trained(self, model) -> None:
        if model is None:
            self.status.setText("Training stopped before it began.")
            return
        self.state.set_model(model)
        ev = self.last_event
        txt = "Stopped; kept the best model so far." if ev is not None and ev.kind == "cancelled" else "Done."
        self.status.setText(f"{txt} {_describe(model)}")
        self.progress.setFormat("done" if (ev is None or ev.kind != "cancelled") else "stopped")

    @guarded
    def _on_item(self, item) -> None:
        from napari.utils.notifications import show_info, show_warning

        if isinstance(item, tuple):
            kind, value = item
            if kind == "device" and value:
                self._device_note = str(value)  # the trainer repeats it as a message: shown once, as a warning
                show_warning(self._device_note)
            elif kind == "method":
                self.status.setText(f"auto chose method {value}")
            return
        ev = item
        self.last_event = ev
        k = ev.kind
        if ev.total_steps:
            if self.progress.maximum() != ev.total_steps:
                self.progress.setRange(0, int(ev.total_steps))
            self.progress.setValue(min(int(ev.step), int(ev.total_steps)))
        if k in ("step", "epoch", "start", "preview"):
            self.progress.setFormat(
                f"epoch {min(ev.epoch + 1, ev.epochs)}/{ev.epochs}  %p%  left {fmt_seconds(ev.eta_s)}"
            )
        if k == "step" and ev.train_loss is not None:
            self.steps.append((int(ev.step), float(ev.train_loss)))
            if len(self.steps) % 5 == 0:
                self._redraw()
        elif k == "epoch":
            self.history.append((int(ev.epoch) + 1, ev.train_loss, ev.val_loss))  # epochs completed
            self._redraw()
            v = f", validation {ev.val_loss:.4g}" if ev.val_loss is not None else ""
            tl = f"{ev.train_loss:.4g}" if ev.train_loss is not None else "?"
            self.status.setText(f"Epoch {ev.epoch + 1}/{ev.epochs}: training loss {tl}{v}; "
                                f"{fmt_seconds(ev.elapsed_s)} elapsed, {fmt_seconds(ev.eta_s)} left")
        elif k == "preview" and ev.preview is not None:
            p = np.asarray(ev.preview, dtype=np.float32)
            if p.ndim == 1:
                p = p[None]
            off = self.state.frame_offset if len(self.state.frame_offset) == p.ndim else (0.0,) * p.ndim
            set_layer(self.viewer, "denoised preview", p, contrast_limits=robust_limits(p), colormap="magma",
                      translate=off, metadata={"xrd_role": "preview"})
        elif k == "message" and ev.message and ev.message != self._device_note:
            show_info(gui_words(ev.message))
        elif k in ("done", "cancelled"):
            self._redraw()
            if k == "cancelled" and self._t_stop is not None:
                self.stop_latency = time.monotonic() - self._t_stop

    # --- plot -----------------------------------------------------------------------------------
    def _init_plot(self) -> None:
        ax = self.plot.ax
        ax.clear()
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title("training / validation loss", fontsize=9)
        self.plot.draw()

    def _redraw(self) -> None:
        ax = self.plot.ax
        ax.clear()
        spe = max(int(self.steps_per_epoch.value()), 1)
        if self.steps:
            s = np.asarray(self.steps, dtype=float)
            ax.plot(s[:, 0] / spe, s[:, 1], color="0.7", lw=0.8, label="step")
        if self.history:
            e = np.asarray([h[0] for h in self.history], dtype=float)
            tr = np.asarray([np.nan if h[1] is None else h[1] for h in self.history], dtype=float)
            va = np.asarray([np.nan if h[2] is None else h[2] for h in self.history], dtype=float)
            ax.plot(e, tr, "o-", color="tab:blue", ms=3, label="training")
            if np.isfinite(va).any():
                ax.plot(e, va, "s-", color="tab:orange", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        if self.steps or self.history:
            ax.legend(fontsize=7, loc="upper right")
        self.plot.draw()

    # --- model file -----------------------------------------------------------------------------
    def _on_model(self, model) -> None:
        if model is not None and not self.is_running:
            txt = self.status.text()
            if "Done" not in txt and "Stopped" not in txt:
                self.status.setText(f"Model ready: {_describe(model)}")

    @guarded
    def save_model(self) -> None:
        if self.state.model is None:
            raise XRDError("save model: train or load a model first")
        p = self.model_path.path("model file")
        if p.suffix.lower() not in (".pt", ".pth"):
            raise XRDError(f"{p}: a model file ends in .pt")
        check_save(p, self.model_replace, self.state, "Save may replace an existing file")
        self.state.model.save(p)
        self.status.setText(f"Saved model to {p}")

    @guarded
    def load_model(self) -> None:
        p = self.model_path.path("model file")
        if not p.is_file():
            raise XRDError(f"{p}: model file not found")
        device = str(self.device.currentData() or "auto")
        run_in_thread(_load_model, p, device, on_return=self._loaded)

    @guarded
    def _loaded(self, model) -> None:
        self.state.set_model(model)
        self.set_from_config(model.config)
        self.state.commit(lambda cfg: adopt_model_settings(cfg, model.config))  # provenance, exported config
        self.status.setText(f"Loaded {self.model_path.text()}: {_describe(model)}")


def _cancel_holder(holder: dict) -> None:
    holder["cancel"] = True
    tr = holder.get("trainer")
    if tr is not None:
        tr.cancel()


def _load_model(path, device):
    from ..model_file import DenoiserModel

    return DenoiserModel.load(path, device=device)


def _describe(model) -> str:
    try:
        return model.describe()
    except Exception:  # noqa: BLE001 - a description is never worth an error
        return f"method {model.config.method.name}"


__all__ = ["TrainWidget", "SIZES"]
