"""``xrd-denoise demo``: denoise the bundled real LaB6 frames and write a PNG comparison."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def comparison_png(raw: np.ndarray, denoised: np.ndarray, valid: np.ndarray, path: Path, title: str = "") -> Path:
    """Raw | denoised | Poisson residual of one frame, on a square-root intensity scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = np.where(valid, raw.astype(np.float32), np.nan)
    den = np.where(valid, denoised, np.nan)
    hi = float(np.nanpercentile(np.sqrt(np.clip(raw, 0, None)), 99.7)) or 1.0
    res = (raw - den) / np.sqrt(np.maximum(den, 0.5))
    wide = raw.shape[1] > 2 * raw.shape[0]
    fig, axes = plt.subplots(3 if wide else 1, 1 if wide else 3, figsize=(12, 7) if wide else (15, 5))
    panels = [
        ("raw counts (sqrt scale)", np.sqrt(np.clip(raw, 0, None)), dict(cmap="magma", vmin=0, vmax=hi)),
        ("denoised counts (sqrt scale)", np.sqrt(np.clip(den, 0, None)), dict(cmap="magma", vmin=0, vmax=hi)),
        ("Poisson residual (raw - denoised)/sqrt(denoised)", res, dict(cmap="coolwarm", vmin=-3, vmax=3)),
    ]
    for ax, (name, img, kw) in zip(np.atleast_1d(axes), panels):
        im = ax.imshow(img, interpolation="nearest", **kw)
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.02 if wide else 0.046, pad=0.01)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out_dir: Path, epochs: int | None = None, device: str = "auto", quiet: bool = False) -> Path:
    from .api import denoise, make_config
    from .cli import _Progress, _train_printer
    from .io.readers import open_stack
    from .io.writers import read_result
    from .sample_data import sample_path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src = sample_path("lab6")
    stack = open_stack(src)
    cfg = make_config(train__device=device, train__epochs=epochs or 8)
    out = out_dir / "lab6_denoised.h5"
    if not quiet:
        print(f"demo: {stack.n_frames} real LaB6 frames {stack.frame_shape} from {src.name}", file=sys.stderr)
    t0 = time.time()
    denoise(stack, out, cfg, callback=_train_printer(quiet), progress=_Progress("denoising", quiet), overwrite=True)
    den, valid, prov = read_result(out)
    i = stack.n_frames // 2
    raw = stack.frame(i)
    method = json.loads(prov["config"])["method"]["name"] if prov.get("config") else "?"
    png = comparison_png(raw, np.asarray(den[i]), np.asarray(valid[i]).astype(bool), out_dir / "lab6_comparison.png",
                         title=f"Real LaB6 frame {i} (SSRL BL 7-2, Pilatus 300K-W), method {method}")
    if not quiet:
        print(f"demo: done in {time.time() - t0:.0f} s; wrote {out} and {png}", file=sys.stderr)
    return out
