"""Neighbourhoods on a scan grid for the neighbour-scan blind spot (4D-STEM, fine XRD maps).

Positions are flat, row-major indices into ``scan_shape = (rows, cols)``. The neighbours of a
position are the positions at fixed offsets ``(dr, dc)``:

* ``n = 4``: von Neumann (up, left, right, down);
* ``n = 8``: Moore (the 3x3 block minus the centre);
* ``n = 24``: the 5x5 block minus the centre.

Borders, mode ``"reflect"``: when ``r + dr`` falls outside the grid the offset is reflected through
the position itself, ``r - dr`` (per axis, likewise for columns). Unlike reflection about the grid
edge (``numpy`` ``reflect``, which maps ``R - 2 + 2`` back onto ``R - 2``), this never returns the
position itself because the offset is never zero on both axes, so every position (borders
included) has ``n`` neighbours and never sees its own frame. It needs at least ``2 * max|d|``
positions along each axis (2 for n = 4 / 8, 4 for n = 24).

Line scans (one axis of length 1, or a 1-D ``scan_shape``): the neighbours are the ``n`` nearest
positions along the line, offsets ``-n/2 .. -1, 1 .. n/2``, reflected in the same way; this needs
at least ``n`` positions.
"""

from __future__ import annotations

import numpy as np

from ..errors import XRDError

NEIGHBORS = (4, 8, 24)


def neighbor_offsets(n: int) -> np.ndarray:
    """``(n, 2)`` integer offsets ``(dr, dc)`` in row-major order, the centre excluded."""
    if n == 4:
        return np.array([(-1, 0), (0, -1), (0, 1), (1, 0)], dtype=np.int64)
    if n in (8, 24):
        k = 1 if n == 8 else 2
        offs = [(dr, dc) for dr in range(-k, k + 1) for dc in range(-k, k + 1) if (dr, dc) != (0, 0)]
        return np.array(offs, dtype=np.int64)
    raise XRDError(f"method.neighbors={n!r} is not one of: 4, 8, 24")


def line_offsets(n: int) -> np.ndarray:
    """Offsets along a line scan: ``-n/2 .. -1, 1 .. n/2``."""
    if n not in NEIGHBORS:
        raise XRDError(f"method.neighbors={n!r} is not one of: 4, 8, 24")
    k = n // 2
    return np.array([d for d in range(-k, k + 1) if d != 0], dtype=np.int64)


def _reflect(pos: np.ndarray, off: np.ndarray, size: int) -> np.ndarray:
    q = pos + off
    out = (q < 0) | (q >= size)
    return np.where(out, pos - off, q)


def _shape(scan_shape) -> tuple[int, ...]:
    s = tuple(int(v) for v in (scan_shape if np.ndim(scan_shape) else (scan_shape,)))
    if not 1 <= len(s) <= 2 or any(v < 1 for v in s):
        raise XRDError(f"--scan-shape {'x'.join(map(str, s))} must be one or two positive integers")
    return s


def is_line_scan(scan_shape) -> bool:
    s = _shape(scan_shape)
    return len(s) == 1 or min(s) == 1


def _fmt(s: tuple[int, ...]) -> str:
    return "x".join(map(str, s))


def neighbor_indices(scan_shape, n: int = 8, mode: str = "reflect") -> np.ndarray:
    """``(N, n)`` flat indices of the neighbours of every position of the scan (row-major).

    Raises XRDError naming ``--scan-shape`` when the scan is too small to give every position ``n``
    neighbours different from itself.
    """
    if mode != "reflect":
        raise ValueError(f"neighbour border mode {mode!r} is not supported (only 'reflect')")
    s = _shape(scan_shape)
    total = int(np.prod(s))
    if is_line_scan(s):
        length = total
        if length < n:
            raise XRDError(
                f"--scan-shape {_fmt(s)}: a line scan of {length} positions is too short for {n} neighbours "
                f"(needs at least {n}); give the 2-D scan shape or fewer --neighbors"
            )
        pos = np.arange(length)[:, None]
        return _reflect(pos, line_offsets(n)[None, :], length).astype(np.int64)
    rows, cols = s
    offs = neighbor_offsets(n)
    need = 2 * int(np.abs(offs).max())
    if rows < need or cols < need:
        hint = "; use --neighbors 8 (needs 2)" if n == 24 and min(rows, cols) >= 2 else ""
        raise XRDError(
            f"--scan-shape {_fmt(s)} is too small for {n} neighbours (needs at least {need} positions along "
            f"each scan axis){hint}"
        )
    r = np.repeat(np.arange(rows), cols)[:, None]
    c = np.tile(np.arange(cols), rows)[:, None]
    rr = _reflect(r, offs[None, :, 0], rows)
    cc = _reflect(c, offs[None, :, 1], cols)
    return (rr * cols + cc).astype(np.int64)


def lattice_labels(scan_shape, n: int = 8) -> np.ndarray:
    """``(N,)`` sub-lattice label of every position such that no position shares a label with any of
    its neighbours (the interleaved sub-lattices used by the leak-free refinement).

    2-D: ``(r + c) % 2`` for n = 4 (2 lattices), ``2 (r % 2) + c % 2`` for n = 8 (4), ``3 (r % 3) + c % 3``
    for n = 24 (9). Line scans: ``i % (n/2 + 1)``. Reflected border neighbours keep the offset's
    magnitude, so the property holds at the borders too (checked on return).
    """
    s = _shape(scan_shape)
    total = int(np.prod(s))
    if is_line_scan(s):
        lab = np.arange(total) % (n // 2 + 1)
    else:
        rows, cols = s
        r = np.repeat(np.arange(rows), cols)
        c = np.tile(np.arange(cols), rows)
        if n == 4:
            lab = (r + c) % 2
        elif n == 8:
            lab = 2 * (r % 2) + c % 2
        elif n == 24:
            lab = 3 * (r % 3) + c % 3
        else:
            raise XRDError(f"method.neighbors={n!r} is not one of: 4, 8, 24")
    nb = neighbor_indices(s, n)
    if np.any(lab[nb] == lab[:, None]):
        raise RuntimeError(f"sub-lattice labels are not a proper colouring for scan {_fmt(s)}, n={n}")
    return lab.astype(np.int64)
