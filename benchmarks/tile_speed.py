"""Time whole-frame inference of the default U-Net on detector frame shapes that are not a multiple of the
inference tile, with balanced tiles (the package's: ``model_file._balanced_tile``) and with fixed tiles of
``--tile`` pixels (each axis cut into tiles of ``--tile``, the last one shifted back to the edge).

Frames with a side just over the tile (a Lambda 750k's 516 rows) cost two full tiles with fixed tiles;
balanced tiles use as many tiles, each only as large as the axis needs. Prints, per frame shape, the
median of ``--repeats`` timings each way (alternating), the ratio, and the largest difference between the
two outputs relative to the output's range (the tiles' seams fall elsewhere; both blend smoothly).

Usage::

    python benchmarks/tile_speed.py [--repeats 5] [--tile 512] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import numpy as np
import torch

from napari_xrd_denoise import model_file
from napari_xrd_denoise.config import ModelConfig
from napari_xrd_denoise.models import build_model

SHAPES = {
    "Pilatus 300K-W 195x1475": (195, 1475),
    "Lambda 750k 516x1554": (516, 1554),
    "512x512 (one tile)": (512, 512),
    "Eiger 1M 1065x1030": (1065, 1030),
}


def _fixed(length: int, tile: int, overlap: int, multiple: int = 16) -> int:
    return min(tile, length)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = build_model(ModelConfig(), 2, in_channels=1).eval()
    with torch.no_grad():  # the output layer starts at zero (identity residual): give every weight a value
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    dev = torch.device("cpu")
    print(f"default U-Net, cpu, {torch.get_num_threads()} torch threads, tile {a.tile}, overlap 32, "
          f"median of {a.repeats}")
    for name, shape in SHAPES.items():
        x = np.random.default_rng(0).poisson(3.0, size=(1, 1) + shape).astype(np.float32)

        def run():
            return model_file._run_network_once(net, x, device=dev, batch_size=1, tile=a.tile, overlap=32)

        with mock.patch.object(model_file, "_balanced_tile", _fixed):
            fixed_out = run()
        balanced_out = run()
        times = {"fixed": [], "balanced": []}
        for _ in range(a.repeats):
            for kind in ("fixed", "balanced"):
                t0 = time.perf_counter()
                if kind == "fixed":
                    with mock.patch.object(model_file, "_balanced_tile", _fixed):
                        run()
                else:
                    run()
                times[kind].append(time.perf_counter() - t0)
        tf, tb = statistics.median(times["fixed"]), statistics.median(times["balanced"])
        rng = float(np.ptp(fixed_out)) or 1.0
        diff = float(np.max(np.abs(fixed_out - balanced_out))) / rng
        print(f"{name:>24}: fixed tiles {tf * 1e3:7.0f} ms, balanced {tb * 1e3:7.0f} ms per frame "
              f"(x{tf / tb:.2f}); largest output difference {diff:.1e} of the range")


if __name__ == "__main__":
    main()
