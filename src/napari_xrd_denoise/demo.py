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
    zoom = _zoom_window(den, valid)
    panels = [
        ("raw counts (sqrt scale)", np.sqrt(np.clip(raw, 0, None)), dict(cmap="magma", vmin=0, vmax=hi)),
        ("denoised counts (sqrt scale)", np.sqrt(np.clip(den, 0, None)), dict(cmap="magma", vmin=0, vmax=hi)),
        ("Poisson residual (raw - denoised)/sqrt(denoised)", res, dict(cmap="coolwarm", vmin=-3, vmax=3)),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), gridspec_kw={"height_ratios": [1, 1.3]})
    for col, (name, img, kw) in enumerate(panels):
        for r, im_data in enumerate([img, img[zoom]]):
            ax = axes[r, col]
            im = ax.imshow(im_data, interpolation="nearest", aspect="auto", **kw)
            ax.set_title(name if r == 0 else f"zoom rows {zoom[0].start}-{zoom[0].stop}, "
                         f"columns {zoom[1].start}-{zoom[1].stop}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.01)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _zoom_window(den: np.ndarray, valid: np.ndarray, size: tuple[int, int] = (96, 160)) -> tuple[slice, slice]:
    """A window around the brightest smoothed region of the denoised frame (where the rings are)."""
    from scipy import ndimage

    img = ndimage.uniform_filter(np.where(valid, np.nan_to_num(den), 0.0), 15)
    cy, cx = np.unravel_index(int(np.argmax(img)), img.shape)
    h, w = min(size[0], den.shape[0]), min(size[1], den.shape[1])
    y0 = int(np.clip(cy - h // 2, 0, den.shape[0] - h))
    x0 = int(np.clip(cx - w // 2, 0, den.shape[1] - w))
    return slice(y0, y0 + h), slice(x0, x0 + w)


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
