"""Never lose data: kill -9 and resume (predict and train), refusal to overwrite, atomic outputs, read-only
inputs, a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from napari_xrd_denoise import api
from napari_xrd_denoise.cli import main as cli_main
from napari_xrd_denoise.config import Config
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.inference import predict_stack
from napari_xrd_denoise.io.readers import open_stack
from napari_xrd_denoise.io.writers import ResultWriter, part_path
from napari_xrd_denoise.model_file import DenoiserModel
from napari_xrd_denoise.synthetic import make_scan, write_scan

torch.set_num_threads(1)

TINY = {"method__name": "n2s", "model__width": 4, "model__depth": 1, "train__epochs": 1,
        "train__steps_per_epoch": 2, "train__batch_size": 2, "train__patch_size": 32, "train__device": "cpu",
        "train__threads": 1, "train__val_fraction": 0.0}
N = 640  # frames in the scan used for kill-and-resume
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _cli() -> list[str]:
    exe = Path(sys.executable).with_name("xrd-denoise")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "napari_xrd_denoise.cli"]


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """640 small frames (a 16 x 40 scan), an Eiger-style HDF5 copy, and a tiny trained model."""
    tmp = tmp_path_factory.mktemp("resume")
    s = make_scan(scan_shape=(16, 40), frame_shape=(32, 32), dose="mid", seed=5)
    npy = tmp / "many.npy"
    np.save(npy, s.counts)
    h5 = write_scan(tmp / "small_master.h5", make_scan(scan_shape=(2, 3), frame_shape=(48, 48), dose="mid", seed=6),
                    external=True, frames_per_file=4)
    model = tmp / "tiny.pt"
    api.train(npy, Config().replace(**TINY), model_path=model)
    infer = tmp / "infer.json"
    infer.write_text(json.dumps({"infer": {"chunk_frames": 4, "batch_size": 2}}))
    return {"npy": npy, "h5": h5, "model": model, "infer": infer, "tmp": tmp}


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0, what: str = "") -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}: {err[-1500:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def _h5_n_done(part: Path) -> int:
    try:
        with h5py.File(part, "r", locking=False) as f:
            return int(f["entry"].attrs["n_done"])
    except Exception:  # noqa: BLE001 - the writer may be half-way through a flush: try again
        return -1


# ------------------------------------------------------------------------------------------------
# predict: kill -9, then --resume
# ------------------------------------------------------------------------------------------------
def test_predict_killed_then_resumed_equals_an_uninterrupted_run(scan, tmp_path):
    out = tmp_path / "den.h5"
    part = part_path(out)
    args = _cli() + ["predict", str(scan["npy"]), "-m", str(scan["model"]), "-o", str(out), "--config",
                     str(scan["infer"]), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: part.exists() and _h5_n_done(part) >= 8, proc, what="8 frames written")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and part.exists()  # only the .part: nothing claims to be complete
    k = _h5_n_done(part)
    assert 8 <= k < N, k  # the part file is readable after the kill and not complete

    r = subprocess.run(args + ["--resume"], check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists() and not part.exists()
    # the resumed run's progress starts at k: no frame before k was denoised again
    reported = [int(v) for v in re.findall(rf"(\d+)/{N}", r.stderr)]
    assert k in reported and not [v for v in reported if 0 < v < k], reported

    model = DenoiserModel.load(scan["model"], device="cpu")
    cfg = Config.load(scan["infer"])
    ref = predict_stack(model, open_stack(scan["npy"]), infer=cfg.infer)
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["entry/data/data"][()], ref)
        assert f["entry"].attrs["complete"] == 1 and f["entry"].attrs["n_done"] == N


@pytest.mark.parametrize("suffix", [".h5", ".npy"])
def test_predict_ctrl_c_keeps_the_part_and_resumes(scan, tmp_path, suffix):
    """Ctrl-C (SIGINT) keeps the complete frames, says how to continue, and --resume finishes the same output."""
    out = tmp_path / f"den{suffix}"
    part = part_path(out)
    state = part.with_name(part.name + ".json")
    slow = tmp_path / "slow.json"  # all 8 orientations per frame: a few seconds for the whole scan, so
    slow.write_text(json.dumps({"infer": {"chunk_frames": 4, "batch_size": 2, "tta": True}}))  # SIGINT lands
    args = _cli() + ["predict", str(scan["npy"]), "-m", str(scan["model"]), "-o", str(out), "--config",
                     str(slow), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    if suffix == ".h5":
        _wait_for(lambda: part.exists() and _h5_n_done(part) >= 8, proc, what="8 frames written")
    else:
        _wait_for(lambda: state.exists() and json.loads(state.read_text() or "{}").get("n_done", 0) >= 8, proc,
                  what="8 frames written")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-1500:]
    assert "interrupted" in err and str(part) in err and "--resume" in err, err[-500:]
    assert "Traceback" not in err
    assert not out.exists() and part.exists()
    r = subprocess.run(args + ["--resume"], check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists() and not part.exists() and not state.exists()
    reported = [int(v) for v in re.findall(rf"(\d+)/{N}", r.stderr)]
    assert [v for v in reported if v > 0][0] >= 8, reported  # continued, not started again
    model = DenoiserModel.load(scan["model"], device="cpu")
    ref = predict_stack(model, open_stack(scan["npy"]), infer=Config.load(slow).infer)
    got = h5py.File(out, "r")["entry/data/data"][()] if suffix == ".h5" else np.load(out)
    np.testing.assert_array_equal(got.reshape(ref.shape), ref)


def test_denoise_ctrl_c_leaves_no_part(scan, tmp_path):
    """`denoise` cannot resume, so an interrupted run leaves neither an output nor a .part behind."""
    out = tmp_path / "den.h5"
    part = part_path(out)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"method": {"name": "n2s"}, "model": {"width": 4, "depth": 1},
                               "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "patch_size": 32,
                                         "device": "cpu", "threads": 1, "val_fraction": 0.0},
                               "infer": {"chunk_frames": 4, "batch_size": 2, "tta": True}}))
    args = _cli() + ["denoise", str(scan["npy"]), "-o", str(out), "--config", str(cfg)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: part.exists() and _h5_n_done(part) >= 8, proc, what="8 frames written")
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err[-1500:]
    assert not out.exists() and not part.exists()
    assert not part.with_name(part.name + ".json").exists()


# ------------------------------------------------------------------------------------------------
# train: kill -9 after the first checkpoint, then --resume
# ------------------------------------------------------------------------------------------------
def test_train_killed_then_resumed_continues_from_the_checkpoint(scan, tmp_path):
    model = tmp_path / "m.pt"
    ckpt = Path(str(model) + ".ckpt")
    cfg = tmp_path / "train.json"
    cfg.write_text(json.dumps({"method": {"name": "n2s"}, "model": {"width": 4, "depth": 1},
                               "train": {"epochs": 40, "steps_per_epoch": 5, "batch_size": 2, "patch_size": 32,
                                         "patience": 0, "device": "cpu", "threads": 1}}))
    args = _cli() + ["train", str(scan["npy"]), "-m", str(model), "--config", str(cfg)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(ckpt.exists, proc, what="the first checkpoint")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not model.exists()  # the model is written only at the end
    d = torch.load(ckpt, map_location="cpu", weights_only=False)
    e = int(d["epoch"])
    assert e < 39, "training finished before it could be killed"
    before = list(d["history"]["train_loss"])
    assert len(before) == e + 1

    r = subprocess.run(args + ["--resume"], check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed" in r.stderr
    # epochs as the CLI prints them, numbered from 1: the resumed run starts after the checkpoint's epoch
    epochs_run = [int(m) for m in re.findall(r"^epoch (\d+)/40", r.stderr, flags=re.MULTILINE)]
    assert epochs_run == list(range(e + 2, 41)), epochs_run
    m = DenoiserModel.load(model, device="cpu")
    assert len(m.history["train_loss"]) == 40
    assert m.history["train_loss"][: e + 1] == before  # the epochs before the kill were kept, not redone


def test_train_ctrl_c_keeps_the_checkpoint(scan, tmp_path):
    """Ctrl-C (SIGINT) during training: exit 130, the last checkpoint stays usable, no model file."""
    model = tmp_path / "m.pt"
    ckpt = Path(str(model) + ".ckpt")
    args = _cli() + ["train", str(scan["npy"]), "-m", str(model), "--method", "n2s", "--epochs", "400", "--steps", "5",
                     "--batch-size", "2", "--patch-size", "32", "--width", "4", "--depth", "1", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(ckpt.exists, proc, what="the first checkpoint")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-1000:]
    assert "interrupted" in err and "Traceback" not in err
    assert f"checkpoint {ckpt} is kept" in err and "--resume" in err  # and says how to go on
    assert not model.exists()
    d = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert d["format"] == "napari-xrd-denoise-checkpoint" and d["epoch"] >= 0


def test_resume_without_checkpoint_is_one_line(scan, tmp_path, capsys):
    code = cli_main(["train", str(scan["npy"]), "-m", str(tmp_path / "none.pt"), "--resume", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "none.pt.ckpt" in err


# ------------------------------------------------------------------------------------------------
# refusal to overwrite, atomic outputs, read-only inputs
# ------------------------------------------------------------------------------------------------
def test_refuses_to_overwrite_and_leaves_the_old_file(scan, tmp_path, capsys):
    out = tmp_path / "existing.h5"
    out.write_bytes(b"an earlier result")
    code = cli_main(["predict", str(scan["h5"]), "-m", str(scan["model"]), "-o", str(out), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "existing.h5" in err and "--overwrite" in err
    assert out.read_bytes() == b"an earlier result" and not part_path(out).exists()

    model_copy = tmp_path / "model.pt"
    model_copy.write_bytes(scan["model"].read_bytes())
    code = cli_main(["train", str(scan["npy"]), "-m", str(model_copy), "-q", "--epochs", "1", "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "model.pt" in err and model_copy.read_bytes() == scan["model"].read_bytes()


def test_error_while_writing_leaves_no_output(scan, tmp_path, monkeypatch):
    """An exception in the middle of a prediction (after some chunks were written): no output, no .part."""
    model = DenoiserModel.load(scan["model"], device="cpu")
    method = model.method
    calls = {"n": 0}
    real = method.denoise

    def failing(run, batch, infer):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated failure in the middle")
        return real(run, batch, infer)

    monkeypatch.setattr(method, "denoise", failing)
    out = tmp_path / "never.h5"
    with pytest.raises(RuntimeError, match="simulated"):
        api.predict(scan["npy"], model, out, config=Config.load(scan["infer"]))
    assert calls["n"] == 5  # two chunks were written before the failure
    assert not out.exists() and not part_path(out).exists()
    assert list(tmp_path.iterdir()) == []

    # with --overwrite the old file is replaced only by the final rename: a failed run leaves it as it was
    out.write_bytes(b"the previous result")
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="simulated"):
        api.predict(scan["npy"], model, out, config=Config.load(scan["infer"]), overwrite=True)
    assert out.read_bytes() == b"the previous result" and list(tmp_path.iterdir()) == [out]


def test_inputs_never_modified(scan, tmp_path, capsys):
    files = [scan["h5"], *sorted(scan["h5"].parent.glob("small_data_*.h5")), scan["npy"]]
    before = {p: (_sha(p), p.stat().st_mtime_ns) for p in files}
    code = cli_main(["denoise", str(scan["h5"]), "-o", str(tmp_path / "a.h5"), "--method", "n2s", "--epochs", "1",
                     "--steps", "2", "--batch-size", "2", "--patch-size", "32", "--width", "4", "--depth", "1",
                     "--device", "cpu", "-q"])
    assert code == 0, capsys.readouterr().err
    code = cli_main(["predict", str(scan["npy"]), "-m", str(scan["model"]), "-o", str(tmp_path / "b.npy"), "-q"])
    assert code == 0, capsys.readouterr().err
    after = {p: (_sha(p), p.stat().st_mtime_ns) for p in files}
    assert after == before and len(files) >= 3


# ------------------------------------------------------------------------------------------------
# a full disk
# ------------------------------------------------------------------------------------------------
def test_disk_full_simulated_is_one_line_and_no_output(scan, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ResultWriter._write

    def write(self, start, block, valid):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, start, block, valid)

    monkeypatch.setattr(ResultWriter, "_write", write)
    for suffix in (".h5", ".npy"):
        calls["n"] = 0
        out = tmp_path / f"full{suffix}"
        with pytest.raises(XRDError) as e:
            api.predict(scan["npy"], scan["model"], out, config=Config.load(scan["infer"]))
        msg = str(e.value)
        assert "disk full" in msg and out.name in msg and "\n" not in msg
        assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_fs(tmp_path):
    """A real 256 KiB filesystem (tmpfs), where the system allows mounting one."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=False, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:80]})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)




@pytest.mark.parametrize("suffix", [".h5", ".npy", ".tif"])
def test_disk_really_full(scan, small_fs, suffix):
    """``xrd-denoise predict`` onto a 256 KiB filesystem (in a subprocess: a crash must not take pytest down)."""
    out = small_fs / f"den{suffix}"
    r = subprocess.run(_cli() + ["predict", str(scan["npy"]), "-m", str(scan["model"]), "-o", str(out), "--config",
                                 str(scan["infer"]), "--device", "cpu", "-q"],
                       check=False, capture_output=True, text=True, env=ENV, timeout=300)
    left = sorted(p.name for p in small_fs.iterdir())
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, left, r.stderr[-800:])
    assert len(lines) == 1 and "disk full" in lines[0] and out.name in lines[0], r.stderr[-800:]
    assert left == []  # neither the output nor its .part is left
