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


class RunLock:
    """An exclusive lock on ``lock_path`` for as long as one run writes ``target``; a second run on the
    same target is refused in one line. The lock dies with the process (kill -9 included) and a stale
    lock file is taken over. Without POSIX locks (Windows) there is no check."""

    def __init__(self, lock_path: Path, target: Path, busy: str = "another run is writing this output now"):
        self.lock_path, self.target, self.busy = Path(lock_path), Path(target), busy
        self._f = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self
        lp = self.lock_path
        for _ in range(5):
            try:
                f = open(lp, "a+")
            except OSError:
                return self  # an unwritable folder fails with its own message when the target is written
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise XRDError(f"{self.target}: {self.busy} ({lp.name} is locked); wait for it to finish or "
                               "choose another output") from None
            try:  # still the file at the lock's path? (a finishing run removes it: then lock the new one)
                same = os.fstat(f.fileno()).st_ino == os.stat(lp).st_ino
            except OSError:
                same = False
            if same:
                self._f = f
                return self
            f.close()
        return self

    def release(self) -> None:
        f, self._f = self._f, None
        if f is None:
            return
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        with contextlib.suppress(OSError):
            f.close()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
