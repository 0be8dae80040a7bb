"""napari dock widgets (thin Qt layers over the engine): Load, Masks, Train, Predict and compare, Export.

Each widget takes the viewer (``napari_viewer``), shares one state object per viewer
(:func:`._state.get_state`), builds a :class:`~napari_xrd_denoise.config.Config` (``to_config()``)
and runs engine calls in background workers.
"""

from __future__ import annotations

from .export import ExportWidget
from .load import LoadWidget
from .masks import MaskWidget
from .predict import PredictWidget
from .train import TrainWidget

__all__ = ["LoadWidget", "MaskWidget", "TrainWidget", "PredictWidget", "ExportWidget"]
