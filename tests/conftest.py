"""Shared test setup: a display for the napari GUI tests (marked ``gui``).

napari draws with OpenGL. Qt's ``offscreen`` platform gets an OpenGL context only through an X
display, so when no ``DISPLAY`` is set and a ``gui`` test was collected, a private Xvfb server is
started (it ends with the test process). Without a display and without Xvfb the ``gui`` tests are
skipped with that reason.
"""

from __future__ import annotations

import os

import pytest

_NO_DISPLAY_REASON = "no X display and no Xvfb: napari needs OpenGL (apt-get install xvfb, or run under xvfb-run)"


def pytest_collection_modifyitems(config, items):
    gui = [it for it in items if it.get_closest_marker("gui") is not None]
    if not gui:
        return
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from napari_xrd_denoise.widgets._headless import ensure_display

    if ensure_display() is None:
        skip = pytest.mark.skip(reason=_NO_DISPLAY_REASON)
        for it in gui:
            it.add_marker(skip)
