"""DistributedDataParallel training on the CPU (gloo): torchrun with 2 processes, resume, and equality with
the single-process trainer when there is one process."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_xrd_denoise import ddp
from napari_xrd_denoise.cli import main as cli_main
from napari_xrd_denoise.model_file import DenoiserModel
from napari_xrd_denoise.synthetic import make_scan

torch.set_num_threads(1)

CFG = {
    "method": {"name": "n2s"},
    "model": {"width": 4, "depth": 1},
    "train": {"epochs": 2, "steps_per_epoch": 3, "batch_size": 2, "patch_size": 32, "patience": 0,
              "device": "cpu", "threads": 1},
}


@pytest.fixture
def inputs(tmp_path):
    scan = make_scan(scan_shape=(2, 4), frame_shape=(64, 64), dose="mid", seed=3)
    data = tmp_path / "scan.npy"
    np.save(data, scan.counts)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CFG))
    return data, cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_process_env(monkeypatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "napari_xrd_denoise.ddp", *map(str, args)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)


def test_torchrun_two_processes_then_resume(inputs, tmp_path):
    data, cfg = inputs
    model_path = tmp_path / "model.pt"
    reports = tmp_path / "ranks"
    r = _torchrun([data, "-m", model_path, "--config", cfg, "--rank-report", reports])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "DDP on 2 process(es) (gloo" in r.stderr
    model = DenoiserModel.load(model_path, device="cpu")
    assert model.history["ddp"] == {"world_size": 2, "backend": "gloo", "patches_per_step": 4}
    assert len(model.history["train_loss"]) == 2

    r0 = json.loads((reports / "rank0.json").read_text())
    r1 = json.loads((reports / "rank1.json").read_text())
    assert r0["backend"] == r1["backend"] == "gloo" and r0["steps"] == r1["steps"] == 6
    assert r0["seed"] != r1["seed"]
    assert r0["first_batch_sha256"] != r1["first_batch_sha256"]  # each rank drew its own patches
    assert r0["final_params_sha256"] == r1["final_params_sha256"]  # gradients were all-reduced

    ckpt = torch.load(Path(str(model_path) + ".ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["ddp_world_size"] == 2 and len(ckpt["ddp_np_rng"]) == 2
    assert ckpt["ddp_np_rng"][0] != ckpt["ddp_np_rng"][1]

    # continue to 3 epochs from the checkpoint: epochs 0 and 1 are not run again
    r = _torchrun([data, "-m", model_path, "--config", cfg, "--epochs", 3, "--resume"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed" in r.stderr
    # the CLI numbers epochs from 1: only the third epoch was run
    assert re.findall(r"^epoch (\d+)/3", r.stderr, flags=re.MULTILINE) == ["3"], r.stderr[-1000:]
    again = DenoiserModel.load(model_path, device="cpu")
    assert len(again.history["train_loss"]) == 3
    assert again.history["train_loss"][:2] == model.history["train_loss"]


def test_one_process_equals_the_single_process_trainer(inputs, tmp_path, monkeypatch):
    """With one rank the DDP loop draws, steps and validates exactly like Trainer: same weights, same losses."""
    data, cfg = inputs
    a, b = tmp_path / "single.pt", tmp_path / "ddp1.pt"
    assert cli_main(["train", str(data), "-m", str(a), "--config", str(cfg), "-q"]) == 0
    _one_process_env(monkeypatch)
    assert ddp.main([str(data), "-m", str(b), "--config", str(cfg), "-q"]) == 0
    ma, mb = DenoiserModel.load(a, device="cpu"), DenoiserModel.load(b, device="cpu")
    sa, sb = ma.net.state_dict(), mb.net.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ma.history["train_loss"] == mb.history["train_loss"]
    assert ma.history["val_loss"] == mb.history["val_loss"]


def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    _one_process_env(monkeypatch)
    code = ddp.main([str(tmp_path / "missing.h5"), "-m", str(tmp_path / "m.pt"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "missing.h5" in err and "Traceback" not in err
    assert not (tmp_path / "m.pt").exists()


def test_rank_seeds_and_devices():
    assert ddp.rank_seed(5, 0) == 5
    assert len({ddp.rank_seed(5, r) for r in range(64)}) == 64
    assert ddp._rank_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert ddp._rank_device("auto", 1) == torch.device("cpu")
