"""Write outputs under a temporary name in the same folder and rename them when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import XRDError


def check_output(path: Path, overwrite: bool, inputs: tuple = ()) -> Path:
    """Refuse to replace an existing output unless asked to, and an input file (``inputs``: paths; other
    objects are ignored) even then; make sure its folder exists."""
    path = Path(path)
    if path.is_dir():
        raise XRDError(f"{path}: output path is a directory")
    for src in inputs:
        if isinstance(src, (str, os.PathLike)) and _same_file(Path(src), path):
            raise XRDError(f"{path}: this is the input file; the output must not replace it (choose another path)")
    if path.exists() and not overwrite:
        raise XRDError(f"{path}: output exists; pass --overwrite (Python: overwrite=True) to replace it")
    if not path.parent.exists():
        raise XRDError(f"{path.parent}: output folder does not exist")
    if not os.access(path.parent, os.W_OK):
        raise XRDError(f"{path.parent}: output folder is not writable")
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    On any error (including a full disk or a cancel) the temporary file is removed, so no file that
    claims to be complete is ever left behind.
    """
    path = check_output(Path(path), overwrite)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    except OSError as e:  # a read-only file system, no permission, a full disk
        raise XRDError(f"{path}: cannot write in {path.parent} ({e.strerror or e})") from None
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if e.errno == 28:  # ENOSPC
            raise XRDError(f"{path}: disk full while writing; no output was kept") from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: Path, text: str, overwrite: bool = True) -> Path:
    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        tmp.write_text(text)
    return Path(path)
