"""Stream a detector stack several times larger than a memory limit through ``open_stack``.

1. Writes, chunk by chunk, an HDF5 file (``entry/data/data``, uint32, one frame a chunk,
   bitshuffle-LZ4 like a DECTRIS Eiger) of low-count Poisson frames. Its uncompressed size is
   ``--size-gb``; the writer never holds more than a few frames.
2. For each run, starts a fresh Python subprocess that opens the file with ``open_stack`` and reads
   every frame: mode ``frames`` calls ``ScanStack.frames`` block by block and builds the validity
   mask and float32 counts of each block (what training and inference do); mode ``dask`` reduces
   the whole lazy array with dask (``(valid counts).sum().compute()``).
3. Reports the stack size, frames/s and the peak resident memory of each subprocess (its own
   ``ru_maxrss``, and the parent's ``RUSAGE_CHILDREN`` maximum), and checks the peak against
   ``--limit-mb`` (the memory limit the run imposes on itself; RLIMIT_AS is unreliable with
   numpy/dask thread arenas, so the limit is checked, not enforced).

Usage::

    python benchmarks/memory_stream.py --size-gb 3 --runs 3 --limit-mb 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_stack(path: Path, size_gb: float, side: int, mean: float, seed: int = 0) -> tuple[int, float]:
    """Write ``size_gb`` GB (uncompressed) of Poisson frames; returns (n_frames, seconds)."""
    import h5py
    import hdf5plugin

    frame_bytes = side * side * 4
    n = max(1, int(size_gb * 1e9 // frame_bytes))
    rng = np.random.default_rng(seed)
    pool = [rng.poisson(mean, size=(side, side)).astype(np.uint32) for _ in range(32)]
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "entry/data/data", shape=(n, side, side), dtype=np.uint32, chunks=(1, side, side),
            **hdf5plugin.Bitshuffle(cname="lz4"),
        )
        block = 16
        for s in range(0, n, block):
            e = min(n, s + block)
            # rotate a pool of real Poisson frames and add a frame-dependent shift so that no two
            # frames are identical; generating fresh Poisson noise for GBs would dominate the time
            d[s:e] = np.stack([np.roll(pool[i % len(pool)], i, axis=1) for i in range(s, e)])
        f["entry/instrument/detector/detectorSpecific/pixel_mask"] = np.zeros((side, side), np.uint32)
    return n, time.perf_counter() - t0


def iterate(path: str, mode: str, block: int) -> dict:
    """Child process: read every frame once; report time and peak RSS."""
    from napari_xrd_denoise.io.readers import open_stack

    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the imports
    t0 = time.perf_counter()
    s = open_stack(path)
    t_open = time.perf_counter() - t0
    total = 0.0
    t1 = time.perf_counter()
    if mode == "frames":
        for a in range(0, s.n_frames, block):
            raw = s.frames(a, min(s.n_frames, a + block))
            x, v = s.counts(raw)
            total += float(x.sum(dtype=np.float64))
    else:
        import dask

        flat = s.flat()
        counts = flat.map_blocks(lambda r: s.counts(r)[0], dtype=np.float32)
        with dask.config.set(scheduler="threads", num_workers=2):
            total = float(counts.sum(dtype=np.float64).compute())
    dt = time.perf_counter() - t1
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": mode, "frames": s.n_frames, "open_s": t_open, "seconds": dt, "frames_per_s": s.n_frames / dt,
        "peak_rss_mb": peak_kb / 1024, "import_rss_mb": base_kb / 1024, "total_counts": total,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=3.0, help="uncompressed stack size (default 3)")
    ap.add_argument("--side", type=int, default=512, help="frame side in pixels (default 512)")
    ap.add_argument("--mean", type=float, default=0.5, help="Poisson mean counts per pixel (default 0.5)")
    ap.add_argument("--limit-mb", type=float, default=512, help="memory limit the reading must stay under")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--block", type=int, default=16, help="frames per ScanStack.frames call")
    ap.add_argument("--modes", default="frames,dask")
    ap.add_argument("--dir", default=None, help="folder for the test file (default: a temporary folder)")
    ap.add_argument("--iterate", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="frames", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.iterate:
        print(json.dumps(iterate(args.iterate, args.mode, args.block)))
        return 0

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "stream_test.h5"
        n, t_write = write_stack(path, args.size_gb, args.side, args.mean)
        raw_gb = n * args.side * args.side * 4 / 1e9
        disk_gb = path.stat().st_size / 1e9
        print(f"stack: {n} frames of {args.side}x{args.side} uint32 = {raw_gb:.2f} GB uncompressed, "
              f"{disk_gb:.2f} GB on disk (bitshuffle-LZ4), written in {t_write:.1f} s")
        print(f"memory limit: {args.limit_mb:.0f} MB ({raw_gb * 1e3 / args.limit_mb:.1f}x smaller than the stack)")
        ok = True
        for mode in args.modes.split(","):
            results = []
            for r in range(args.runs):
                cmd = [sys.executable, __file__, "--iterate", str(path), "--mode", mode, "--block", str(args.block)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"})
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(res)
                print(f"  {mode} run {r + 1}: {res['frames_per_s']:.0f} frames/s, {res['seconds']:.1f} s, "
                      f"open {res['open_s'] * 1e3:.0f} ms, peak RSS {res['peak_rss_mb']:.0f} MB "
                      f"({res['import_rss_mb']:.0f} MB after imports)")
            children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            fps = statistics.median(r["frames_per_s"] for r in results)
            rss = statistics.median(r["peak_rss_mb"] for r in results)
            base = statistics.median(r["import_rss_mb"] for r in results)
            print(f"{mode}: median {fps:.0f} frames/s ({fps * args.side**2 * 4 / 1e9:.2f} GB/s), median peak RSS "
                  f"{rss:.0f} MB ({rss - base:.0f} MB above the imports), max over child processes so far {children_peak:.0f} MB "
                  f"= {children_peak / (raw_gb * 1e3) * 100:.1f} % of the stack")
            if max(r["peak_rss_mb"] for r in results) > args.limit_mb:
                ok = False
                print(f"{mode}: FAIL, peak RSS above the {args.limit_mb:.0f} MB limit")
        print("result:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
