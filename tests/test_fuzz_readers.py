"""Fuzzing the readers: every input either opens correctly or is refused with one XRDError line naming the file.

Random bytes behind real magic numbers, truncated real and written files, small arrays of odd dtypes and
shapes (through .npy and HDF5), all bounded in time (an alarm fails a case that hangs). The files in
``tests/fuzz_corpus/`` (made by ``tests/fuzz_corpus/make_corpus.py``) are the representative bad inputs;
each must make ``xrd-denoise info`` exit 2 with one line on stderr naming the file and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_xrd_denoise.cli import main as cli_main
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.io.readers import close_all, open_stack

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LAB6 = REAL / "ssrl_LaB6_Pilatus300KW_tth_scan" / "ssrl_LaB6_tth_scan_stack_DERIVED.h5"
CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
HANG_S = 20

# The test suite replays the same examples every run (derandomize); XRD_FUZZ_EXPLORE=N explores new random
# examples, N times as many, e.g. `XRD_FUZZ_EXPLORE=10 pytest tests/test_fuzz_readers.py`.
EXPLORE = int(os.environ.get("XRD_FUZZ_EXPLORE", "0") or 0)
N_EXAMPLES = 60 * max(1, EXPLORE)
FUZZ = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None,
                derandomize=not EXPLORE)

MAGICS = {
    "hdf5": (b"\x89HDF\r\n\x1a\n", [".h5", ".nxs", ".bin"]),
    "tiff-le": (b"II*\x00", [".tif", ".bin"]),
    "tiff-be": (b"MM\x00*", [".tiff", ".bin"]),
    "edf": (b"{\nHeaderID = EH:000001:000000:000000 ;\nImage = 1 ;\nDim_1 = 32 ;\nDim_2 = 32 ;\n", [".edf", ".bin"]),
    "npy": (b"\x93NUMPY\x01\x00", [".npy", ".bin"]),
    "cbf": (b"###CBF: VERSION 1.5\r\n", [".cbf", ".bin"]),
    "zip": (b"PK\x03\x04", [".zip", ".npz"]),
    "mib": (b"MQ1,000001,00384,01,0256,0256,U16,   1x1,01,", [".mib"]),
}


class Hang(BaseException):
    """A reader ran too long (a BaseException, so that no reader's ``except Exception`` can hide it)."""


class KnownBug(Exception):
    """A case that hits a reader bug listed in ``fuzz_corpus/make_corpus.py:KNOWN_READER_BUGS``."""


def _load_corpus_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corpus", CORPUS / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


KNOWN_READER_BUGS = _load_corpus_module().KNOWN_READER_BUGS


def check_known_bugs(path: Path) -> None:
    """Raise KnownBug before reading a file that would hang the reader (see KNOWN_READER_BUGS)."""
    data = path.read_bytes()
    if b"_array_data.data" in data and b"\x0c\x1a\x04\xd5" not in data:
        raise KnownBug("CBF without the binary starter: fabio loops forever")


@contextlib.contextmanager
def no_hang(seconds: int = HANG_S):
    """Fail (raise Hang) if the block runs longer than ``seconds``."""

    def on_alarm(signum, frame):
        raise Hang(f"reader still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def outcome(path: Path, **kw):
    """``("error", message)`` or ``("ok", stack, frames)``; any other exception propagates (a reader bug)."""
    check_known_bugs(path)
    try:
        with no_hang():
            try:
                stack = open_stack(path, **kw)
            except ZeroDivisionError as e:
                if path.suffix in (".tif", ".tiff"):
                    raise KnownBug("tifffile ZeroDivisionError on a zero-size page") from e
                raise
            except Hang as e:
                import traceback

                where = [f.name for f in traceback.extract_tb(e.__traceback__)]
                if "_read_binary_section_header" in where:
                    raise KnownBug("fabio loops forever looking for the CBF binary starter") from None
                raise
            except XRDError as e:
                msg = str(e)
                assert "\n" not in msg, msg
                assert path.name in msg, f"error does not name the file: {msg}"
                return ("error", msg)
            try:
                frames = np.asarray(stack.flat().compute())
            except XRDError as e:
                assert "\n" not in str(e) and path.name in str(e), str(e)
                return ("error", str(e))
            return ("ok", stack, frames)
    finally:
        close_all()  # drop cached handles before the temporary file goes


def fuzz_outcome(path: Path, **kw):
    """:func:`outcome` inside a hypothesis test: a known reader bug makes the example invalid (it is
    pinned by an xfail corpus case instead), anything else unexpected fails the test."""
    from hypothesis import reject

    try:
        return outcome(path, **kw)
    except KnownBug:
        reject()


@contextlib.contextmanager
def scratch(suffix: str, content: bytes | None = None):
    with tempfile.TemporaryDirectory(prefix="xrd-fuzz-") as d:
        p = Path(d) / f"case{suffix}"
        if content is not None:
            p.write_bytes(content)
        yield p


# ------------------------------------------------------------------------------------------------
# random bytes behind real magic numbers
# ------------------------------------------------------------------------------------------------
@FUZZ
@given(kind=st.sampled_from(sorted(MAGICS)), tail=st.binary(max_size=3000), pick=st.integers(0, 3))
def test_magic_prefix_then_random_bytes(kind, tail, pick):
    magic, suffixes = MAGICS[kind]
    with scratch(suffixes[pick % len(suffixes)], magic + tail) as p:
        r = fuzz_outcome(p)
        if r[0] == "ok":  # random bytes may still be a readable image: then it must be a real numeric stack
            assert r[2].shape == r[1].shape and r[1].dtype.kind in "biuf"


# ------------------------------------------------------------------------------------------------
# truncated files
# ------------------------------------------------------------------------------------------------
_LAB6_FRAMES: list[np.ndarray] = []


def lab6_frames() -> np.ndarray:
    if not _LAB6_FRAMES:
        _LAB6_FRAMES.append(np.asarray(open_stack(LAB6).flat().compute()))
        close_all()
    return _LAB6_FRAMES[0]


@pytest.mark.skipif(not LAB6.exists(), reason="real data not available")
@settings(max_examples=25 * max(1, EXPLORE), deadline=None, database=None, derandomize=not EXPLORE)
@given(frac=st.floats(0.0, 0.999))
def test_truncated_real_lab6(frac):
    """Cut anywhere: refused, or (if the cut spared every frame) opened with exactly the original frames."""
    size = LAB6.stat().st_size
    cut = max(1, int(frac * size))
    with open(LAB6, "rb") as fh:
        head = fh.read(cut)
    with scratch(".h5", head) as p:
        r = fuzz_outcome(p)
        if r[0] == "ok":
            np.testing.assert_array_equal(r[2], lab6_frames())


def _written(tmp: Path, kind: str) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.poisson(3.0, size=(6, 32, 32)).astype(np.uint16)
    p = tmp / f"w{kind}"
    if kind == ".npy":
        np.save(p, a)
    elif kind == ".h5":
        with h5py.File(p, "w") as f:
            f.create_dataset("entry/data/data", data=a, chunks=(1, 32, 32), compression="gzip")
    else:
        import tifffile

        tifffile.imwrite(p, a)
    return p, a


@FUZZ
@given(kind=st.sampled_from([".npy", ".h5", ".tif"]), frac=st.floats(0.0, 0.999))
def test_truncated_written_files(kind, frac):
    """Refused, or opened with the original frames (a cut that removes only trailing metadata)."""
    with tempfile.TemporaryDirectory() as d:
        full, a = _written(Path(d), kind)
        data = full.read_bytes()
    cut = max(1, int(frac * len(data)))
    with scratch(kind, data[:cut]) as p:
        r = fuzz_outcome(p)
        if r[0] == "ok":
            np.testing.assert_array_equal(r[2], a, err_msg=f"{kind} cut to {cut} of {len(data)} bytes")


# ------------------------------------------------------------------------------------------------
# valid files with random bytes overwritten (reaches the parsers behind the headers)
# ------------------------------------------------------------------------------------------------
_VALID: dict[str, bytes] = {}


def valid_bytes(kind: str) -> bytes:
    """A small valid file of each format, made once."""
    if not _VALID:
        import fabio
        import tifffile

        a = np.random.default_rng(1).poisson(3.0, size=(3, 24, 24)).astype(np.uint16)
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            files = {".npy": d / "a.npy", ".h5": d / "a.h5", ".tif": d / "a.tif", ".edf": d / "a.edf",
                     ".cbf": d / "a.cbf", ".npz": d / "a.npz"}
            np.save(files[".npy"], a)
            with h5py.File(files[".h5"], "w") as f:
                f.create_dataset("entry/data/data", data=a, chunks=(1, 24, 24), compression="gzip")
            tifffile.imwrite(files[".tif"], a)
            fabio.edfimage.EdfImage(data=a[0]).write(str(files[".edf"]))
            fabio.cbfimage.CbfImage(data=a[0].astype(np.int32)).write(str(files[".cbf"]))
            np.savez_compressed(files[".npz"], data=a)
            _VALID.update({k: p.read_bytes() for k, p in files.items()})
    return _VALID[kind]


@FUZZ
@given(kind=st.sampled_from([".npy", ".h5", ".tif", ".edf", ".cbf", ".npz"]),
       edits=st.lists(st.tuples(st.floats(0.0, 0.999), st.integers(0, 255)), min_size=1, max_size=6),
       head=st.booleans())
def test_mutated_valid_files(kind, edits, head):
    data = bytearray(valid_bytes(kind))
    span = min(len(data), 600) if head else len(data)  # half the cases hit the headers
    for pos, val in edits:
        data[int(pos * span)] = val
    with scratch(kind, bytes(data)) as p:
        r = fuzz_outcome(p)
        if r[0] == "ok":
            assert r[2].shape == r[1].shape and r[1].dtype.kind in "biuf"


# ------------------------------------------------------------------------------------------------
# small arrays of odd dtypes and shapes
# ------------------------------------------------------------------------------------------------
ODD_DTYPES = st.one_of(
    hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(), hnp.floating_dtypes(), hnp.complex_number_dtypes(),
    hnp.boolean_dtypes(), hnp.byte_string_dtypes(max_len=4), hnp.unicode_string_dtypes(max_len=4),
    hnp.datetime64_dtypes(), hnp.timedelta64_dtypes(),
)
ODD_SHAPES = st.one_of(
    st.just(()), st.just((1, 1)), st.just((3, 1, 1)), st.just((1, 40)),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=20), st.just((2, 16, 16)), st.just((16, 16)),
)


@st.composite
def odd_arrays(draw):
    dtype = draw(ODD_DTYPES)
    shape = draw(ODD_SHAPES)
    fill = draw(st.sampled_from(["random", "nan", "zeros"]))
    if fill == "random":
        a = draw(hnp.arrays(dtype, shape))
    else:
        a = np.zeros(shape, dtype=dtype)
        if fill == "nan" and dtype.kind in "fc":
            a[...] = np.nan
    return a


def _check_array_outcome(a: np.ndarray, r) -> None:
    if r[0] == "ok":
        stack, frames = r[1], r[2]
        assert a.dtype.kind in "biuf", f"{a.dtype} accepted"
        # what opened is the data that was written (byte order and all)
        assert frames.size == a.size
        np.testing.assert_array_equal(frames.reshape(-1), a.reshape(-1))
        assert min(stack.frame_shape) >= 16


@FUZZ
@given(a=odd_arrays())
def test_odd_arrays_as_npy(a):
    with scratch(".npy") as p:
        np.save(p, a, allow_pickle=False)
        _check_array_outcome(a, fuzz_outcome(p))


@FUZZ
@given(a=odd_arrays())
def test_odd_arrays_as_hdf5(a):
    if a.dtype.kind in "UMm":
        a = a.astype(object) if a.dtype.kind == "U" else a.view(np.int64)  # h5py stores no numpy U / datetime
    with scratch(".h5") as p:
        with h5py.File(p, "w") as f:
            if a.dtype == object:
                f.create_dataset("entry/data/data", data=a.astype(str).astype(object), dtype=h5py.string_dtype())
            else:
                f.create_dataset("entry/data/data", data=a)
        _check_array_outcome(a if a.dtype != object else a.astype(str), fuzz_outcome(p))


def test_object_npy_is_refused(tmp_path):
    p = tmp_path / "objects.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    r = outcome(p)
    assert r[0] == "error"


# ------------------------------------------------------------------------------------------------
# the corpus, through the command line
# ------------------------------------------------------------------------------------------------
CORPUS_FILES = sorted(p for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".py") if CORPUS.is_dir() else []


def _corpus_params():
    for p in CORPUS_FILES:
        marks = []
        if p.name in KNOWN_READER_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=f"reader bug: {KNOWN_READER_BUGS[p.name]}"))
        yield pytest.param(p, id=p.name, marks=marks)


def test_corpus_is_small_and_reproducible(tmp_path):
    assert len(CORPUS_FILES) >= 25
    assert all(p.stat().st_size <= 8192 for p in CORPUS_FILES)
    assert set(KNOWN_READER_BUGS) <= {p.name for p in CORPUS_FILES}
    r = subprocess.run([sys.executable, str(CORPUS / "make_corpus.py"), str(tmp_path)], check=False, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    made = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(made) == {p.name for p in CORPUS_FILES}
    # byte for byte, except HDF5 files (their layout may change with the HDF5 library version)
    assert all(made[p.name] == p.read_bytes() for p in CORPUS_FILES if p.suffix != ".h5")


@pytest.mark.parametrize("path", list(_corpus_params()))
def test_corpus_file_info_exits_2(path, capfd, monkeypatch):
    """``xrd-denoise info FILE``: exit 2, exactly one line on stderr naming the file, no traceback."""
    import logging

    monkeypatch.setattr(logging.root, "handlers", [])  # as in a real CLI process (pytest adds log handlers)
    before = path.read_bytes()
    with no_hang(8):
        code = cli_main(["info", str(path)])
    err = capfd.readouterr().err  # capfd: also what libraries log straight to the process's stderr
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert path.read_bytes() == before
    assert code == 2, err
    assert len(lines) == 1 and path.name in lines[0] and "Traceback" not in err, err


def test_corpus_through_the_console_script():
    """The installed ``xrd-denoise`` on a few corpus files (subprocesses): exit 2, one line, no traceback."""
    exe = Path(sys.executable).with_name("xrd-denoise")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "napari_xrd_denoise.cli"]
    picks = [CORPUS / n for n in ("hdf5_truncated_half.h5", "npy_object_array.npy", "edf_header_unterminated.edf")]
    for path in picks:
        r = subprocess.run(cmd + ["info", str(path)], check=False, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and path.name in lines[0], r.stderr
