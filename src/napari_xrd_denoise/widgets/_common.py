"""Qt helpers shared by the dock widgets: error notifications, background workers, layers, plots."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import queue
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import Cancelled, XRDError

log = logging.getLogger("napari_xrd_denoise.widgets")


# --- errors --------------------------------------------------------------------------------------
#: command-line options named by the engine's messages, and the widget controls that set them
GUI_NAMES = {
    "--scan-shape": "'Scan shape' (Load)",
    "--ndim": "'Frames' (Load)",
    "--dataset": "'Dataset' (Load)",
    "--crop": "the crop rows/columns (Load)",
    "--keep-negatives": "'keep negatives' (Load)",
    "--saturation": "'Saturation' (Load)",
    "--center": "the beam centre (Masks and beam centre)",
    "--poni": "a PONI file (Masks and beam centre)",
    "--mask": "'Mask file' (Masks and beam centre)",
    "--method": "'Method' (Train)",
    "--neighbors": "'Scan neighbours' (Train)",
    "--reference": "'Reference layer' (Train)",
    "--epochs": "'Epochs' (Train)",
    "--max-minutes": "the time limit (Train)",
    "--device": "'Device' (Train)",
    "--tta": "'test-time augmentation' (Predict)",
    "--preserve-profile": "'flux correction' (Predict)",
    "--no-preserve-profile": "'flux correction' off (Predict)",
}
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)(?:[ =]ROWSxCOLS|[ =]Y,X)?")


def gui_words(text: str) -> str:
    """An engine message in the words of the widgets: each command-line option it names becomes the
    control that sets it (messages are shared by the command line and the GUI)."""
    return _FLAG.sub(lambda m: GUI_NAMES.get(m.group(1), m.group(0)), text)


def error_line(exc: BaseException) -> str:
    """One line for a notification: the XRDError text (options named as the widgets' controls), or the
    type and first line of anything else."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, (XRDError, Cancelled)):
        return gui_words(first) or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def report_error(exc: BaseException) -> str:
    """Show ``exc`` as a one-line napari error notification (the traceback goes to the log).

    A :class:`~napari_xrd_denoise.errors.Cancelled` (the user pressed Stop) is only an info message.
    """
    from napari.utils.notifications import show_error, show_info

    if isinstance(exc, Cancelled):
        msg = str(exc).strip() or "stopped"
        show_info(msg)
        return msg
    msg = error_line(exc)
    if not isinstance(exc, XRDError):
        log.error("unexpected error in a widget action", exc_info=(type(exc), exc, exc.__traceback__))
    show_error(msg)
    return msg


def guarded(fn: Callable) -> Callable:
    """Decorate a slot so any exception becomes a notification and the widget stays usable.

    Signals may send more arguments than the slot takes (a button's ``clicked`` sends ``checked``):
    the extra positional arguments are dropped, as Qt drops them for a slot declared with fewer."""
    import inspect

    params = list(inspect.signature(fn).parameters.values())
    takes_any = any(p.kind is p.VAR_POSITIONAL for p in params)
    n_pos = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not takes_any:
            args = args[:n_pos]
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every error is shown to the user
            report_error(e)
            status = getattr(args[0], "status", None) if args else None
            if status is not None and hasattr(status, "setText"):  # the label must not show the last success
                with contextlib.suppress(Exception):
                    status.setText(f"Not done: {error_line(e)}")
            return None

    return wrapper


def check_save(path: Path, replace_box, state, box_text: str) -> Path:
    """Before a widget writes ``path``: never the open input file, and an existing file only with
    ``replace_box`` ticked (its text ``box_text`` is quoted in the message)."""
    from ..io.atomic import check_output

    st = getattr(state, "stack", None)
    check_output(Path(path), True, inputs=st.input_files if st is not None else ())
    if Path(path).exists() and not replace_box.isChecked():
        raise XRDError(f"{path}: file exists; tick '{box_text}' to replace it")
    return Path(path)


# --- background work ----------------------------------------------------------------------------
class _Failed:
    """Marks an exception raised in a worker thread, delivered as a value so it is shown once."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _call_safely(func: Callable, *args, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception as e:  # noqa: BLE001
        return _Failed(e)


def run_in_thread(
    func: Callable,
    *args,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
    **kwargs,
):
    """Run ``func(*args, **kwargs)`` in a napari thread worker; results and errors come back to the GUI."""
    from napari.qt.threading import create_worker

    worker = create_worker(_call_safely, func, *args, _start_thread=False, _ignore_errors=True, **kwargs)

    def _returned(value):
        if isinstance(value, _Failed):
            _deliver(value.exc, None, on_return, on_error)
        else:
            _deliver(None, value, on_return, on_error)

    worker.returned.connect(_returned)
    return _start(worker, on_error, on_finish)


def _deliver(error: BaseException | None, value: Any, on_return: Callable | None, on_error: Callable | None) -> None:
    """Hand a job's outcome to the widget: an error as a notification (and ``on_error``), else the value."""
    if error is not None:
        report_error(error)
        if on_error is not None:
            on_error(error)
    elif on_return is not None:
        on_return(value)


def _start(worker, on_error: Callable | None, on_finish: Callable | None):
    """Connect the error and finish callbacks every job shares, start the worker and return it."""
    worker.errored.connect(lambda e: (report_error(e), on_error and on_error(e)))
    if on_finish is not None:
        worker.finished.connect(on_finish)
    worker.start()
    return worker


_DONE = object()


def _drain(job: Callable[[Callable[[Any], None]], Any]) -> Iterator[Any]:
    """Generator for a thread worker: run ``job(post)`` in its own thread and yield what it posts.

    ``post`` may be called from any thread (it only puts on a queue), so engine callbacks never touch Qt.
    The job's return value (or exception) is yielded last, wrapped in :class:`_JobEnd`.
    """
    q: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = job(q.put)
        except BaseException as e:  # noqa: BLE001 - delivered to the GUI
            box["error"] = e
        finally:
            q.put(_DONE)

    t = threading.Thread(target=target, name="xrd-denoise-job", daemon=True)
    t.start()
    while True:
        item = q.get()
        if item is _DONE:
            break
        yield item
    t.join()
    yield _JobEnd(box.get("value"), box.get("error"))


class _JobEnd:
    def __init__(self, value: Any, error: BaseException | None) -> None:
        self.value = value
        self.error = error


def run_job(
    job: Callable[[Callable[[Any], None]], Any],
    *,
    on_item: Callable[[Any], None],
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[], None] | None = None,
):
    """Run a long engine call in the background.

    ``job(post)`` runs in a plain thread; whatever it passes to ``post`` (engine events, progress) is
    forwarded through a napari generator worker's ``yielded`` signal to ``on_item`` in the GUI thread.
    """
    from napari.qt.threading import create_worker

    worker = create_worker(_drain, job, _start_thread=False, _ignore_errors=True)

    def _yielded(item):
        if isinstance(item, _JobEnd):
            if item.error is not None and not isinstance(item.error, Exception):
                raise item.error
            _deliver(item.error, item.value, on_return, on_error)
        else:
            on_item(item)

    worker.yielded.connect(_yielded)
    return _start(worker, on_error, on_finish)


# --- layers ---------------------------------------------------------------------------------------
def set_layer(viewer, name: str, data, kind: str = "image", **kwargs):
    """Add a layer called ``name`` or replace the data of the existing one; returns the layer."""
    if name in viewer.layers:
        layer = viewer.layers[name]
        if layer._type_string == kind and getattr(layer.data, "shape", None) == getattr(data, "shape", None):
            layer.data = data
            for k in ("contrast_limits", "colormap", "opacity", "visible", "translate", "scale"):
                if k in kwargs:
                    setattr(layer, k, kwargs[k])
            return layer
        viewer.layers.remove(layer)
    return getattr(viewer, f"add_{kind}")(data, name=name, **kwargs)


def robust_limits(frame: np.ndarray, lo: float = 0.5, hi: float = 99.8) -> tuple[float, float]:
    """Contrast limits from the finite pixels of one frame (never from the whole stack)."""
    f = np.asarray(frame, dtype=np.float64)
    f = f[np.isfinite(f)]
    if f.size == 0:
        return (0.0, 1.0)
    a, b = np.percentile(f, [lo, hi])
    if not b > a:
        b = a + 1.0
    return (float(a), float(b))


def layers_of(viewer, kind: str) -> list:
    return [layer for layer in viewer.layers if layer._type_string == kind]


def scan_index(viewer, scan_shape: tuple[int, ...], frame_ndim: int = 2) -> int:
    """Flat frame index at the viewer's current slider position (scan axes lead, frame axes trail)."""
    if not scan_shape:
        return 0
    nd = viewer.dims.ndim
    first = nd - (len(scan_shape) + frame_ndim)
    step = viewer.dims.current_step
    displayed = set(viewer.dims.displayed)
    idx = []
    for k, size in enumerate(scan_shape):
        ax = first + k
        v = int(step[ax]) if (0 <= ax < nd and ax not in displayed) else 0
        idx.append(min(max(v, 0), size - 1))
    return int(np.ravel_multi_index(tuple(idx), tuple(scan_shape)))


def go_to_frame(viewer, scan_pos: tuple[int, ...], frame_ndim: int = 2) -> None:
    """Move the viewer's sliders to scan position ``scan_pos`` (one index per scan axis)."""
    nd = viewer.dims.ndim
    first = nd - (len(scan_pos) + frame_ndim)
    step = list(viewer.dims.current_step)
    for k, v in enumerate(scan_pos):
        ax = first + k
        if 0 <= ax < nd:
            step[ax] = int(v)
    viewer.dims.current_step = tuple(step)


# --- small form helpers ---------------------------------------------------------------------------
def spin(lo: int, hi: int, value: int, step: int = 1, tip: str = "") -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    if tip:
        s.setToolTip(tip)
    return s


def dspin(lo: float, hi: float, value: float, step: float = 0.1, decimals: int = 3, tip: str = "") -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setDecimals(decimals)
    if 0 < lo < 10.0**-decimals:  # a positive minimum must stay positive once rounded to the shown decimals
        lo = 10.0**-decimals
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setValue(value)
    if tip:
        s.setToolTip(tip)
    return s


def combo(items, current=None, tip: str = "") -> QComboBox:
    c = QComboBox()
    for it in items:
        if isinstance(it, tuple):
            c.addItem(it[1], it[0])
        else:
            c.addItem(str(it), it)
    if current is not None:
        i = c.findData(current)
        if i >= 0:
            c.setCurrentIndex(i)
    if tip:
        c.setToolTip(tip)
    return c


def set_combo(c: QComboBox, value) -> bool:
    i = c.findData(value)
    if i < 0:
        i = c.findText(str(value))
    if i >= 0:
        c.setCurrentIndex(i)
        return True
    return False


def button(text: str, slot: Callable | None = None, tip: str = "") -> QPushButton:
    b = QPushButton(text)
    if slot is not None:
        b.clicked.connect(slot)
    if tip:
        b.setToolTip(tip)
    return b


def row(*widgets: QWidget) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        lay.addWidget(x)
    return w


def group(title: str) -> tuple[QGroupBox, QFormLayout]:
    g = QGroupBox(title)
    form = QFormLayout(g)
    form.setFieldGrowthPolicy(QFormLayout.AllNonFixedFieldsGrow)
    return g, form


def vbox(widget: QWidget) -> QVBoxLayout:
    """The layout of a dock widget's contents, inside a scroll area (docks can be short or narrow)."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    scroll = QScrollArea(widget)
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAsNeeded)  # a dock narrower than its rows can still reach them
    body = QWidget()
    scroll.setWidget(body)
    outer.addWidget(scroll)
    widget.scroll_area = scroll
    widget.body = body
    lay = QVBoxLayout(body)
    lay.setContentsMargins(4, 12, 4, 4)
    return lay


def run_controls(lay, start: QPushButton, stop: QPushButton, status: str) -> tuple[QProgressBar, QLabel]:
    """Add a long job's controls to ``lay``: Start and Stop side by side (Stop disabled until a run
    starts), an idle progress bar and a status line; returns the bar and the line."""
    stop.setEnabled(False)
    lay.addWidget(row(start, stop))
    bar = QProgressBar()
    bar.setRange(0, 1)
    bar.setValue(0)
    bar.setFormat("idle")
    lay.addWidget(bar)
    label = info_label(status)
    lay.addWidget(label)
    return bar, label


def info_label(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextSelectableByMouse)
    lab.setSizePolicy(QSizePolicy.Preferred, QSizePolicy.Minimum)
    return lab


class PathField(QWidget):
    """A line edit with a Browse button (open or save dialog)."""

    def __init__(self, mode: str = "open", filter: str = "", placeholder: str = "", parent=None) -> None:
        super().__init__(parent)
        self.mode = mode
        self.filter = filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.browse = QPushButton("…")
        self.browse.setToolTip("Browse")
        self.browse.setMaximumWidth(32)
        self.browse.clicked.connect(self._browse)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit)
        lay.addWidget(self.browse)

    def _browse(self) -> None:
        if self.mode == "save":
            p, _ = QFileDialog.getSaveFileName(self, "Save as", self.text(), self.filter)
        elif self.mode == "dir":
            p = QFileDialog.getExistingDirectory(self, "Choose folder", self.text())
        else:
            p, _ = QFileDialog.getOpenFileName(self, "Open", self.text(), self.filter)
        if p:
            self.edit.setText(p)
            self.edit.editingFinished.emit()

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str | Path) -> None:  # noqa: N802 - Qt naming
        self.edit.setText(str(text))

    def path(self, what: str = "path") -> Path:
        t = self.text()
        if not t:
            raise XRDError(f"{what}: no file given")
        return Path(t).expanduser()


# --- plots ----------------------------------------------------------------------------------------
class PlotCanvas(QWidget):
    """A small matplotlib figure for a dock widget."""

    def __init__(self, height: float = 2.4, parent=None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4.0, height), dpi=90, tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(int(height * 70))
        self.ax = self.figure.add_subplot(111)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.canvas)

    def draw(self) -> None:
        self.canvas.draw_idle()


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"
