"""PSNR and azimuthal-profile error of the default method against the flux-correction window.

For each suite of ``xrd-denoise bench`` that has rings (the synthetic scans at three doses and the
thinned real LaB6 frames), trains the default method (n2n-split) once, with the bench's settings and
a shorter budget (``--budget`` s, ``--real-budget`` s), and scores the same output without the
correction and with windows of 1, 3, 5 and 9 ring bins (``infer.profile_window``), using the bench's
own metrics: PSNR on the square-root scale (against the truth; for LaB6 also the estimate against the
mean) and the relative L2 error of the azimuthal profile (pyFAI), next to the raw data's.

Usage::

    python benchmarks/profile_window.py [--budget 60] [--real-budget 150]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from napari_xrd_denoise import bench
from napari_xrd_denoise.config import Config
from napari_xrd_denoise.inference import predict_stack
from napari_xrd_denoise.training import Trainer

WINDOWS = (1, 3, 5, 9)


def _fmt(x, nd):
    return "-" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def synthetic(dose: str, budget: float) -> None:
    st = bench.settings_for(False)
    sc, stack, truth, valid, counts, prof = bench.synthetic_data(st, dose)
    cfg = Config().replace(method__name="n2n-split", epochs=100000, steps_per_epoch=st.steps_per_epoch,
                           max_minutes=budget / 60.0, patience=0, device="cpu", threads=bench._threads(),
                           train__batch_size=8, patch_size=st.patch, seed=0, preview_every=0)
    model = Trainer(cfg, stack).run()
    print(f"synthetic '{dose}' (4x4 of 192x192, {budget:g} s of training): raw PSNR "
          f"{bench.psnr(counts, truth, valid):.2f} dB, profile error "
          f"{bench.profile_metrics(prof, counts, truth, valid)[0]:.4f}")
    for pp, w in [(False, None)] + [(True, w) for w in WINDOWS]:
        model.config.infer.preserve_profile = pp
        if w is not None:
            model.config.infer.profile_window = w
        with torch.inference_mode():
            out = np.asarray(predict_stack(model, stack)).reshape(truth.shape)
        name = "no correction" if not pp else f"window {w}"
        print(f"  {name:>14}: PSNR {bench.psnr(out, truth, valid):.2f} dB, profile error "
              f"{bench.profile_metrics(prof, out, truth, valid)[0]:.4f}", flush=True)


def lab6(budget: float) -> None:
    st = bench.settings_for(False)
    d = bench.lab6_data(st)
    if d is None:
        print("real LaB6 frames not found: skipped")
        return
    r = bench.train_predict("n2n-split", d.stack, budget, "cpu", st)
    den = r.den.reshape(d.a.shape)
    results = [bench.Result("raw", d.a.astype(np.float32)), bench.Result("no correction", den)]
    for w in WINDOWS:
        results.append(bench.Result(f"window {w}", bench.flux_corrected(den, d.a, d.valid, d.full_shape, d.cols,
                                                                        d.prof.integrators, w)))
    rows = bench._score_rows(results, d.ref, d.valid, d.prof)
    rows.append(bench._ideal_row(d.ref, d.var_ref, d.valid))
    bench._add_mean_corrected(rows)
    print(f"real LaB6, 8 frames thinned to 5 % ({budget:g} s of training); PSNR against the held-out counts / "
          "against the mean (est.)")
    for row in rows[:-1]:
        print(f"  {row['method']:>14}: PSNR {_fmt(row.get('psnr_sqrt'), 2)} / {_fmt(row.get('psnr_sqrt_mean'), 2)} dB, "
              f"profile error {_fmt(row.get('profile_err'), 5)}", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0)
    ap.add_argument("--real-budget", type=float, default=150.0)
    a = ap.parse_args(argv)
    for dose in ("low", "mid", "high"):
        synthetic(dose, a.budget)
    lab6(a.real_budget)


if __name__ == "__main__":
    main()
