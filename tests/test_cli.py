"""The command line end to end: info on every real file, bad inputs, denoise/train/predict on small files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from napari_xrd_denoise.cli import main
from napari_xrd_denoise.synthetic import make_scan

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"

# file -> the shape `info` must report
REAL_SHAPES = {
    "ssrl_LaB6_Pilatus300KW_tth_scan/ssrl_LaB6_tth_scan_stack_DERIVED.h5": "51 x 195 x 1475",
    "arina_eiger_master_layout/test_00_master.h5": "16 x 192 x 192",
    "lambda750k_nexus/testasapo1_1009_00002_m1_part00000.nxs": "10 x 516 x 1554",
    "lambda750k_nexus/testasapo1_1009_00002_m1_part00001.nxs": "10 x 516 x 1554",
    "xrf_spectra/05_xrf_spectra.csv": "32 x 4095",
    "ued_512/ewald_walkoff.tif": "512 x 512",
    "ued_512/hotspots.tif": "256 x 256",
    "merlin_4dstem/Merlin_navigation4x2_ROI.zip": "256 x 256",
}

FAST = dict(epochs=1, steps=3, batch_size=2, patch_size=32, width=8, depth=2, device="cpu", seed=0)


def _flags(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


@pytest.mark.parametrize("rel, shape", sorted(REAL_SHAPES.items()))
def test_info_on_every_real_file(rel, shape, capsys):
    path = REAL / rel
    if not path.exists():
        pytest.skip(f"{path} not available")
    args = ["info", path] + (["--ndim", "1"] if rel.endswith(".csv") else [])
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert shape.replace(" ", "") in out.replace(" ", ""), out


def test_info_describes_the_data_as_the_data_options_make_it(tmp_path, capsys):
    """`info` takes the data options of denoise/train/predict: a crop and a saturation value change what
    it reports as they change what the denoiser sees; a bad crop is one line naming it."""
    frames = np.full((2, 40, 50), 5, np.uint16)
    frames[:, :10, :] = 100  # the top 10 rows are bright: 25 % of the pixels
    np.save(tmp_path / "f.npy", frames)
    def info(*opts):
        code, out, err = run_cli(["info", tmp_path / "f.npy", *opts], capsys)
        assert code == 0, err
        return " ".join(out.split())  # the column width follows the longest label

    out = info()
    assert "frame shape : 40 x 50" in out and "invalid : 0 %" in out, out
    assert "invalid : 25 % of pixels" in info("--saturation", "50")
    out = info("--saturation", "50", "--crop", "10,40,0,20")
    assert "frame shape : 30 x 20" in out and "invalid : 0 %" in out, out
    code, _, err = run_cli(["info", tmp_path / "f.npy", "--crop", "0,80,0,20"], capsys)
    assert code == 2 and "crop [0, 80, 0, 20] lies outside" in err and err.count("\n") == 1, err


def test_progress_in_a_log_file_is_plain_lines_with_rate_and_time_left(monkeypatch, capsys):
    """stderr that is not a terminal (a batch job's log) gets plain lines, not tqdm's carriage returns:
    the first, then at most one per interval, and the last; each with the rate and the time left."""
    from napari_xrd_denoise import cli

    clock = iter(float(t) for t in range(0, 1000, 5))  # each call 5 s after the one before
    monkeypatch.setattr(cli.time, "monotonic", lambda: next(clock))
    p = cli._Progress("denoising", every=12.0)
    for done in range(0, 101, 10):  # 11 calls over 50 s
        p(done, 100)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0] == "denoising: 0/100 frames (0 %)", lines
    assert lines[1] == "denoising: 30/100 frames (30 %), 2 frames/s, 35 s left", lines  # 15 s after the first
    assert lines[-1] == "denoising: 100/100 frames (100 %), 2 frames/s", lines
    assert len(lines) == 5, lines  # at 0, 15, 30 and 45 s, and the last (50 s)
    q = cli._Progress("denoising", quiet=True)
    q(0, 10), q(10, 10)
    assert capsys.readouterr().err == ""


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp / "empty.h5"
    empty.write_bytes(b"")
    rnd = tmp / "random.h5"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    text = tmp / "notes.txt"
    text.write_text("not a detector file\n")
    good = tmp / "good.h5"
    with h5py.File(good, "w") as f:
        f["entry/data/data"] = np.ones((6, 32, 32), np.uint32)
    trunc = tmp / "truncated.h5"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    master = tmp / "master.h5"
    with h5py.File(master, "w") as f:
        f["entry/data/data_000001"] = h5py.ExternalLink("missing_data_000001.h5", "entry/data/data")
    small = tmp / "small.npy"
    np.save(small, np.ones((4, 1, 1), np.uint16))
    nothing = tmp / "allbad.npy"
    np.save(nothing, np.full((3, 32, 32), 2**32 - 1, np.uint32))
    return {
        "missing file": (["info", tmp / "nope.h5"], "nope.h5"),
        "empty file": (["info", empty], "empty.h5"),
        "random bytes": (["info", rnd], "random.h5"),
        "not a detector file": (["info", text], "notes.txt"),
        "wrong dataset": (["info", good, "--dataset", "entry/nothing"], "entry/nothing"),
        "truncated hdf5": (["info", trunc], "truncated.h5"),
        "missing external link": (["info", master], "missing_data_000001.h5"),
        "scan shape": (["info", good, "--scan-shape", "4x4"], "--scan-shape"),
        "frames too small": (["info", small], "small.npy"),
        "no valid pixel": (["info", nothing], "allbad.npy"),
        "bad option value": (["denoise", good, "-o", tmp / "o.h5", "--epochs", "0"], "train.epochs"),
        "unsupported output": (["denoise", good, "-o", tmp / "o.csv"], "o.csv: unsupported output format"),
        "negative seed": (["denoise", good, "-o", tmp / "o.h5", "--seed", "-1"], "train.seed"),
        "nan time budget": (["denoise", good, "-o", tmp / "o.h5", "--max-minutes", "nan"], "train.max_minutes"),
        "infinite centre": (["denoise", good, "-o", tmp / "o.h5", "--method", "symmetry", "--center", "inf,3"],
                            "method.center"),
        "output is the input": (["denoise", good, "-o", good, "--overwrite"], "this is the input file"),
        "model over the input": (["train", good, "--model", good], "good.h5: this is the input file"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing file", "empty file", "random bytes", "not a detector file", "wrong dataset", "truncated hdf5",
     "missing external link", "scan shape", "frames too small", "no valid pixel", "bad option value",
     "unsupported output", "negative seed", "nan time budget", "infinite centre", "output is the input", "model over the input"],
)
def test_bad_inputs_exit_2_with_one_line(case, tmp_path, capsys):
    args, must_name = _bad_inputs(tmp_path)[case]
    before = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert must_name in lines[0]
    after = {p: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after == before  # inputs untouched, no output left behind


def test_unparsable_option_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["denoise", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.h5"), "--epochs", "abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs" in err and "'abc'" in err and "--help" in err


def test_negative_values_are_values_not_options(tmp_path, capsys):
    """A beam centre off the detector (negative row) is a value; a negative scan shape is refused by name."""
    from napari_xrd_denoise.cli import build_parser, config_from_args

    args = build_parser().parse_args(["denoise", "x.npy", "-o", "o.h5", "--center", "-3.5,812", "--method",
                                      "symmetry"])
    assert tuple(config_from_args(args).method.center) == (-3.5, 812.0)
    args = build_parser().parse_args(["denoise", "x.npy", "-o", "o.h5", "--center", "-1e2,-.5"])
    assert tuple(config_from_args(args).method.center) == (-100.0, -0.5)
    assert main(["denoise", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.h5"), "--scan-shape", "-2x-5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scan-shape='-2x-5'" in err and "positive" in err
    with pytest.raises(SystemExit):  # an unknown option is still an option
        main(["denoise", "x.npy", "-o", "o.h5", "-x"])


def _write_scan(tmp_path: Path) -> tuple[Path, np.ndarray]:
    scan = make_scan(scan_shape=(2, 3), frame_shape=(48, 48), dose="mid", seed=1)
    path = tmp_path / "scan.npy"
    np.save(path, scan.counts)
    return path, scan.counts


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_denoise_end_to_end(suffix, tmp_path, capsys):
    inp, counts = _write_scan(tmp_path)
    out = tmp_path / f"out{suffix}"
    code, _, err = run_cli(["denoise", inp, "-o", out, "--method", "n2s", *_flags(**FAST)], capsys)
    assert code == 0, err
    assert out.exists()
    if suffix == ".h5":
        with h5py.File(out, "r") as f:
            den = f["entry/data/data"][()]
            prov = f["entry/provenance"]
            cfg = json.loads(prov.attrs["config"] if "config" in prov.attrs else prov["config"][()])
        assert cfg["method"]["name"] == "n2s"
    else:
        den = np.load(out)
    assert den.shape == counts.shape and den.dtype == np.float32
    gaps = counts == 2**32 - 1
    assert np.isnan(den[gaps]).all()  # invalid pixels stay invalid
    assert np.isfinite(den[~gaps]).mean() > 0.99
    assert (out.parent / (out.name + ".config.json")).exists()
    # refuses to overwrite
    code, _, err = run_cli(["denoise", inp, "-o", out, "--method", "n2s", *_flags(**FAST)], capsys)
    assert code == 2 and "--overwrite" in err


def test_train_then_predict(tmp_path, capsys):
    inp, counts = _write_scan(tmp_path)
    model = tmp_path / "model.pt"
    code, _, err = run_cli(["train", inp, "-m", model, "--method", "n2n-split", *_flags(**FAST)], capsys)
    assert code == 0, err
    out = tmp_path / "pred.h5"
    code, _, err = run_cli(["predict", inp, "-m", model, "-o", out], capsys)
    assert code == 0, err
    with h5py.File(out, "r") as f:
        assert f["entry/data/data"].shape == counts.shape
    code, _, err = run_cli(["predict", inp, "-m", tmp_path / "scan.npy", "-o", tmp_path / "x.h5"], capsys)
    assert code == 2 and "scan.npy" in err


def test_predict_center_is_the_data_centre(tmp_path, capsys):
    """`predict --center` places the symmetry partner and the ring correction of these data (it was
    refused); without it the model's centre is used for data that carry none."""
    scan = make_scan(scan_shape=(2,), frame_shape=(64, 64), dose="mid", seed=1, center=(28.0, 30.0))
    inp = tmp_path / "a.npy"
    np.save(inp, scan.counts)
    model = tmp_path / "sym.pt"
    code, _, err = run_cli(["train", inp, "-m", model, "--method", "symmetry", "--center", "28,30",
                            *_flags(**FAST)], capsys)
    assert code == 0, err
    for args, want in (([], [28.0, 30.0]), (["--center", "30.5,31"], [30.5, 31.0])):
        out = tmp_path / f"o{len(args)}.h5"
        code, _, err = run_cli(["predict", inp, "-m", model, "-o", out, *args], capsys)
        assert code == 0, err
        with h5py.File(out, "r") as f:
            assert json.loads(f["entry/provenance"].attrs["config"])["method"]["center"] == want
        # the configuration written beside the output is this run's, as used (was: the model's)
        assert json.loads((tmp_path / f"{out.name}.config.json").read_text())["method"]["center"] == want
    out = tmp_path / "sp.h5"
    code, _, err = run_cli(["predict", inp, "-m", model, "-o", out, "--split-passes", "2"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "sp.h5.config.json").read_text())["infer"]["split_passes"] == 2


def test_console_script_runs_without_traceback(tmp_path):
    exe = Path(sys.executable).with_name("xrd-denoise")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "napari_xrd_denoise.cli"]
    r = subprocess.run(cmd + ["info", str(tmp_path / "nothing.h5")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 2
    assert "nothing.h5" in r.stderr and "Traceback" not in r.stderr


def test_denoise_with_qc_report(tmp_path, capsys):
    inp, counts = _write_scan(tmp_path)
    out = tmp_path / "qc_out.h5"
    code, stdout, err = run_cli(["denoise", inp, "-o", out, "--method", "n2s", "--qc", *_flags(**FAST)], capsys)
    assert code == 0, err
    rep = json.loads((tmp_path / "qc_out.h5.qc.json").read_text())
    assert rep["n_frames"] == 6 and len(rep["frames"]["chi2"]) == 6
    # the console says what the report found, in one line (it said nothing)
    line = [ln for ln in stdout.splitlines() if ln.startswith("qc: ")]
    n_flagged = len(rep["flagged_frames"])
    assert len(line) == 1 and "qc_out.h5.qc.png" in line[0]
    assert (f"{n_flagged} of 6 frames flagged" if n_flagged else "no frame flagged of 6") in line[0]
    assert (tmp_path / "qc_out.h5.qc.png").stat().st_size > 10_000


def test_the_data_files_behind_a_master_are_never_an_output(tmp_path, capsys):
    """An Eiger master reads its frames from data files: none of them may be replaced, --overwrite or not."""
    from napari_xrd_denoise.synthetic import write_scan

    master = write_scan(tmp_path / "syn_master.h5", make_scan(scan_shape=(2, 3), frame_shape=(48, 48), dose="mid",
                                                              seed=2), external=True, frames_per_file=4)
    data_files = sorted(p for p in tmp_path.glob("syn_data_*.h5"))
    assert data_files
    before = data_files[0].read_bytes()
    code, _, err = run_cli(["denoise", master, "-o", data_files[0], "--overwrite", "--method", "n2s",
                            *_flags(**FAST)], capsys)
    assert code == 2 and "input file" in err and err.count("\n") == 1, err
    assert data_files[0].read_bytes() == before
    code, _, err = run_cli(["train", master, "-m", data_files[-1], "--overwrite", "--method", "n2s",
                            *_flags(**FAST)], capsys)
    assert code == 2 and "input file" in err


def test_replayed_config_names_files_from_any_folder(tmp_path, capsys, monkeypatch):
    """File names given relative to the working folder are written absolute into OUTPUT.config.json, so
    `--config` replays from another folder; silly option values are one line."""
    inp, _ = _write_scan(tmp_path)
    np.save(tmp_path / "mask.npy", np.zeros((48, 48), np.uint8))
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["denoise", "scan.npy", "-o", "o.h5", "--mask", "mask.npy", "--method", "n2s",
                            *_flags(**FAST)], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "o.h5.config.json").read_text())
    assert saved["data"]["mask_file"] == str(tmp_path / "mask.npy")
    sub = tmp_path / "sub"
    sub.mkdir()
    monkeypatch.chdir(sub)
    code, _, err = run_cli(["denoise", "../scan.npy", "-o", "o2.h5", "--config", "../o.h5.config.json"], capsys)
    assert code == 0, err
    code, _, err = run_cli(["denoise", "../scan.npy", "-o", "o3.h5", "--warmup-epochs", "-5"], capsys)
    assert code == 2 and "warmup_epochs" in err and err.count("\n") == 1
    code, _, err = run_cli(["train", "../scan.npy", "-m", "m.pt", "--method", "n2s", *_flags(**FAST)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["predict", "../scan.npy", "-m", "m.pt", "-o", "o4.h5", "--workers", "100000"], capsys)
    assert code == 2 and "--workers 100000" in err and err.count("\n") == 1, err


def test_a_closed_pipe_is_not_an_error(tmp_path, monkeypatch, capsys):
    """`xrd-denoise info FILE | head`: when the reader of the output goes away, the command stops quietly
    with status 1 (it printed 'internal error: BrokenPipeError')."""
    import io

    np.save(tmp_path / "s.npy", np.ones((2, 32, 32), np.uint16))

    class Closed(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["info", str(tmp_path / "s.npy")]) == 1  # not a success, but no message
    assert "error" not in capsys.readouterr().err


def test_help_shows_the_defaults_of_the_config(capsys):
    """`xrd-denoise denoise --help` says what a run does without each option: the Config's default."""
    from napari_xrd_denoise.config import Config

    with pytest.raises(SystemExit):
        main(["denoise", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    cfg = Config()
    for flag, value in (("--epochs", cfg.train.epochs), ("--steps", cfg.train.steps_per_epoch),
                        ("--batch-size", cfg.train.batch_size), ("--lr", cfg.train.lr),
                        ("--neighbors", cfg.method.neighbors), ("--tile", cfg.infer.tile)):
        after = text[text.rfind(f" {flag} "):]  # the option's own entry, after the usage line
        assert f"(default: {value})" in after[:260], (flag, after[:260])
    assert "(default: auto)" in text[text.rfind(" --method METHOD "):][:200]
    assert "spectra (--ndim 1, CSV, MCA) have their own" in text


def test_the_other_files_a_run_reads_are_never_an_output(tmp_path, capsys):
    """The mask, the PONI and the model a run reads are inputs too: naming one as the output is refused
    even with --overwrite (a --mask file was replaced by the result), and the file is left as it was."""
    inp, _ = _write_scan(tmp_path)
    mask = tmp_path / "mask.npy"
    np.save(mask, np.zeros((48, 48), np.uint8))
    before = mask.read_bytes()
    code, _, err = run_cli(["denoise", inp, "-o", mask, "--mask", mask, "--overwrite", "--method", "n2s",
                            *_flags(**FAST)], capsys)
    assert code == 2 and "this is the input file" in err and mask.read_bytes() == before
    model = tmp_path / "m.h5"  # a model file may have any name
    assert run_cli(["train", inp, "-m", model, "--method", "n2s", *_flags(**FAST)], capsys)[0] == 0
    for target in (mask, model):
        before = target.read_bytes()
        code, _, err = run_cli(["predict", inp, "-m", model, "--mask", mask, "-o", target, "--overwrite"], capsys)
        assert code == 2 and "this is the input file" in err and err.count("\n") == 1, err
        assert target.read_bytes() == before


def test_ctrl_c_message_stands_on_its_own_line(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the progress bar is drawn: the bar is closed first, so the message is a line of its
    own and the last thing written (it was glued to the bar, which was drawn again after it)."""
    import napari_xrd_denoise.api as api_mod

    inp, _ = _write_scan(tmp_path)
    model = tmp_path / "m.pt"
    assert run_cli(["train", inp, "-m", model, "--method", "n2s", *_flags(**FAST)], capsys)[0] == 0

    def interrupted(*a, progress=None, **k):
        progress(2, 6)
        raise KeyboardInterrupt

    monkeypatch.setattr(api_mod, "predict", interrupted)
    code, _, err = run_cli(["predict", inp, "-m", model, "-o", tmp_path / "o.h5"], capsys)
    assert code == 130
    lines = err.rstrip("\n").split("\n")
    assert lines[-1].startswith("xrd-denoise: interrupted"), err[-300:]
    assert err.endswith("\n") and "frame" not in lines[-1]


def test_predict_applies_the_models_inference_options_unless_given(tmp_path, capsys):
    """A model trained with --split-passes 2 is applied with 2 by `predict` (the command line used the
    defaults, the Python API the model's); a flag given to predict wins."""
    inp, _ = _write_scan(tmp_path)
    model = tmp_path / "m.pt"
    assert run_cli(["train", inp, "-m", model, "--method", "n2n-split", "--split-passes", "2",
                    *_flags(**FAST)], capsys)[0] == 0

    def used(out, *flags):
        code, _, err = run_cli(["predict", inp, "-m", model, "-o", out, *flags], capsys)
        assert code == 0, err
        return json.loads(Path(str(out) + ".config.json").read_text())["infer"]["split_passes"]

    assert used(tmp_path / "a.h5") == 2
    assert used(tmp_path / "b.h5", "--split-passes", "8") == 8
