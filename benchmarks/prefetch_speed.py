"""Time training with the next batches drawn in a background thread (``train.prefetch``) and without.

Trains each method on the benchmark's synthetic 4x4 scan of 192x192 frames (mid dose) for ``--epochs``
epochs of ``--steps`` steps (batch 8, patch 96, the default U-Net), ``--repeats`` times each way,
alternating, and prints the median time per epoch (the first epoch, which builds the caches, left out),
the training patches per second and the ratio. Both ways train bit for bit the same network
(tests/test_training.py), so only the time differs.

Drawing a batch (reading frames from the cache, cropping, rotating, masking or splitting the patches:
numpy) takes about 12 ms for the neighbour method on a 2-core CPU, against about 60 ms for the training
step itself; on a GPU the step is far shorter and the drawing the larger part.

Usage::

    python benchmarks/prefetch_speed.py [--device cpu] [--threads 0] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from napari_xrd_denoise.config import Config
from napari_xrd_denoise.synthetic import make_scan
from napari_xrd_denoise.training import Trainer


def epoch_seconds(method: str, stack, prefetch: bool, args) -> float:
    cfg = Config().replace(method__name=method, epochs=args.epochs, steps_per_epoch=args.steps, patience=0,
                           device=args.device, threads=args.threads, train__batch_size=8, patch_size=96, seed=0,
                           preview_every=0, prefetch=prefetch)
    tr = Trainer(cfg, stack, callback=lambda e: None)  # quiet: no tips on the log
    tr.run()
    return float(np.median(tr.history["epoch_s"][1:]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the trainer's default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--methods", default="n2s,n2n-split,neighbors")
    args = ap.parse_args(argv)
    stack = make_scan((4, 4), (192, 192), dose="mid", seed=1).to_stack()
    for method in args.methods.split(","):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeats):
            for prefetch in (False, True):
                times[prefetch].append(epoch_seconds(method, stack, prefetch, args))
        off, on = statistics.median(times[False]), statistics.median(times[True])
        per = args.steps * 8
        print(f"{method:>10}: epoch of {args.steps} steps {off:.3f} s drawn in the loop, {on:.3f} s drawn ahead "
              f"({per / off:.0f} vs {per / on:.0f} patches/s, x{off / on:.2f}; medians of {args.repeats})")


if __name__ == "__main__":
    main()
