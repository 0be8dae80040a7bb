"""Run the peer method, CAREamics Noise2Void (careamics 0.3.5), on frames given as ``.npy``.

This script runs inside its own virtual environment (default ``/work/careamics-venv``), never in the
project's. ``napari_xrd_denoise.bench`` calls it by subprocess when that environment exists.

Set the environment up (run with any Python 3.11)::

    python benchmarks/careamics_peer.py --setup /work/careamics-venv

which makes the venv, installs ``torch==2.13.0``, careamics's other requirements (not torchvision),
``careamics==0.3.5`` with ``--no-deps``, and an empty ``torchvision`` placeholder package inside the
venv folder. The placeholder is put on ``sys.path`` only by this script, after ``torchmetrics`` and
``lightning`` have been imported (so they see no torchvision and never touch it); careamics's N2V path
does not use torchvision, only its LVAE models and its model-zoo export import it.

Train and predict::

    /work/careamics-venv/bin/python benchmarks/careamics_peer.py --input noisy.npy --output den.npy \
        --seconds 60 --stats stats.json

``noisy.npy`` is float counts ``(N, H, W)`` (invalid pixels set to 0: N2V has no validity mask).
The stats JSON gives the training time, optimiser steps, patches/s, prediction time and frames/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REQUIREMENTS = [
    "bioimageio-core<=0.11.0,>=0.9.0",
    "lightning!=2.6.2,!=2.6.3,<=2.6.6,>=2.2",
    "matplotlib<=3.11.2",
    "microssim<=0.0.5",
    "numpy<=2.4.6,>=1.21",
    "pillow<=13.0.0",
    "psutil<=7.2.2",
    "pydantic<=2.14.1,>=2.11",
    "pyyaml!=6.0.0,<=6.0.3",
    "scikit-image<=0.26.0",
    "tifffile<=2026.3.3",
    "torchmetrics<1.9.0,>0.7.0",
    "zarr<4.0.0,>=3.0.0",
]


def setup(venv: Path) -> None:
    """Create the peer's virtual environment with careamics 0.3.5 and a torchvision placeholder."""
    venv = Path(venv)
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0", *REQUIREMENTS], check=True)
    subprocess.run(pip + ["--no-deps", "careamics==0.3.5"], check=True)
    ph = venv / "placeholder" / "torchvision" / "transforms"
    ph.mkdir(parents=True, exist_ok=True)
    (ph.parent / "__init__.py").write_text('__version__ = "0.0.0+placeholder"\n')
    (ph / "__init__.py").write_text("")
    (ph / "functional.py").write_text("")
    print(f"careamics peer ready in {venv}")


def _import_careamics(venv: Path):
    import lightning.pytorch  # noqa: F401  (decides torchvision is absent before the placeholder exists)
    import torchmetrics  # noqa: F401

    sys.path.insert(0, str(venv / "placeholder"))
    import careamics
    from careamics import CAREamist
    from careamics.config import create_advanced_n2v_config

    return careamics, CAREamist, create_advanced_n2v_config


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(max(1, int(args.threads)))
    venv = Path(sys.prefix)
    careamics, CAREamist, make_config = _import_careamics(venv)
    from lightning.pytorch import Callback

    x = np.load(args.input).astype(np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise SystemExit(f"{args.input}: expected (N, H, W) frames, got shape {x.shape}")
    n, h, w = x.shape
    patch = int(min(args.patch, h, w) // 8 * 8)
    n_patches = n * (h // patch) * (w // patch)
    n_val = max(1, min(8, n_patches // 4))
    accel = "gpu" if args.device.startswith("cuda") else "cpu"

    class Budget(Callback):
        """Stop after a wall-clock budget; count optimiser steps."""

        def __init__(self, seconds: float) -> None:
            self.seconds, self.steps, self.t0 = seconds, 0, None

        def on_train_start(self, trainer, pl_module) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.steps += 1
            if time.perf_counter() - self.t0 > self.seconds:
                trainer.should_stop = True
                trainer.limit_train_batches = batch_idx + 1

    cfg = make_config(
        experiment_name="xrd_peer",
        data_type="array",
        axes="SYX",
        patch_size=[patch, patch],
        batch_size=int(args.batch),
        num_epochs=int(args.max_epochs),
        num_steps=int(args.steps_per_epoch),
        n_val_patches=n_val,
        num_workers=0,
        seed=int(args.seed) + 1,  # careamics wants a positive seed
        model_params={"depth": int(args.depth), "num_channels_init": int(args.width)},
        trainer_params={"accelerator": accel, "devices": 1, "enable_model_summary": False},
    )
    budget = Budget(float(args.seconds))
    work = Path(tempfile.mkdtemp(prefix="careamics_peer_"))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        engine = CAREamist(cfg, work_dir=work, callbacks=[budget], enable_progress_bar=False)
        t0 = time.perf_counter()
        engine.train(train_data=x)
        train_s = time.perf_counter() - t0
        n_params = int(sum(p.numel() for p in engine.model.parameters()))
        # the U-Net needs sides that are multiples of 2**depth: reflect-pad, predict, crop
        m = 2 ** int(args.depth)
        ph, pw = (-h) % m, (-w) % m
        xp = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect") if (ph or pw) else x
        # warm-up prediction (first call builds dataloaders), then the timed one
        engine.predict(xp[:1], axes="SYX", data_type="array", batch_size=1)
        t0 = time.perf_counter()
        pred = engine.predict(xp, axes="SYX", data_type="array", batch_size=int(args.pred_batch))
        pred_s = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)
    if isinstance(pred, tuple):
        pred = pred[0]
    H, W = h + ph, w + pw
    if isinstance(pred, list):
        pred = np.concatenate([np.asarray(p).reshape(-1, H, W) for p in pred], axis=0)
    pred = np.asarray(pred, dtype=np.float32).reshape(n, H, W)[:, :h, :w]
    np.save(args.output, pred)
    stats = {
        "careamics_version": careamics.__version__,
        "torch_version": torch.__version__,
        "device": args.device,
        "threads": int(args.threads),
        "patch": patch,
        "batch": int(args.batch),
        "steps": budget.steps,
        "train_seconds": train_s,
        "train_patches_per_s": budget.steps * int(args.batch) / max(train_s, 1e-9),
        "predict_seconds": pred_s,
        "predict_frames_per_s": n / max(pred_s, 1e-9),
        "n_params": n_params,
        "frame_shape": [h, w],
        "n_frames": n,
    }
    if args.stats:
        Path(args.stats).write_text(json.dumps(stats, indent=2))
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", metavar="VENV", help="create the peer's virtual environment and exit")
    ap.add_argument("--input", help="noisy frames (N, H, W) .npy")
    ap.add_argument("--output", help="denoised frames .npy")
    ap.add_argument("--stats", help="timings JSON")
    ap.add_argument("--seconds", type=float, default=60.0, help="training wall-clock budget")
    ap.add_argument("--max-epochs", type=int, default=1000)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--pred-batch", type=int, default=4)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.setup:
        setup(Path(args.setup))
        return 0
    if not (args.input and args.output):
        ap.error("--input and --output are required")
    stats = run(args)
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
