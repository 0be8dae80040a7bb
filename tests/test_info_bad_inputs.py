"""`describe` / `format_info` on every real file, and one-line errors for bad inputs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.io.info import describe, format_info
from napari_xrd_denoise.io.readers import open_stack

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

REAL_SHAPES = [
    ("ssrl_LaB6_Pilatus300KW_tth_scan/ssrl_LaB6_tth_scan_stack_DERIVED.h5", {}, (51, 195, 1475), "uint32"),
    ("arina_eiger_master_layout/test_00_master.h5", {}, (16, 192, 192), "uint32"),
    ("arina_eiger_master_layout/test_00_data_000001.h5", {}, (16, 192, 192), "uint32"),
    ("lambda750k_nexus/testasapo1_1009_00002_m1_part00000.nxs", {}, (10, 516, 1554), "int16"),
    ("lambda750k_nexus/testasapo1_1009_00002_m1_part00001.nxs", {"poni": "lambda750k_nexus/L2.poni"}, (10, 516, 1554), "int16"),
    ("xrf_spectra/05_xrf_spectra.csv", {}, (32, 4095), "uint32"),
    ("ued_512/ewald_walkoff.tif", {}, (1, 512, 512), "float64"),
    ("ued_512/hotspots.tif", {}, (1, 256, 256), "uint16"),
    ("ued_512/powder.npy", {}, (1, 1000), "float64"),
    ("merlin_4dstem/Merlin_navigation4x2_ROI.zip", {}, (8, 256, 256), "uint8"),
]


@pytest.mark.parametrize("rel,kw,shape,dtype", REAL_SHAPES, ids=[Path(r[0]).name for r in REAL_SHAPES])
def test_describe_real_files(rel, kw, shape, dtype):
    p = REAL / rel
    if not p.exists():
        pytest.skip(f"real data not available: {rel}")
    kw = {k: REAL / v for k, v in kw.items()}
    d = describe(open_stack(p, **kw))
    assert d["shape"] == shape and d["dtype"] == dtype
    text = format_info(d)
    assert " x ".join(map(str, shape)) in text.splitlines()[[ln.split(":")[0].strip() for ln in text.splitlines()].index("shape")]
    widths = {ln.index(" : ") for ln in text.splitlines()}
    assert len(widths) == 1  # aligned
    if "LaB6" in rel:
        assert d["mask_reasons"] == {"gap": 2730} and d["static_invalid_pixels"] == 2730
        assert d["counts"]["median"] < 20 and d["counts"]["integer_valued"]
        assert "two_theta_deg" in d["axis_values"]
    if "part00001" in rel:
        assert d["beam_center"] is not None and d["geometry"]["rot1"] != 0
        assert d["invalid_reasons"]["negative"] > 0  # the -1 gaps


def test_describe_counts_on_synthetic():
    from napari_xrd_denoise.io.stack import ScanStack

    a = np.zeros((5, 20, 20), np.uint32)
    a[:, :, :10] = 4
    a[:, 0, 0] = 2**32 - 1
    s = ScanStack.from_array(a)
    d = describe(s, sample_frames=3)
    assert d["sampled_frames"] == [0, 2, 4]
    assert d["invalid_reasons"] == {"all-ones sentinel": 3}
    assert d["invalid_fraction"] == pytest.approx(1 / 400)
    assert d["counts"]["mean"] == pytest.approx(4 * 199 / 399)
    assert d["counts"]["median"] == 0 and d["counts"]["max"] == 4


# ------------------------------------------------------------------------------------------------
# bad inputs: each a one-line XRDError naming the file, dataset or parameter
# ------------------------------------------------------------------------------------------------
def one_line_error(needle: str, *args, **kw) -> str:
    with pytest.raises(XRDError) as e:
        open_stack(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg, msg
    return msg


def test_missing_and_empty(tmp_path):
    assert "no such file" in one_line_error("nothere.h5", tmp_path / "nothere.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    assert "empty" in one_line_error("empty.h5", tmp_path / "empty.h5")


def test_random_bytes_and_text(tmp_path):
    rnd = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    (tmp_path / "noise.bin").write_bytes(rnd)
    one_line_error("noise.bin", tmp_path / "noise.bin")
    (tmp_path / "noise.h5").write_bytes(rnd)
    one_line_error("noise.h5", tmp_path / "noise.h5")
    (tmp_path / "notes.txt").write_text("a measurement log\nnothing to see\n")
    one_line_error("notes.txt", tmp_path / "notes.txt")
    (tmp_path / "words.csv").write_text("a,b,c\nx,y,z\n")
    one_line_error("words.csv", tmp_path / "words.csv")


def test_truncated_hdf5(tmp_path):
    fn = tmp_path / "cut.h5"
    with h5py.File(fn, "w") as f:
        f.create_dataset("entry/data/data", data=np.ones((20, 64, 64), np.uint32))
    b = fn.read_bytes()
    fn.write_bytes(b[: len(b) // 2])
    one_line_error("cut.h5", fn)


def test_wrong_dataset_lists_available(tmp_path):
    fn = tmp_path / "d.h5"
    with h5py.File(fn, "w") as f:
        f["entry/data/data"] = np.ones((3, 20, 20), np.uint16)
    msg = one_line_error("entry/data/nope", fn, dataset="entry/data/nope")
    assert "entry/data/data" in msg and "d.h5" in msg


def test_external_link_to_missing_file(tmp_path):
    fn = tmp_path / "x_master.h5"
    with h5py.File(fn, "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("x_data_000001.h5", "/entry/data/data")
    one_line_error("x_data_000001.h5", fn)


def test_scan_shape_not_dividing(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((12, 20, 20), np.uint16))
    msg = one_line_error("scan shape 5x2 (--scan-shape)", tmp_path / "a.npy", scan_shape=(5, 2))
    assert "12 frames" in msg and "a.npy" in msg


def test_tiny_frames(tmp_path):
    np.save(tmp_path / "tiny.npy", np.ones((10, 1, 1), np.uint16))
    assert "too small" in one_line_error("tiny.npy", tmp_path / "tiny.npy")


def test_all_nan_and_all_invalid(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((4, 20, 20), np.nan, np.float32))
    assert "no valid pixel" in one_line_error("nan.npy", tmp_path / "nan.npy")
    np.save(tmp_path / "sent.npy", np.full((4, 20, 20), 2**32 - 1, np.uint32))
    one_line_error("sent.npy", tmp_path / "sent.npy")
    fn = tmp_path / "masked.h5"
    with h5py.File(fn, "w") as f:
        f["entry/data/data"] = np.ones((2, 20, 20), np.uint32)
        f["entry/instrument/detector/pixel_mask"] = np.ones((20, 20), np.uint32)
    assert "no valid pixel" in one_line_error("masked.h5", fn)


def test_string_complex_and_scalar_arrays(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["ab", "cd"]] * 20))
    one_line_error("s.npy", tmp_path / "s.npy")
    np.save(tmp_path / "c.npy", np.ones((3, 20, 20), np.complex64))
    assert "complex" in one_line_error("c.npy", tmp_path / "c.npy")
    np.save(tmp_path / "z.npy", np.array(3.0))
    one_line_error("z.npy", tmp_path / "z.npy")
    fn = tmp_path / "str.h5"
    with h5py.File(fn, "w") as f:
        f["names"] = np.array([b"a", b"b"] * 20).reshape(2, 20)
        f["value"] = 3.0
    one_line_error("str.h5", fn)
    one_line_error("names", fn, dataset="names")
    one_line_error("value", fn, dataset="value")


def test_folder_without_frames(tmp_path):
    (tmp_path / "readme.md").write_text("no frames here")
    assert "no frame files" in one_line_error(str(tmp_path), tmp_path)
    one_line_error("scan_*.tif", tmp_path / "scan_*.tif")


def test_bad_mask_and_poni(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 20, 20), np.uint16))
    np.save(tmp_path / "m.npy", np.zeros((10, 10), np.uint8))
    assert "--mask" in one_line_error("m.npy", tmp_path / "a.npy", mask=tmp_path / "m.npy")
    (tmp_path / "g.poni").write_text("this is not a poni file\n")
    one_line_error("g.poni", tmp_path / "a.npy", poni=tmp_path / "g.poni")


def test_inputs_not_modified(tmp_path):
    fn = tmp_path / "d.h5"
    with h5py.File(fn, "w") as f:
        f["entry/data/data"] = np.arange(3 * 20 * 20, dtype=np.uint32).reshape(3, 20, 20)
    np.save(tmp_path / "a.npy", np.ones((3, 20, 20), np.uint16))
    files = [fn, tmp_path / "a.npy"]
    before = [(os.stat(f).st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]
    for f in files:
        s = open_stack(f)
        describe(s)
        np.asarray(s.data)
    after = [(os.stat(f).st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest()) for f in files]
    assert before == after


def test_dataset_for_a_format_without_datasets(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((3, 20, 20), np.uint16))
    assert "--dataset" in one_line_error("a.npy", tmp_path / "a.npy", dataset="entry/data/data")
