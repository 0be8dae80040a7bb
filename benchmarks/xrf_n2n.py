"""Noise2Noise on real repeated XRF spectra (1D): how close do 4 denoised spectra get to the mean of 32?

Data: ``05_xrf_spectra.csv`` (32 repeated 0.1 s spectra, Auto-Denoise examples, MIT), read from
``../shared/data/real/xrf_spectra`` relative to the repository root or from ``--csv``. Column 0 (an
index) and the last column (the overflow bin) are dropped: 4095 channels.

Printed, as RMSE per channel against the mean of all 32 spectra (and, in brackets, against the mean
of the other 28, which shares no noise with the 4 inputs):
  * one raw spectrum, the plain mean of the first 4 spectra (references);
  * the mean of the 4 spectra denoised by a network trained with ``n2n-frames`` on those 4 spectra only.
The mean of 32 is itself noisy (about 0.43 counts per channel), which bounds what can be reached.
Auto-Denoise's tutorial reports 0.87 for its N2N (1D DnCNN, 10,000 epochs).

Usage: python benchmarks/xrf_n2n.py [--csv FILE] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT.parent / "shared" / "data" / "real" / "xrf_spectra" / "05_xrf_spectra.csv"

#: the configuration found for 1D spectra (see docs/methods.md)
XRF_CONFIG = dict(
    method__name="n2n-frames",
    n2n_strategy="1:X",
    loss="poisson",
    ndim=1,
    arch="dncnn",
    dncnn_layers=8,
    width=16,
    residual=True,
    epochs=30,
    steps_per_epoch=20,
    train__batch_size=4,
    patch_size=4096,
    lr=3e-3,
    weight_decay=0.0,
    restarts=1,
    val_fraction=0.0,
    patience=0,
    augment=True,
    threads=1,
    device="cpu",
)


def load_spectra(path: Path = CSV) -> np.ndarray:
    """``(32, 4095)`` counts: the CSV without its header row, index column and overflow column."""
    a = np.loadtxt(path, delimiter=",", skiprows=1)
    return a[:, 1:-1].astype(np.float64)


def rmse(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(x, dtype=np.float64) - ref) ** 2)))


def denoise_first(spectra: np.ndarray, n_input: int = 4, seed: int = 0, **overrides) -> tuple[np.ndarray, float]:
    """Train ``n2n-frames`` on the first ``n_input`` spectra; returns (mean of their denoised spectra, seconds)."""
    from napari_xrd_denoise.config import Config
    from napari_xrd_denoise.inference import predict_stack
    from napari_xrd_denoise.io.stack import ScanStack
    from napari_xrd_denoise.training import Trainer

    kw = dict(XRF_CONFIG)
    kw.update(overrides)
    cfg = Config().replace(seed=seed, **kw)
    stack = ScanStack.from_array(spectra[:n_input].astype(np.uint32), frame_ndim=1, source="05_xrf_spectra.csv")
    t0 = time.perf_counter()
    model = Trainer(cfg, stack).run()
    out = predict_stack(model, stack)
    return np.nanmean(out, axis=0), time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=CSV)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="a third of the training steps")
    args = ap.parse_args(argv)
    if not args.csv.is_file():
        ap.exit(2, f"xrf_n2n.py: error: {args.csv}: no such file (the real XRF spectra of ../shared/data/real; "
                   "give their path with --csv)\n")
    import torch

    torch.set_num_threads(1)
    d = load_spectra(args.csv)
    ref = d.mean(axis=0)
    ref28 = d[4:].mean(axis=0)
    print(f"{d.shape[0]} spectra x {d.shape[1]} channels; RMSE per channel against the mean of all {d.shape[0]} "
          f"(against the mean of the other {d.shape[0] - 4})")
    print(f"  one raw spectrum            {rmse(d[0], ref):.3f} ({rmse(d[0], ref28):.3f})")
    print(f"  plain mean of the first 4   {rmse(d[:4].mean(axis=0), ref):.3f} ({rmse(d[:4].mean(axis=0), ref28):.3f})")
    print(f"  noise of the mean of 32     {np.sqrt(np.mean(ref / d.shape[0])):.3f} (estimated, sqrt(mean/32))")
    over = {"epochs": 10} if args.quick else {}
    scores, scores28 = [], []
    for s in args.seeds:
        den, sec = denoise_first(d, 4, seed=s, **over)
        scores.append(rmse(den, ref))
        scores28.append(rmse(den, ref28))
        print(f"  n2n-frames on 4, seed {s}     {scores[-1]:.3f} ({scores28[-1]:.3f})  ({sec:.0f} s on CPU, 1 thread)")
    print(f"  n2n-frames mean over seeds  {np.mean(scores):.3f} ({np.mean(scores28):.3f})  (Auto-Denoise N2N: 0.87)")


if __name__ == "__main__":
    main()
