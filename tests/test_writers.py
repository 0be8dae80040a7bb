"""Writers: round trips, NaN where invalid, provenance, refusal to overwrite, atomicity, resume; napari hooks."""

from __future__ import annotations

import errno
from pathlib import Path
import json

import dask.array as da
import h5py
import numpy as np
import pytest

from napari_xrd_denoise import __version__
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.io import napari_io
from napari_xrd_denoise.io.writers import ResultWriter, part_path, read_result, write_array

SHAPE = (2, 3, 16, 20)
CONFIG = json.dumps({"method": {"name": "n2s"}, "train": {"epochs": 3}})


def prov(config: str = CONFIG) -> dict:
    return {"config": config, "input_file": "/data/scan_master.h5", "input_dataset": "entry/data/data_*",
            "command_line": "xrd-denoise denoise scan_master.h5 out.h5", "method": "n2s"}


def data_and_valid(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 3.0, size=SHAPE).astype(np.float32)
    v = np.ones(SHAPE, bool)
    v[..., 4, :] = False  # a gap row
    v[1, 2, 7, 7] = False  # one hot pixel in one frame
    return x, v


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".tif"])
def test_round_trip(tmp_path, suffix):
    x, v = data_and_valid()
    out = tmp_path / f"res{suffix}"
    with ResultWriter(out, SHAPE, 2, provenance=prov()) as w:
        flat_x, flat_v = x.reshape(6, 16, 20), v.reshape(6, 16, 20)
        w.write(0, flat_x[:4], flat_v[:4])  # a block crossing a scan row
        w.write(4, flat_x[4:], flat_v[4:])
        assert w.n_done == 6
    data, valid, p = read_result(out)
    data, valid = np.asarray(data), np.asarray(valid).astype(bool)
    assert data.shape == SHAPE and data.dtype == np.float32
    np.testing.assert_array_equal(valid, v)
    np.testing.assert_array_equal(data[v], x[v])
    assert np.isnan(data[~v]).all()
    assert p["config"] == CONFIG and p["version"] == __version__ and p["method"] == "n2s"
    assert p["input_file"] == "/data/scan_master.h5" and "created" in p
    assert not part_path(out).exists()


def test_hdf5_layout(tmp_path):
    x, v = data_and_valid()
    out = tmp_path / "r.nxs"
    write_array(out, x, v, provenance=prov())
    with h5py.File(out, "r") as f:
        d = f["entry/data/data"]
        assert d.chunks == (1, 1, 16, 20) and d.compression == "gzip" and d.shuffle
        assert f["entry/data/valid"].dtype == np.uint8 and f["entry/data/valid"].compression == "gzip"
        assert f["entry"].attrs["NX_class"] == "NXentry" and f["entry/data"].attrs["NX_class"] == "NXdata"
        assert f["entry"].attrs["n_done"] == 6 and f["entry"].attrs["complete"] == 1
        assert f["entry/provenance/config"][()].decode() == CONFIG
        assert f["entry/provenance/version"][()].decode() == __version__


def test_spectra_and_static_validity(tmp_path):
    sp = np.random.default_rng(1).poisson(3, size=(40, 256)).astype(np.float32)
    keep = np.ones(256, bool)
    keep[:5] = False
    out = tmp_path / "s.h5"
    write_array(out, sp, keep, provenance=prov(), frame_ndim=1)
    d, valid, _ = read_result(out)
    assert d.shape == (40, 256) and valid.shape == (256,)
    np.testing.assert_array_equal(np.asarray(valid).astype(bool), keep)
    assert np.isnan(np.asarray(d)[:, :5]).all()
    np.testing.assert_array_equal(np.asarray(d)[:, 5:], sp[:, 5:])


def test_dask_input_streams(tmp_path):
    x, _ = data_and_valid()
    lazy = da.from_array(x, chunks=(1, 1, 16, 20))
    out = write_array(tmp_path / "d.npy", lazy)
    np.testing.assert_array_equal(np.load(out), x)


def test_refuses_to_overwrite(tmp_path):
    x, v = data_and_valid()
    out = tmp_path / "r.h5"
    write_array(out, x, v, provenance=prov())
    with pytest.raises(XRDError, match="output exists; pass --overwrite"):
        write_array(out, x, v, provenance=prov())
    write_array(out, 2 * x, v, provenance=prov(), overwrite=True)
    np.testing.assert_array_equal(np.asarray(read_result(out)[0])[v], 2 * x[v])


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".tif"])
def test_atomic_abort_and_exception(tmp_path, suffix):
    x, v = data_and_valid()
    out = tmp_path / f"r{suffix}"
    w = ResultWriter(out, SHAPE, 2, provenance=prov())
    w.write(0, x.reshape(6, 16, 20)[:3])
    assert not out.exists() and part_path(out).exists()
    w.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"):
        with ResultWriter(out, SHAPE, 2, provenance=prov()) as w:
            w.write(0, x.reshape(6, 16, 20)[:2])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_resume_reopens_part(tmp_path, suffix):
    x, v = data_and_valid()
    fx, fv = x.reshape(6, 16, 20), v.reshape(6, 16, 20)
    out = tmp_path / f"r{suffix}"
    w = ResultWriter(out, SHAPE, 2, provenance=prov())
    w.write(0, fx[:2], fv[:2])
    w.write(2, fx[2:4], fv[2:4])
    # simulate a killed run: the handles go away without close() or abort(); the OS drops its lock
    def killed(writer):
        if writer._h5 is not None:
            writer._h5.close()
        writer._mm = None
        writer._lockf._f.close()  # the lock file stays behind, unlocked
        writer._lockf = None

    killed(w)
    assert part_path(out).exists() and not out.exists()
    other = ResultWriter(out, SHAPE, 2, provenance=prov(config='{"other": 1}'), resume=True)
    assert other.n_done == 0 and not other.resumed  # a different configuration starts again
    other.write(0, fx[:1] + 100, fv[:1])
    killed(other)
    w = ResultWriter(out, SHAPE, 2, provenance=prov(), resume=True)
    assert w.n_done == 0  # the .part now belongs to the other configuration
    w.write(0, fx[:4], fv[:4])
    killed(w)
    w2 = ResultWriter(out, SHAPE, 2, provenance=prov(), resume=True)
    assert w2.resumed and w2.n_done == 4
    w2.write(4, fx[4:], fv[4:])
    w2.close()
    data, valid, _ = read_result(out)
    data = np.asarray(data)
    np.testing.assert_array_equal(data[v], x[v])
    assert np.isnan(data[~v]).all()


@pytest.mark.parametrize("suffix", [".h5", ".npy", ".tif"])
def test_a_second_run_on_the_same_output_is_refused(tmp_path, suffix):
    """Two runs writing one output shared its .part: the first renamed the second's half-written file onto
    the output and reported success. Now the second is refused in one line while the first runs; the
    first's output is complete; once it is done (or killed) the output can be written again."""
    x, v = data_and_valid()
    fx, fv = x.reshape(6, 16, 20), v.reshape(6, 16, 20)
    out = tmp_path / f"o{suffix}"
    first = ResultWriter(out, SHAPE, 2, provenance=prov())
    first.write(0, fx[:3], fv[:3])
    with pytest.raises(XRDError, match="another run is writing this output now") as e:
        ResultWriter(out, SHAPE, 2, provenance=prov(), overwrite=True)
    assert "\n" not in str(e.value)
    first.write(3, fx[3:], fv[3:])
    first.close()
    data = np.asarray(read_result(out)[0])
    np.testing.assert_array_equal(data[v], x[v])
    assert not list(tmp_path.glob("*.part*"))  # neither the part nor its lock file is left
    again = ResultWriter(out, SHAPE, 2, provenance=prov(), overwrite=True)
    again.abort()


def test_resume_needs_the_same_model_and_input(tmp_path):
    """A .part written with another model (weights) or from another input file is never continued:
    the run starts again (frames of two models or two scans were mixed in one output)."""
    x, v = data_and_valid()
    fx, fv = x.reshape(6, 16, 20), v.reshape(6, 16, 20)
    out = tmp_path / "m.h5"
    base = dict(prov(), model_sha256="a" * 64, input_file="/data/scan1.h5")

    def killed_after_two(provenance):
        w = ResultWriter(out, SHAPE, 2, provenance=provenance, resume=True)
        w.write(w.n_done, fx[w.n_done:w.n_done + 2], fv[w.n_done:w.n_done + 2])
        w.suspend()
        return w

    killed_after_two(base)
    assert killed_after_two(base).resumed  # same model and input: continues (frames 2-3 now)
    other_model = killed_after_two(dict(base, model_sha256="b" * 64))
    assert not other_model.resumed and other_model.notes and "starting again" in other_model.notes[0]
    other_input = killed_after_two(dict(base, model_sha256="b" * 64, input_file="/data/scan2.h5"))
    assert not other_input.resumed


def test_disk_full_removes_part(tmp_path, monkeypatch):
    x, _ = data_and_valid()
    out = tmp_path / "r.h5"
    w = ResultWriter(out, SHAPE, 2, provenance=prov())

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(w, "_write", full)
    with pytest.raises(XRDError, match="disk full") as e:
        w.write(0, x.reshape(6, 16, 20)[:2])
    assert "\n" not in str(e.value) and str(out) in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_unsupported_suffix(tmp_path):
    with pytest.raises(XRDError, match=r"r\.png: unsupported output format"):
        ResultWriter(tmp_path / "r.png", SHAPE, 2, provenance={})


# ------------------------------------------------------------------------------------------------
# napari hooks
# ------------------------------------------------------------------------------------------------
def test_napari_reader_lazy_layers(tmp_path, monkeypatch):
    raw = np.random.default_rng(5).poisson(2, size=(4, 20, 24)).astype(np.uint32)
    pm = np.zeros((20, 24), np.uint32)
    pm[:, 10] = 1
    fn = tmp_path / "scan.h5"
    with h5py.File(fn, "w") as f:
        f["entry/data/data"] = raw
        f["entry/instrument/detector/detectorSpecific/pixel_mask"] = pm
    (tmp_path / "notes.txt").write_text("not data")
    assert napari_io.get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_io.get_reader(str(tmp_path / "missing.h5")) is None
    reader = napari_io.get_reader(str(fn))
    assert callable(reader)
    computed = []
    orig = da.Array.compute
    monkeypatch.setattr(da.Array, "compute", lambda self, **k: computed.append(self.shape) or orig(self, **k))
    layers = reader(str(fn))
    monkeypatch.undo()
    data, attrs, kind = layers[0]
    assert kind == "image" and isinstance(data, da.Array) and data.shape == (4, 20, 24)
    assert all(s != (4, 20, 24) for s in computed)  # only single sample frames were read
    assert attrs["metadata"]["source"] == str(fn) and attrs["name"] == "scan"
    lab, lattrs, lkind = layers[1]
    assert lkind == "labels" and lab.shape == (20, 24)
    np.testing.assert_array_equal(lab, (pm != 0).astype(np.uint8))
    np.testing.assert_array_equal(np.asarray(data), raw)


def test_napari_reader_declines_files_it_cannot_read(tmp_path):
    """A file with a detector suffix that holds no detector frames (an RGB photo saved as .tif, an HDF5
    file of tables) is declined, so that napari can offer it to another reader, and the one-line reason
    names the file; a detector file is opened once and read from that stack."""
    import tifffile

    photo = tmp_path / "photo.tif"
    tifffile.imwrite(photo, np.random.default_rng(0).integers(0, 255, (16, 20, 3), dtype=np.uint8),
                     photometric="rgb")
    tables = tmp_path / "tables.h5"
    with h5py.File(tables, "w") as f:
        f["entry/temperature"] = np.arange(5.0)
    for fn in (photo, tables):
        with pytest.warns(UserWarning, match=fn.name):
            assert napari_io.get_reader(str(fn)) is None
    frames = tmp_path / "frames.tif"
    raw = np.random.default_rng(1).poisson(3, size=(4, 16, 20)).astype(np.uint16)
    tifffile.imwrite(frames, raw, photometric="minisblack")
    reader = napari_io.get_reader(str(frames))
    assert callable(reader) and reader is not napari_io.read_layers
    (data, attrs, kind), = reader(str(frames))
    assert kind == "image" and data.shape == (4, 16, 20) and attrs["metadata"]["source"] == str(frames)
    np.testing.assert_array_equal(np.asarray(data), raw)


def test_napari_reader_contrast_from_valid_pixels(tmp_path):
    """A layer opens with contrast limits of its valid pixels: an Eiger file's 2**32-1 sentinels and a hot
    pixel would otherwise make it all black."""
    from napari_xrd_denoise.synthetic import make_scan, write_scan

    scan = make_scan(scan_shape=(2,), frame_shape=(64, 64), dose="mid", seed=3)
    fn = write_scan(tmp_path / "scan_master.h5", scan, format="eiger", external=False)
    (data, attrs, _), *_ = napari_io.read_layers(str(fn))
    lo, hi = attrs["contrast_limits"]
    v = scan.valid
    assert 0 <= lo < hi <= np.percentile(scan.counts[0][v], 99.9) + 1
    assert hi >= np.percentile(scan.counts[0][v], 99)


def test_napari_writer_never_replaces_the_layers_files_and_keeps_invalid_pixels(tmp_path):
    """Save Selected Layer of a layer the reader opened: onto its own file (or an Eiger master's data file)
    it is refused in one line and the file is unchanged; elsewhere the file's invalid pixels (sentinels,
    pixel mask) are NaN and invalid when it is read back, the counts exact."""
    from napari_xrd_denoise.io.readers import open_stack
    from napari_xrd_denoise.synthetic import make_scan, write_scan

    scan = make_scan(scan_shape=(2, 2), frame_shape=(48, 48), dose="mid", seed=2)
    fn = write_scan(tmp_path / "scan_master.h5", scan, format="eiger", external=True)
    (data, attrs, _), *_ = napari_io.read_layers(str(fn))
    stack = attrs["metadata"][napari_io.STACK_KEY]
    assert stack.files  # the master links its frames from data files
    for target in (fn, Path(stack.files[0])):
        before = target.read_bytes()
        with pytest.raises(XRDError, match="input file"):
            napari_io.write_image(str(target), data, attrs)
        assert target.read_bytes() == before
    # a denoised layer whose provenance names the input is refused there too
    with pytest.raises(XRDError, match="input file"):
        napari_io.write_image(str(fn), np.zeros(data.shape, np.float32),
                              {"name": "den", "metadata": {"provenance": {"source": str(fn)}}})
    out = tmp_path / "copy.h5"
    napari_io.write_image(str(out), data, attrs)
    back = open_stack(out)
    raw = np.asarray(stack.data)
    want_valid = stack.valid(raw)
    assert (~want_valid).any()
    got = np.asarray(back.data, dtype=np.float64)
    np.testing.assert_array_equal(back.valid(got), want_valid)
    np.testing.assert_array_equal(got[want_valid], raw[want_valid])


def test_napari_writer_extensions_match_the_manifest():
    """Every suffix the writer writes is offered in napari's save dialog (napari.yaml)."""
    import yaml

    from napari_xrd_denoise.io.writers import H5_SUFFIXES, NPY_SUFFIXES, TIFF_SUFFIXES

    man = yaml.safe_load((Path(napari_io.__file__).parents[1] / "napari.yaml").read_text())
    offered = set(man["contributions"]["writers"][0]["filename_extensions"])
    assert offered == set(H5_SUFFIXES) | set(NPY_SUFFIXES) | set(TIFF_SUFFIXES)


def test_napari_writer(tmp_path):
    x, _ = data_and_valid()
    out = tmp_path / "layer.h5"
    paths = napari_io.write_image(str(out), x, {"name": "denoised", "metadata": {"source": "/data/in.h5"}})
    assert paths == [str(out)]
    d, valid, p = read_result(out)
    np.testing.assert_array_equal(np.asarray(d), x)
    assert p["layer_name"] == "denoised" and p["input_file"] == "/data/in.h5"
    paths = napari_io.write_image(str(tmp_path / "layer.tif"), x[0, 0], {"name": "one"})
    np.testing.assert_array_equal(read_result(paths[0])[0], x[0, 0])


@pytest.mark.parametrize("suffix", [".h5", ".tif"])
def test_outputs_open_back_with_their_layout(tmp_path, suffix):
    """An output read back as an input keeps its layout: spectra stay 1D rows (a (32, 300) block of 32
    spectra was read as one 32x300 image), a scan-shaped TIFF keeps its grid (it came back flat)."""
    from napari_xrd_denoise.io.readers import open_stack

    rng = np.random.default_rng(1)
    spectra = rng.poisson(5.0, size=(32, 300)).astype(np.float32)
    f1 = write_array(tmp_path / f"spectra{suffix}", spectra, frame_ndim=1)
    st = open_stack(f1)
    assert st.frame_ndim == 1 and st.shape == (32, 300)
    np.testing.assert_array_equal(np.asarray(st.data), spectra)
    frames = rng.poisson(5.0, size=(2, 3, 48, 40)).astype(np.float32)
    f2 = write_array(tmp_path / f"scan{suffix}", frames, frame_ndim=2)
    st = open_stack(f2)
    assert st.frame_ndim == 2 and st.shape == (2, 3, 48, 40)
    np.testing.assert_array_equal(np.asarray(st.data), frames)
    assert open_stack(f1, ndim=2).frame_ndim == 2  # an explicit --ndim still wins


def test_napari_reader_stacks_a_list_of_files(tmp_path):
    """File > Open Files as Stack hands the reader a list: one layer of all the frames in order (it gave
    one layer per file), the masks combined; frames of another shape refused in one line."""
    rng = np.random.default_rng(3)
    frames = rng.poisson(3.0, size=(3, 40, 36)).astype(np.uint16)
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"f{i}.npy"))
        np.save(paths[-1], frames[i])
    layers = napari_io.read_layers(paths)
    images = [lay for lay in layers if lay[2] == "image"]
    assert len(images) == 1
    data, attrs, _ = images[0]
    assert data.shape == (3, 40, 36) and attrs["name"] == "f0 (+2 files)"
    np.testing.assert_array_equal(np.asarray(data), frames)
    stack = attrs["metadata"][napari_io.STACK_KEY]
    assert set(stack.input_files) == set(paths)  # none of them can be replaced by Save
    np.save(tmp_path / "odd.npy", frames[0, :30])
    with pytest.raises(XRDError, match="odd.npy.*cannot be stacked"):
        napari_io.read_layers(paths + [str(tmp_path / "odd.npy")])
