"""A display for Qt/OpenGL when none is set: a private Xvfb server (used by the tests and docs/screenshots.py).

napari draws with OpenGL; Qt's ``offscreen`` platform only gets an OpenGL context through an X display,
so without ``DISPLAY`` an Xvfb server is started (if installed) and Qt runs ``offscreen`` on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

_PROC: subprocess.Popen | None = None


def ensure_display() -> str | None:
    """Make sure Qt can create OpenGL contexts; returns the X display in use (or None if there is none)."""
    global _PROC
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    exe = shutil.which("Xvfb")
    if exe is None:
        return None
    r, w = os.pipe()
    _PROC = subprocess.Popen(
        [exe, "-displayfd", str(w), "-screen", "0", "1920x1200x24", "-nolisten", "tcp"],
        pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )
    os.close(w)
    num = b""
    deadline = time.monotonic() + 20
    with os.fdopen(r, "rb") as fh:
        while time.monotonic() < deadline:
            ch = fh.read(1)
            if not ch or ch == b"\n":
                break
            num += ch
    if not num.strip():
        stop_display()
        return None
    os.environ["DISPLAY"] = f":{num.decode().strip()}"
    return os.environ["DISPLAY"]


def _die_with_parent() -> None:
    """In the child: ask Linux to end Xvfb when this Python process ends (so no server is left behind)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_display() -> None:
    """Stop the Xvfb server started by :func:`ensure_display` (if any).

    Only call this after the Qt application is gone; otherwise Qt loses its display and exits.
    Without a call the server ends with this process.
    """
    global _PROC
    if _PROC is not None:
        _PROC.terminate()
        try:
            _PROC.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _PROC.kill()
        _PROC = None
