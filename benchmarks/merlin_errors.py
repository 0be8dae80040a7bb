"""Where the neighbour method loses its error budget on the real Merlin scan, against BM3D.

Builds the benchmark's real 4D-STEM suite (the Merlin 2x4 scan thinned to 25 %, seed 3, exactly as
``xrd-denoise bench``), trains the neighbour method as the benchmark does (60 s, batch 8, patch 96),
once with its defaults and once with the residual path on the centre frame's half forced on
(``model.residual=True``), denoises with BM3D on the Anscombe scale, and prints for each estimate

* the PSNR on counts against the mean, estimated from the thinned-off reference (the goal's column);
* the bias-corrected squared error against the reference (``(d - ref)**2 - var(ref)`` summed over the
  valid pixels of the 8 frames: an unbiased estimate of the squared error against the mean), in all,
  inside the 35 x 45 px box around the bright streak right of the direct-beam disc (rows 135-170,
  columns 55-100, 2.4 % of a frame), where a sharp, partly saturated feature moves by about a pixel
  from one scan position to the next, and outside it;

and the same for the pixelwise average of the neighbour method and BM3D (an analysis, not a method:
it shows how far the two errors are independent). ``--png`` writes the error maps (summed over the
frames, averaged over 9 x 9 px) side by side.

Usage::

    python benchmarks/merlin_errors.py [--seconds 60] [--seed 0] [--png docs/images/merlin_errors.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from napari_xrd_denoise import bench as B
from napari_xrd_denoise.baselines import bm3d_anscombe
from napari_xrd_denoise.errors import XRDError

BOX = (slice(135, 170), slice(55, 100))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="training budget per network")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--png", type=Path, default=None, help="write the error maps here")
    args = ap.parse_args(argv)
    if not B.MERLIN.exists():
        raise SystemExit(f"{B.MERLIN}: the real Merlin scan is not here")

    raw, valid = B._merlin_frames()
    a, ref, var_ref, stack = B.merlin_thinned(raw, valid, "Merlin thinned")
    st = B.settings_for(False)
    est: dict[str, np.ndarray] = {}
    for name, extra in (("neighbors", {}), ("neighbors, residual on", {"model__residual": True})):
        print(f"training {name} for {args.seconds:g} s ...", flush=True)
        r = B.train_predict("neighbors", stack, args.seconds, args.device, st, seed=args.seed, **extra)
        est[name] = np.asarray(r.den, dtype=np.float64).reshape(ref.shape)
    try:
        est["BM3D-Anscombe"] = np.asarray(bm3d_anscombe(a, valid), dtype=np.float64).reshape(ref.shape)
        est["average of neighbors and BM3D"] = 0.5 * (est["neighbors"] + est["BM3D-Anscombe"])
    except XRDError as e:
        print(f"{e}: its rows are left out")

    ideal = B._ideal_row(ref, var_ref, valid)
    box = np.zeros(ref.shape[1:], dtype=bool)
    box[BOX] = True
    maps = {}
    print(f"{'estimate':32s} {'PSNR counts est.':>17s} {'sq. error':>10s} {'in the box':>11s} {'outside':>9s}")
    for name, d in est.items():
        e = np.where(valid, (d - ref) ** 2 - var_ref, 0.0)
        psnr = B.mean_corrected(B.psnr(d, ref, valid, "counts"), ideal["psnr_counts"])
        total, inside = float(e.sum()), float(e[:, box].sum())
        print(f"{name:32s} {psnr:17.2f} {total:10.0f} {inside:11.0f} {total - inside:9.0f}")
        maps[name] = e.sum(0)
    if args.png is not None and "BM3D-Anscombe" in maps:
        write_png(args.png, np.where(valid[0], a[0], np.nan), maps["neighbors"], maps["BM3D-Anscombe"])
        print(f"wrote {args.png}")


def write_png(path: Path, frame: np.ndarray, net: np.ndarray, bm3d: np.ndarray) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from scipy.ndimage import uniform_filter

    n, b = uniform_filter(net, 9), uniform_filter(bm3d, 9)
    top = float(max(n.max(), b.max()))
    fig = Figure(figsize=(16, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    axes[0].imshow(np.sqrt(frame), cmap="gray")
    axes[0].set_title("input frame 1 (sqrt of counts)")
    for ax, img, title in ((axes[1], n, "neighbour method"), (axes[2], b, "BM3D-Anscombe")):
        im = ax.imshow(img, vmin=0, vmax=top, cmap="magma")
        ax.set_title(f"{title}: squared error")
    fig.colorbar(im, ax=axes[1:3], shrink=0.8)
    im = axes[3].imshow(n - b, cmap="RdBu_r", vmin=-top / 2, vmax=top / 2)
    axes[3].set_title("difference (red: BM3D better)")
    fig.colorbar(im, ax=axes[3], shrink=0.8)
    for ax in axes:
        ax.add_patch(Rectangle((BOX[1].start, BOX[0].start), BOX[1].stop - BOX[1].start, BOX[0].stop - BOX[0].start,
                               fill=False, ec="cyan", lw=1))
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
