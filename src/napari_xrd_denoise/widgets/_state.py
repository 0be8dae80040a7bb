"""Shared state of the dock widgets of one viewer: the open stack, masks, centre, model, result, Config.

One :class:`XRDState` per viewer (see :func:`get_state`). It holds no reference to the viewer, so the
viewer can be closed and collected while the state lives in a weak-keyed registry.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from psygnal import Signal

from ..config import Config
from ..io.stack import ScanStack


@dataclass
class Result:
    """A denoised stack: ``data`` (numpy or dask, counts, NaN where invalid) and where it lives on disk."""

    data: Any
    path: Path | None = None
    method: str = ""
    config: Config | None = None
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # virtual-detector maps by name


class XRDState:
    """Evented state shared by the Load, Masks, Train, Predict and Export widgets."""

    stack_changed = Signal(object)  # the ScanStack (or None)
    masks_changed = Signal()
    center_changed = Signal(object)  # (y, x) or None
    model_changed = Signal(object)  # a DenoiserModel (or None)
    result_changed = Signal(object)  # a Result (or None)
    config_changed = Signal(object)  # the Config
    collect = Signal()  # asks widgets to copy their layers (e.g. painted exclusions) into the state

    def __init__(self) -> None:
        self.config: Config = Config()
        self.stack: ScanStack | None = None  # opened, scan-shaped and cropped
        self.raw_layer: str | None = None  # name of the layer showing the stack (counts)
        self.frame_offset: tuple[float, ...] = (0.0, 0.0)  # crop origin: frame pixel (0, 0) in detector pixels
        self.full_frame_shape: tuple[int, ...] | None = None  # detector frame shape before the crop
        self.roi: np.ndarray | None = None  # bool, frame shape, True = inside the ROI
        self.roi_limits: bool = False  # True: pixels outside the ROI are invalid for training/prediction
        self.exclusions: np.ndarray | None = None  # bool, frame shape, True = excluded
        self.center: tuple[float, float] | None = None  # beam centre (y, x) in pixels of the cropped frame
        self.model: Any = None  # DenoiserModel
        self.result: Result | None = None
        self.running: set[str] = set()  # background jobs on the open data ("training", "prediction")

    # --- config ---------------------------------------------------------------------------------
    def update_config(self, section: str, **values: Any) -> Config:
        """Set values in one section of the shared Config (not validated here) and announce it."""
        sec = getattr(self.config, section)
        for k, v in values.items():
            if not hasattr(sec, k):
                raise AttributeError(f"{section}.{k}")
            setattr(sec, k, v)
        self.config_changed.emit(self.config)
        return self.config

    def config_copy(self) -> Config:
        return copy.deepcopy(self.config)

    def commit(self, apply_to) -> Config:
        """Apply one widget's settings (``apply_to(cfg) -> cfg``) to a copy of the shared Config,
        validate it, make it the shared Config and announce it."""
        cfg = apply_to(self.config_copy())
        cfg.validate()
        self.config = cfg
        self.config_changed.emit(cfg)
        return cfg

    # --- stack and masks ------------------------------------------------------------------------
    def set_stack(self, stack: ScanStack | None, layer_name: str | None = None) -> None:
        self.stack = stack
        self.raw_layer = layer_name
        self.roi = None
        self.exclusions = None
        self.result = None
        if stack is not None and stack.beam_center is not None and stack.frame_ndim == 2:
            self.center = (float(stack.beam_center[0]), float(stack.beam_center[1]))
        else:
            self.center = None
        self.stack_changed.emit(stack)
        self.center_changed.emit(self.center)
        self.result_changed.emit(None)

    def set_center(self, center: tuple[float, float] | None) -> None:
        self.center = None if center is None else (float(center[0]), float(center[1]))
        self.config.method.center = None if center is None else [self.center[0], self.center[1]]
        self.center_changed.emit(self.center)
        self.config_changed.emit(self.config)

    def set_masks(self, roi: np.ndarray | None = ..., exclusions: np.ndarray | None = ..., roi_limits=None) -> None:
        if roi is not ...:
            self.roi = None if roi is None else np.asarray(roi, dtype=bool)
        if exclusions is not ...:
            self.exclusions = None if exclusions is None else np.asarray(exclusions, dtype=bool)
        if roi_limits is not None:
            self.roi_limits = bool(roi_limits)
        self.masks_changed.emit()

    def user_valid(self) -> np.ndarray | None:
        """Validity from the user's masks (True = usable), or None when there are none."""
        v = None
        if self.exclusions is not None and self.exclusions.any():
            v = ~self.exclusions
        if self.roi_limits and self.roi is not None:
            v = self.roi.copy() if v is None else (v & self.roi)
        return v

    def working_stack(self) -> ScanStack | None:
        """The stack that training and prediction use: the open stack with the user's masks applied."""
        if self.stack is None:
            return None
        self.collect.emit()
        v = self.user_valid()
        if v is None or v.shape != self.stack.frame_shape:
            return self.stack
        return self.stack.with_mask(v)

    def set_model(self, model: Any) -> None:
        self.model = model
        self.model_changed.emit(model)

    def result_provenance(self, result: Result) -> dict:
        """What a written result records (:func:`napari_xrd_denoise.api.provenance`): the configuration it
        was made with, the input, the method and the model's version; the same for Export and for the
        denoised layer's metadata (napari's own Save layer)."""
        from ..api import provenance

        cfg = result.config or self.config
        prov = provenance(cfg, self.working_stack(), {"interface": "napari", "method": result.method or cfg.method.name})
        if self.model is not None:
            prov["model_version"] = str(getattr(self.model, "version", ""))
        return prov

    def set_result(self, result: Result | None) -> None:
        self.result = result
        self.result_changed.emit(result)


def adopt_model_settings(cfg: Config, model_cfg: Config) -> Config:
    """``cfg`` with a model's method, network and training settings; its data and inference settings,
    and the beam centre of the open data, stay as they are."""
    center = cfg.method.center
    cfg.method = copy.deepcopy(model_cfg.method)
    cfg.method.center = center
    cfg.model = copy.deepcopy(model_cfg.model)
    cfg.train = copy.deepcopy(model_cfg.train)
    return cfg


_STATES: "weakref.WeakKeyDictionary[Any, XRDState]" = weakref.WeakKeyDictionary()


def get_state(viewer: Any) -> XRDState:
    """The one state object of ``viewer`` (created on first use)."""
    st = _STATES.get(viewer)
    if st is None:
        st = XRDState()
        _STATES[viewer] = st
    return st
