"""Readers: real detector files and files written here, laziness, metadata and validity masks."""

from __future__ import annotations

import hashlib
import time
import zipfile
from pathlib import Path

import dask.array as da
import h5py
import hdf5plugin
import numpy as np
import pytest
import tifffile

from napari_xrd_denoise.errors import InputFileError, XRDError
from napari_xrd_denoise.io import readers
from napari_xrd_denoise.io.readers import list_datasets, load_mask, load_poni, open_stack

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
LAB6 = "ssrl_LaB6_Pilatus300KW_tth_scan/ssrl_LaB6_tth_scan_stack_DERIVED.h5"
ARINA = "arina_eiger_master_layout/test_00_master.h5"
LAMBDA = "lambda750k_nexus/testasapo1_1009_00002_m1_part00000.nxs"
XRF = "xrf_spectra/05_xrf_spectra.csv"
MERLIN = "merlin_4dstem/Merlin_navigation4x2_ROI.zip"


def real(rel: str) -> Path:
    p = REAL / rel
    if not p.exists():
        pytest.skip(f"real data not available: {rel}")
    return p


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
# builders of small test files
# ------------------------------------------------------------------------------------------------
def make_master(tmp: Path, blocks: list[np.ndarray], order: list[int] | None = None, **det) -> Path:
    """DECTRIS-style master file whose entry/data/data_NNNNNN are external links to data files."""
    names = []
    for i, arr in enumerate(blocks, 1):
        fn = tmp / f"scan_data_{i:06d}.h5"
        with h5py.File(fn, "w") as f:
            f.create_dataset("entry/data/data", data=arr, chunks=(1,) + arr.shape[1:], **hdf5plugin.Bitshuffle(cname="lz4"))
        names.append(fn.name)
    master = tmp / "scan_master.h5"
    with h5py.File(master, "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        g = e.create_group("data")
        for i in order or range(1, len(blocks) + 1):
            g[f"data_{i:06d}"] = h5py.ExternalLink(names[i - 1], "/entry/data/data")
        d = e.create_group("instrument/detector")
        d.attrs["NX_class"] = "NXdetector"
        s = d.create_group("detectorSpecific")
        for k, v in det.items():
            if k == "pixel_mask":
                s["pixel_mask"] = v
            else:
                d[k] = v
    return master


@pytest.fixture()
def master3(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    blocks = [rng.poisson(3, size=(n, 20, 24)).astype(np.uint32) + 100 * i for i, n in enumerate((4, 5, 3))]
    m = make_master(tmp_path, blocks, order=[3, 1, 2])  # links created out of order
    return m, np.concatenate(blocks)


# ------------------------------------------------------------------------------------------------
# real files
# ------------------------------------------------------------------------------------------------
def test_lab6_stack_lazy_with_gap_mask():
    p = real(LAB6)
    t0 = time.perf_counter()
    s = open_stack(p)
    assert time.perf_counter() - t0 < 5
    assert isinstance(s.data, da.Array)
    assert s.shape == (51, 195, 1475) and s.dtype == np.uint32 and s.frame_ndim == 2
    assert s.dataset == "entry/data/data"
    bad_cols = np.nonzero((~s.static_valid).any(axis=0))[0]
    assert list(bad_cols) == list(range(487, 494)) + list(range(981, 988))
    assert (~s.static_valid).sum() == 14 * 195
    assert s.pixel_size == pytest.approx((172e-6, 172e-6))
    tt = s.axis_values["two_theta_deg"]
    assert len(tt) == 51 and tt[0] == pytest.approx(5) and tt[-1] == pytest.approx(39)
    with h5py.File(p, "r") as f:
        ref = f["entry/data/data"][25]
    np.testing.assert_array_equal(s.frame(25), ref)
    assert np.median(ref[s.static_valid]) < 20  # low counts, as described


def test_arina_master_concatenates_linked_data():
    p = real(ARINA)
    s = open_stack(p)
    assert s.shape == (16, 192, 192) and s.dtype == np.uint32
    assert s.format == "hdf5-master"
    assert s.bit_depth == 32 and s.saturation == 8352
    assert s.count_time == pytest.approx(9.95e-5, rel=1e-3)
    assert s.pixel_size == pytest.approx((1e-4, 1e-4))
    assert s.beam_center is None  # 0, 0 in the file means "not set"
    assert any("4x4" in n for n in s.notes)
    with h5py.File(p.with_name("test_00_data_000001.h5"), "r") as f:
        np.testing.assert_array_equal(s.frames(0, 16), f["entry/data/data"][()])
    names = [d[0] for d in list_datasets(p)]
    assert "entry/data/data_000001" in names and "entry/instrument/detector/detectorSpecific/pixel_mask" in names


def test_lambda_nexus_pixel_mask_and_gaps():
    p = real(LAMBDA)
    s = open_stack(p)
    assert s.shape == (10, 516, 1554) and s.dtype == np.int16 and s.format == "nexus"
    assert s.dataset == "entry/instrument/detector/data"
    with h5py.File(p, "r") as f:
        pm = f["entry/instrument/detector/pixel_mask"][0]
    np.testing.assert_array_equal(s.static_valid, pm == 0)
    raw = s.frame(0)
    v = s.valid(raw)
    assert (raw == -1).sum() > 1000 and not v[raw == -1].any()  # -1 gaps are invalid
    assert s.saturation == 4095 and not v[raw >= 4095].any()
    assert s.pixel_size == pytest.approx((55e-6, 55e-6))  # micrometres in the file
    assert s.count_time == pytest.approx(0.1)  # milliseconds in the file


def test_lambda_with_poni_beam_centre():
    p, poni = real(LAMBDA), real("lambda750k_nexus/L2.poni")
    import pyFAI

    s = open_stack(p, poni=poni)
    fit = pyFAI.load(str(poni)).getFit2D()
    assert s.beam_center == pytest.approx((fit["centerY"] - 0.5, fit["centerX"] - 0.5))
    assert s.geometry["dist"] == pytest.approx(0.3091923560063649)
    assert any("Dioptas" in n for n in s.notes)


def test_xrf_csv_spectra():
    p = real(XRF)
    s = open_stack(p)
    raw = np.loadtxt(p, delimiter=",", skiprows=1)
    assert s.frame_ndim == 1 and s.shape == (32, 4095)
    np.testing.assert_array_equal(s.frames(0, 32), raw[:, 1:-1])
    e = s.axis_values["energy_keV"]
    assert len(e) == 4095 and e[0] == pytest.approx(-0.02) and e[-1] == pytest.approx(20.491)
    # also with ndim=2 asked (the default of the configuration): spectra stay 1D
    assert open_stack(p, ndim=2).frame_ndim == 1


def test_ued_tiff_and_powder_npy():
    s = open_stack(real("ued_512/ewald_walkoff.tif"))
    assert s.shape == (1, 512, 512) and s.dtype == np.float64
    h = open_stack(real("ued_512/hotspots.tif"))
    assert h.shape == (1, 256, 256) and h.dtype == np.uint16
    np.testing.assert_array_equal(h.frame(0), tifffile.imread(real("ued_512/hotspots.tif")))
    pw = open_stack(real("ued_512/powder.npy"), ndim=1)
    raw = np.load(real("ued_512/powder.npy"))
    assert pw.shape == (1, 1000) and pw.frame_ndim == 1
    np.testing.assert_array_equal(pw.axis_values["x"], raw[0])
    np.testing.assert_array_equal(pw.frame(0), raw[1])
    assert open_stack(real("ued_512/powder.npy")).frame_ndim == 1  # a 2 x 1000 array is not an image


def test_ued_beam_block_mask():
    m = real("ued_512/ewald_walkoff_mask.tif")
    raw = tifffile.imread(m)
    keep = load_mask(m, (512, 512), nonzero_is_valid=True)
    np.testing.assert_array_equal(keep, raw != 0)
    assert 0.8 < keep.mean() < 0.85
    np.testing.assert_array_equal(load_mask(m), raw == 0)  # pyFAI convention by default


def test_merlin_zip_mib():
    p = real(MERLIN)
    s = open_stack(p)
    assert s.shape == (8, 256, 256) and s.dtype == np.uint8 and s.format == "mib"
    assert s.bit_depth == 6
    with zipfile.ZipFile(p) as z:
        b = z.read("001_4x2_6bit.mib")
    rec = 384 + 256 * 256
    f3 = np.frombuffer(b[3 * rec + 384 : 4 * rec], dtype=np.uint8).reshape(256, 256)
    np.testing.assert_array_equal(s.frame(3), f3)
    raw = s.frame(0)
    assert (raw == 63).any() and not s.valid(raw)[raw == 63].any()  # saturated 6-bit counter
    r = open_stack(p, dataset="002_4x2_6bit_roi128.mib")
    assert r.shape == (8, 128, 256)


def test_real_inputs_never_modified():
    files = [real(LAB6), real(ARINA), real(LAMBDA), real(XRF), real(MERLIN), real("ued_512/powder.npy")]
    files.append(real("arina_eiger_master_layout/test_00_data_000001.h5"))
    before = {f: (f.stat().st_mtime_ns, sha(f)) for f in files}
    for f in files[:6]:
        s = open_stack(f)
        s.frame(s.n_frames - 1)
    assert {f: (f.stat().st_mtime_ns, sha(f)) for f in files} == before


# ------------------------------------------------------------------------------------------------
# HDF5 written here
# ------------------------------------------------------------------------------------------------
def test_master_with_three_data_files(master3):
    m, ref = master3
    s = open_stack(m)
    assert s.shape == (12, 20, 24) and s.format == "hdf5-master"
    np.testing.assert_array_equal(s.frames(0, 12), ref)  # numeric order, not link creation order
    one = open_stack(m, dataset="entry/data/data_000002")
    np.testing.assert_array_equal(one.frames(0, 5), ref[4:9])


def test_open_reads_only_a_few_frames(tmp_path, monkeypatch):
    fn = tmp_path / "big.h5"
    with h5py.File(fn, "w") as f:
        d = f.create_dataset("entry/data/data", shape=(20000, 512, 512), dtype=np.uint32, chunks=(1, 512, 512),
                             compression="gzip")
        d[0] = 1
        d[19999] = 2
    assert fn.stat().st_size < 10 * 2**20  # 20 GB logical, almost nothing on disk
    calls = []
    orig = readers._H5Source.__getitem__

    def counting(self, key):
        out = orig(self, key)
        calls.append(np.asarray(out).nbytes)
        return out

    monkeypatch.setattr(readers._H5Source, "__getitem__", counting)
    t0 = time.perf_counter()
    s = open_stack(fn)
    assert time.perf_counter() - t0 < 2.0
    assert s.shape == (20000, 512, 512)
    assert sum(calls) <= 3 * 512 * 512 * 4  # at most the first, middle and last frame
    assert s.data.numblocks[0] > 100


def test_nexus_detector_data_and_units(tmp_path):
    fn = tmp_path / "scan.nxs"
    data = np.random.default_rng(1).poisson(2, size=(6, 32, 40)).astype(np.int32)
    data[:, 5, :] = -1  # Pilatus-style gap row
    data[:, :, 7] = -2  # bad column
    pm = np.zeros((32, 40), np.uint32)
    pm[10, 10] = 1 << 4  # noisy
    pm[11, 11] = 1 << 31  # virtual
    with h5py.File(fn, "w") as f:
        e = f.create_group("entry")
        e.attrs["NX_class"] = "NXentry"
        d = e.create_group("instrument/detector")
        d.attrs["NX_class"] = "NXdetector"
        d["data"] = data
        d["pixel_mask"] = pm[None]
        d["x_pixel_size"] = 75.0
        d["x_pixel_size"].attrs["units"] = "um"
        d["y_pixel_size"] = 0.075
        d["y_pixel_size"].attrs["units"] = "mm"
        d["count_time"] = [250.0]
        d["count_time"].attrs["units"] = "ms"
        d["beam_center_x"] = 20.5
        d["beam_center_y"] = 15.25
        e["sample/positioners/omega"] = np.linspace(0, 5, 6)
        f["entry/instrument/detector/flatfield"] = np.ones((1, 32, 40), np.float32)
    s = open_stack(fn)
    assert s.dataset == "entry/instrument/detector/data" and s.shape == (6, 32, 40)
    assert s.pixel_size == pytest.approx((75e-6, 75e-6)) and s.count_time == pytest.approx(0.25)
    assert s.beam_center == (15.25, 20.5)
    np.testing.assert_array_equal(s.axis_values["omega"], np.linspace(0, 5, 6))
    v = s.valid(s.frames(0, 6))
    expect = np.ones((6, 32, 40), bool)
    expect[:, 5, :] = False
    expect[:, :, 7] = False
    expect[:, 10, 10] = expect[:, 11, 11] = False
    np.testing.assert_array_equal(v, expect)


def test_sentinel_conventions_from_raw_integers(tmp_path):
    """2**32-1, 2**bit_depth-1, saturation and pixel_mask bits, on the raw uint32 values."""
    raw = np.full((2, 16, 16), 5, np.uint32)
    raw[0, 0, 0] = 2**32 - 1
    raw[0, 0, 1] = 2**12 - 1
    raw[0, 0, 2] = 900  # at the saturation value
    raw[0, 0, 3] = 899
    pm = np.zeros((16, 16), np.uint32)
    pm[3, 3] = 1  # gap
    pm[4, 4] = 1 << 1  # dead
    pm[5, 5] = 1 << 8  # user
    m = make_master(tmp_path, [raw], bit_depth_image=12, saturation_value=900, pixel_mask=pm)
    s = open_stack(m)
    assert s.bit_depth == 12 and s.saturation == 900
    v = s.valid(s.frames(0, 2))
    assert not v[0, 0, 0] and not v[0, 0, 1] and not v[0, 0, 2] and v[0, 0, 3]
    assert not v[:, 3, 3].any() and not v[:, 4, 4].any() and not v[:, 5, 5].any()
    assert v.sum() == 2 * 256 - 3 - 2 * 3
    s2 = open_stack(m, saturation=100)  # user saturation overrides the file's
    assert s2.saturation == 100 and not s2.valid(s2.frame(0))[0, 3] and s2.valid(s2.frame(0))[1, 1]


def test_pilatus_negatives_nan_and_keep_negatives(tmp_path):
    a = np.ones((3, 20, 20), np.float32)
    a[0, 1, 1] = np.nan
    a[0, 2, 2] = np.inf
    a[1, 3, 3] = -1
    a[2, 4, 4] = -2
    fn = tmp_path / "f.npy"
    np.save(fn, a)
    s = open_stack(fn)
    v = s.valid(s.frames(0, 3))
    assert v.sum() == 3 * 400 - 4
    k = open_stack(fn, keep_negatives=True)
    assert k.valid(k.frames(0, 3)).sum() == 3 * 400 - 2


def test_list_datasets_and_dataset_choice(tmp_path):
    fn = tmp_path / "two.h5"
    with h5py.File(fn, "w") as f:
        f["a/big"] = np.ones((5, 20, 20), np.uint16)
        f["b/small"] = np.ones((2, 20, 20), np.float32)
        f["b/text"] = "hello"
    names = {n: (s, d) for n, s, d in list_datasets(fn)}
    assert names["a/big"] == ((5, 20, 20), "uint16") and "b/text" not in names
    assert open_stack(fn).dataset == "a/big"
    assert open_stack(fn, dataset="b/small").shape == (2, 20, 20)


# ------------------------------------------------------------------------------------------------
# numpy, TIFF, fabio, spectra, Merlin written here
# ------------------------------------------------------------------------------------------------
def test_npy_and_npz(tmp_path):
    a = np.arange(4 * 3 * 20 * 24, dtype=np.uint16).reshape(4, 3, 20, 24)
    np.save(tmp_path / "a.npy", a)
    s = open_stack(tmp_path / "a.npy")
    assert s.scan_shape == (4, 3) and isinstance(s.data, da.Array)
    np.testing.assert_array_equal(s.frame(5), a[1, 2])
    np.savez(tmp_path / "z.npz", small=np.ones((2, 2)), frames=a)
    z = open_stack(tmp_path / "z.npz")
    assert z.dataset == "frames" and z.shape == a.shape
    np.testing.assert_array_equal(np.asarray(z.data), a)
    np.savez_compressed(tmp_path / "c.npz", frames=a[0], other=a[1] + 1)
    c = open_stack(tmp_path / "c.npz", dataset="other")
    np.testing.assert_array_equal(np.asarray(c.data), a[1] + 1)
    sp = np.random.default_rng(0).poisson(4, size=(7, 300))
    np.save(tmp_path / "spec.npy", sp)
    t = open_stack(tmp_path / "spec.npy", ndim=1)
    assert t.frame_ndim == 1 and t.shape == (7, 300)


def test_tiff_stack_compressed_and_series(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.poisson(5, size=(5, 24, 30)).astype(np.int32)
    tifffile.imwrite(tmp_path / "stack.tif", a)
    s = open_stack(tmp_path / "stack.tif")
    assert s.shape == (5, 24, 30)
    np.testing.assert_array_equal(np.asarray(s.data), a)
    tifffile.imwrite(tmp_path / "zip.tif", a, compression="zlib")
    z = open_stack(tmp_path / "zip.tif")
    np.testing.assert_array_equal(z.frames(0, 5), a)
    ser = tmp_path / "series"
    ser.mkdir()
    for i in range(12):  # scan_1 .. scan_12 must sort naturally, not as text
        tifffile.imwrite(ser / f"scan_{i + 1}.tif", np.full((20, 22), i, np.uint16))
    g = open_stack(ser / "scan_*.tif")
    assert g.shape == (12, 20, 22) and g.format == "tif-series"
    np.testing.assert_array_equal(np.asarray(g.data)[:, 0, 0], np.arange(12))
    d = open_stack(ser, scan_shape=(3, 4))
    assert d.shape == (3, 4, 20, 22) and d.frame(11)[0, 0] == 11


def test_edf_cbf_series_with_fabio(tmp_path):
    import fabio.cbfimage
    import fabio.edfimage

    edf = tmp_path / "edf"
    edf.mkdir()
    for i in (1, 2, 10):
        fabio.edfimage.EdfImage(data=np.full((18, 20), i, np.uint32)).write(str(edf / f"img_{i:d}.edf"))
    s = open_stack(edf)
    assert s.shape == (3, 18, 20) and list(np.asarray(s.data)[:, 0, 0]) == [1, 2, 10]
    multi = fabio.edfimage.EdfImage(data=np.zeros((18, 20), np.float32))
    for k in (1, 2):
        multi.append_frame(data=np.full((18, 20), k, np.float32))
    multi.write(str(tmp_path / "multi.edf"))
    m = open_stack(tmp_path / "multi.edf")
    assert m.shape == (3, 18, 20) and list(np.asarray(m.data)[:, 3, 3]) == [0, 1, 2]
    cbf = np.ones((20, 24), np.int32)
    cbf[2, :] = -1
    cbf[5, 5] = -2
    fabio.cbfimage.CbfImage(data=cbf).write(str(tmp_path / "p.cbf"))
    c = open_stack(tmp_path / "p.cbf")
    assert c.shape == (1, 20, 24)
    assert c.valid(c.frame(0)).sum() == 20 * 24 - 24 - 1


def test_spectra_files(tmp_path):
    amptek = tmp_path / "a.mca"
    counts = [0, 3, 5, 2] * 8
    amptek.write_text("<<PMCA SPECTRUM>>\nLIVE_TIME - 1.5\n<<DATA>>\n" + "\n".join(map(str, counts)) + "\n<<END>>\n")
    s = open_stack(amptek)
    assert s.frame_ndim == 1 and s.shape == (1, 32) and s.count_time == 1.5
    np.testing.assert_array_equal(s.frame(0), counts)
    plain = tmp_path / "p.mca"
    plain.write_text("\n".join(map(str, counts[::-1])))
    np.testing.assert_array_equal(open_stack(plain).frame(0), counts[::-1])
    csv = tmp_path / "s.csv"
    rows = np.random.default_rng(3).poisson(2, size=(5, 40))
    csv.write_text("\n".join(",".join(map(str, r)) for r in rows))  # no header, no index
    c = open_stack(csv)
    assert c.shape == (5, 40)
    np.testing.assert_array_equal(c.frames(0, 5), rows)
    hdr = tmp_path / "h.csv"
    hdr.write_text("idx," + ",".join(f"{0.1 * i:.1f}" for i in range(40)) + ",overflow\n"
                   + "\n".join(f"{k}," + ",".join(map(str, r)) + ",7" for k, r in enumerate(rows)))
    h = open_stack(hdr)
    assert h.shape == (5, 40) and h.axis_values["energy_keV"][-1] == pytest.approx(3.9)
    np.testing.assert_array_equal(h.frames(0, 5), rows)


def _mib_bytes(frames: np.ndarray, code: str = "U16") -> bytes:
    out = b""
    n, h, w = frames.shape
    dt = {"U08": ">u1", "U16": ">u2", "U32": ">u4"}[code]
    for i in range(n):
        head = f"MQ1,{i + 1:06d},00384,01,{w:04d},{h:04d},{code},   1x1,01,2021-01-01 00:00:00.000000,0.001,0,0,0".encode()
        out += head.ljust(384, b"\x00") + frames[i].astype(dt).tobytes()
    return out


def test_mib_written_here(tmp_path):
    fr = np.random.default_rng(4).integers(0, 4000, size=(6, 20, 32)).astype(np.uint16)
    (tmp_path / "s.mib").write_bytes(_mib_bytes(fr))
    (tmp_path / "s.hdr").write_text("HDR,\nCounter Depth (number):\t12\nFrames per Trigger (Number):\t3\nEnd\n")
    s = open_stack(tmp_path / "s.mib")
    assert s.shape == (2, 3, 20, 32) and s.bit_depth == 12
    np.testing.assert_array_equal(s.frame(4), fr[4])
    z = tmp_path / "s.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.mib", _mib_bytes(fr[:4], "U08"))
    t = open_stack(z)
    assert t.shape == (4, 20, 32) and t.dtype == np.uint8
    np.testing.assert_array_equal(t.frame(2), fr[2].astype(np.uint8))


# ------------------------------------------------------------------------------------------------
# masks, geometry, scan shape
# ------------------------------------------------------------------------------------------------
def test_user_masks_npy_tif_edf(tmp_path):
    import fabio.edfimage

    m = np.zeros((20, 24), np.uint8)
    m[0:3, :] = 1
    np.save(tmp_path / "m.npy", m)
    tifffile.imwrite(tmp_path / "m.tif", m)
    fabio.edfimage.EdfImage(data=m.astype(np.int8)).write(str(tmp_path / "m.edf"))
    for name in ("m.npy", "m.tif", "m.edf"):
        np.testing.assert_array_equal(load_mask(tmp_path / name, (20, 24)), m == 0)
    with pytest.raises(XRDError, match="mask shape"):
        load_mask(tmp_path / "m.npy", (24, 20))
    np.save(tmp_path / "d.npy", np.ones((3, 20, 24), np.uint16))
    s = open_stack(tmp_path / "d.npy", mask=tmp_path / "m.tif")
    assert s.static_valid.sum() == 17 * 24


def test_poni_without_tilt(tmp_path):
    poni = tmp_path / "g.poni"
    poni.write_text(
        "poni_version: 2\nDetector: Detector\n"
        'Detector_config: {"pixel1": 0.0001, "pixel2": 0.0001, "max_shape": null}\n'
        "Distance: 0.2\nPoni1: 0.00105\nPoni2: 0.00205\nRot1: 0\nRot2: 0\nRot3: 0\nWavelength: 1e-10\n"
    )
    geo, c = load_poni(poni, (32, 32))
    assert c == pytest.approx((10.0, 20.0))  # 10.5 and 20.5 pixel widths from the corner
    assert geo["dist"] == pytest.approx(0.2)
    np.save(tmp_path / "d.npy", np.ones((2, 32, 32), np.uint16))
    assert open_stack(tmp_path / "d.npy", poni=poni).beam_center == pytest.approx((10.0, 20.0))


def test_scan_shape(master3):
    m, ref = master3
    s = open_stack(m, scan_shape=(3, 4))
    assert s.shape == (3, 4, 20, 24)
    np.testing.assert_array_equal(s.frame(7), ref[7])
    with pytest.raises(XRDError, match=r"scan shape 5x3 \(--scan-shape\) does not match 12 frames"):
        open_stack(m, scan_shape=(5, 3))


def test_scan_grid_from_the_files_scan_shape_attribute(tmp_path):
    """A flat stack whose NXdata group declares scan_shape (the synthetic Eiger files do) opens on that
    grid, external data files or not; an attribute that does not fit the frame count is ignored."""
    from napari_xrd_denoise.synthetic import make_scan, write_scan

    scan = make_scan(scan_shape=(2, 3), frame_shape=(32, 32), dose="mid", seed=2)
    for name, external in (("ext_master.h5", True), ("one.h5", False)):
        s = open_stack(write_scan(tmp_path / name, scan, external=external, frames_per_file=4))
        assert s.scan_shape == (2, 3), name
        assert any("scan shape 2x3" in n for n in s.notes)
        np.testing.assert_array_equal(np.asarray(s.frame(4)), scan.counts[1, 1])
        assert open_stack(tmp_path / name, scan_shape=(3, 2)).scan_shape == (3, 2)
    with h5py.File(tmp_path / "bad.h5", "w") as fh:
        g = fh.create_group("entry/data")
        g.create_dataset("data", data=np.ones((6, 16, 16), np.uint16))
        g.attrs["scan_shape"] = np.array([4, 2])
    assert open_stack(tmp_path / "bad.h5").scan_shape == (6,)


def _write_spe(path, frames, code=3, footer=b""):
    """A Princeton SPE file as cameras write it: 4100-byte header, the frames, an optional XML footer."""
    n, h, w = frames.shape
    hdr = bytearray(4100)
    hdr[0:2] = np.int16(3).tobytes()  # controller version
    hdr[6:8] = np.uint16(w).tobytes()  # detector x size
    hdr[18:20] = np.uint16(h).tobytes()
    hdr[20:29], hdr[172:178] = b"23Nov2026", b"120000"
    hdr[42:44], hdr[656:658] = np.uint16(w).tobytes(), np.uint16(h).tobytes()
    hdr[108:110] = np.uint16(code).tobytes()
    hdr[1446:1450] = np.int32(n).tobytes()
    body = frames.astype({3: "<u2", 1: "<i4", 0: "<f4"}[code]).tobytes()
    if footer:
        hdr[678:686] = np.uint64(4100 + len(body)).tobytes()
    path.write_bytes(bytes(hdr) + body + footer)
    return path


@pytest.mark.parametrize("footer", [b"", b'<?xml version="1.0"?><SpeFormat version="3.0"/>'])
def test_spe_series_gives_every_frame(tmp_path, footer):
    frames = np.random.default_rng(0).poisson(5, (3, 40, 56)).astype(np.uint16)
    frames[1, 5, 7] = 60000
    st = open_stack(_write_spe(tmp_path / "kinetics.spe", frames, footer=footer))
    assert st.shape == (3, 40, 56) and st.format == "spe" and st.dtype == np.uint16
    assert np.array_equal(np.asarray(st.data.compute()), frames)


def test_spe_bad_files_are_one_line_errors(tmp_path):
    frames = np.ones((3, 20, 30), np.uint16)
    p = _write_spe(tmp_path / "cut.spe", frames)
    p.write_bytes(p.read_bytes()[:-700])
    with pytest.raises(InputFileError, match="cut.spe: truncated SPE file: the header announces 3 frame"):
        open_stack(p)
    q = tmp_path / "odd.spe"
    b = bytearray(_write_spe(q, frames).read_bytes())
    b[108:110] = np.uint16(9).tobytes()
    q.write_bytes(bytes(b))
    with pytest.raises(InputFileError, match="odd.spe: SPE data type code 9"):
        open_stack(q)


def test_marccd_pixels_through_fabio(tmp_path):
    """A MarCCD ``.mccd`` file is a TIFF with a private header block; fabio reads its pixels (the
    header block of a real detector is not reproduced here, only the TIFF layout)."""
    import tifffile

    frame = np.random.default_rng(1).poisson(7, (64, 48)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "img_0001.mccd", frame)
    st = open_stack(tmp_path / "img_0001.mccd")
    assert st.shape == (1, 64, 48) and st.format == "mccd"
    assert np.array_equal(np.asarray(st.data.compute())[0], frame)


def test_list_datasets_names_npz_arrays_and_merlin_zip_members(tmp_path):
    """The GUI's Dataset list: the arrays of a .npz and the .mib members of a Merlin zip, each openable by name."""
    from napari_xrd_denoise.io.readers import list_datasets, open_stack

    np.savez(tmp_path / "t.npz", frames=np.arange(2 * 20 * 24, dtype=np.uint16).reshape(2, 20, 24), note=np.ones(2))
    got = {n: s for n, s, _ in list_datasets(tmp_path / "t.npz")}
    assert got == {"frames": (2, 20, 24), "note": (2,)}
    assert open_stack(tmp_path / "t.npz", dataset="frames").shape == (2, 20, 24)
    z = REAL / "merlin_4dstem" / "Merlin_navigation4x2_ROI.zip"
    if not z.exists():
        pytest.skip("real Merlin data not present")
    names = [n for n, _, _ in list_datasets(z)]
    assert names == ["001_4x2_6bit.mib", "002_4x2_6bit_roi128.mib"]
    assert open_stack(z, dataset=names[1]).frame_shape == (128, 256)  # the ROI member, not the default first


def test_cropping_spectra_crops_their_energy_axis():
    from napari_xrd_denoise.io.readers import open_stack

    p = REAL / "xrf_spectra" / "05_xrf_spectra.csv"
    if not p.exists():
        pytest.skip("real XRF data not present")
    s = open_stack(p)
    e = s.axis_values["energy_keV"]
    c = s.crop([100, 1100])
    assert c.frame_shape == (1000,) and np.array_equal(c.axis_values["energy_keV"], e[100:1100])
