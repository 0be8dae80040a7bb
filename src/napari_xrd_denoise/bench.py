"""Quality and speed benchmarks: ``xrd-denoise bench [--quick] [--device D] [--out docs/]``.

Quality suite (every number measured in this run, on this machine):

* synthetic scans with exact ground truth at three doses (:func:`synthetic.make_scan`);
* real LaB6 Pilatus frames binomially thinned to 5 % (reference: the *other* 95 % of the counts, scaled;
  it is independent of the input, unlike the full frame, which contains the input's own counts);
* real 4D-STEM Merlin frames (a 2x4 scan) thinned the same way, for the neighbour method;
* two draws of a simulated twin of that scan with a known mean (its frames' common pattern and fluxes,
  its detector's charge sharing), thinned the same way: the methods scored against the truth, and the
  thinned-reference estimates checked against it (a real-scan verdict stands only where they agree);
* the real XRF spectra: the first 4 of 32 repeats, reference the mean of all 32.

Every project method that applies, the baselines of :mod:`baselines`, and CAREamics Noise2Void as a peer
(``benchmarks/careamics_peer.py`` in its own virtual environment) get the same data and the same
training time. Speed suite: training patches/s, inference frames/s at 512x512, the time to denoise a
141x121 scan of 512x512 frames (extrapolated), peak memory while streaming, CPU and (when present) GPU,
against CAREamics on the same machine in the same run. Nothing is copied from elsewhere: a number that
could not be measured is reported as such, and every goal states whether the measurement meets it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import XRDError

REPO = Path(__file__).resolve().parents[2]
PEER_SCRIPT = REPO / "benchmarks" / "careamics_peer.py"
MEMORY_SCRIPT = REPO / "benchmarks" / "memory_stream.py"
REAL_DIR = REPO.parent / "shared" / "data" / "real"
THIN_P = 0.05
STEM_P = 0.25
MERLIN = REAL_DIR / "merlin_4dstem" / "Merlin_navigation4x2_ROI.zip"
MERLIN_TWIN_SIGMA = 1.0  # px: smoothing of the common pattern of the Merlin scan's simulated twin
MERLIN_TWIN_SEEDS = (0, 1)  # two independent draws of the twin
FULL_SCAN = (141, 121)
PROJECT_METHODS = ("n2s", "n2v", "n2n-split", "symmetry", "neighbors")
#: Extra rows: the founding (plain) form of the methods whose default combines with a binomial split,
#: row name -> (method, configuration overrides); run right after their method.
VARIANTS = {
    "symmetry": ("symmetry (plain partner N2N)", {"combine_split": False}),
    "neighbors": ("neighbors (plain blind spot)", {"combine_split": False}),
}
BASELINE_ROWS = ("raw", "gaussian (oracle sigma)", "median 3x3", "BM3D-Anscombe")
PEER = "careamics N2V (peer)"
IDEAL = "ideal (true mean vs this reference, expected)"


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    name: str
    synth_scan: tuple[int, int]
    synth_frame: tuple[int, int]
    doses: tuple[str, ...]
    budget_s: float  # training time per method and data set
    real_frames: tuple[int, ...]
    real_cols: tuple[int, int] | None  # crop of the LaB6 frames (None: whole 195x1475)
    real_budget_s: float
    stem: bool
    xrf_budget_s: float
    speed_frames: int
    speed_frame: int
    speed_steps: int
    repeats: int
    peer: bool
    memory_frames: tuple[int, ...]
    steps_per_epoch: int = 20
    patch: int = 64
    extra: dict[str, Any] = field(default_factory=dict)
    stem_budget_s: float | None = None  # the Merlin suites (real scan and twins); None: ``budget_s``
    stem_trainings: int = 1  # trainings of the neighbour method on the real Merlin scan, with seeds 0, 1, ...

    @property
    def stem_budget(self) -> float:
        return self.budget_s if self.stem_budget_s is None else float(self.stem_budget_s)


def settings_for(quick: bool, tiny: bool = False) -> Settings:
    if tiny:
        return Settings("tiny", (2, 2), (48, 48), ("mid",), 1.0, (25,), (440, 540), 1.0, False, 1.0,
                        2, 64, 4, 1, False, (), steps_per_epoch=4, patch=32)
    if quick:
        return Settings("quick", (2, 3), (96, 96), ("low", "mid", "high"), 6.0, (10, 25, 50), (300, 700), 12.0,
                        True, 6.0, 4, 512, 12, 3, True, (16, 64), steps_per_epoch=10, patch=64,
                        extra={"peer_repeats": 2})
    return Settings("full", (4, 4), (192, 192), ("low", "mid", "high"), 60.0,
                    (5, 10, 15, 20, 25, 30, 45, 50), None, 300.0, True, 60.0, 16, 512, 40, 5, True, (256, 3072),
                    steps_per_epoch=25, patch=96, stem_budget_s=180.0, stem_trainings=3)


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------
def psnr(den: np.ndarray, ref: np.ndarray, valid: np.ndarray, scale: str = "sqrt") -> float:
    """PSNR in dB over valid pixels; peak = the reference's maximum on that scale."""
    ok = valid & np.isfinite(den) & np.isfinite(ref)
    if not ok.any():
        return math.nan
    f = (lambda a: np.sqrt(np.maximum(a, 0.0))) if scale == "sqrt" else (lambda a: a)
    a, b = f(den[ok].astype(np.float64)), f(ref[ok].astype(np.float64))
    mse = float(np.mean((a - b) ** 2))
    peak = float(np.max(b))
    return 10 * math.log10(peak**2 / mse) if mse > 0 and peak > 0 else math.inf


def ssim_sqrt(den: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> float:
    """Mean SSIM (skimage) of square roots over valid pixels, frame by frame (2D frames)."""
    from skimage.metrics import structural_similarity

    vals = []
    peak = math.sqrt(max(float(np.nanmax(np.where(valid, ref, np.nan))), 1e-9))
    for d, r, v in zip(den, ref, valid):
        ok = v & np.isfinite(d)
        if min(d.shape) < 7 or not ok.any():
            continue
        rs = np.sqrt(np.maximum(np.where(ok, r, 0.0), 0.0))
        ds = np.where(ok, np.sqrt(np.maximum(np.nan_to_num(d), 0.0)), rs)
        _, smap = structural_similarity(ds, rs, data_range=peak, full=True)
        vals.append(float(smap[ok].mean()))
    return float(np.mean(vals)) if vals else math.nan


def peak_errors(x: np.ndarray, prof: np.ndarray, ref: np.ndarray, max_peaks: int = 8) -> tuple[float, float]:
    """Mean |position error| (x units) and mean relative |area error| of the reference's main peaks.

    Peaks are found in the reference profile; in a window of +-2 full widths at half maximum around
    each (cut half-way to a neighbouring peak), both profiles get their own linear background (through
    the window's end points) and the background-subtracted centroid and area are compared.
    """
    from scipy.signal import find_peaks, peak_widths

    ok = np.isfinite(prof) & np.isfinite(ref)
    if ok.sum() < 8:
        return math.nan, math.nan
    xs, p, r = x[ok], prof[ok], ref[ok]
    span = float(np.max(r) - np.median(r))
    if span <= 0:
        return math.nan, math.nan
    allpk, props = find_peaks(r, prominence=0.05 * span)
    if allpk.size == 0:
        return math.nan, math.nan
    pk = allpk[np.argsort(props["prominences"])[::-1][:max_peaks]]
    widths = peak_widths(r, pk, rel_height=0.5)[0]
    dpos, darea = [], []
    for i, w in zip(pk, widths):
        h = int(max(3, math.ceil(2 * w)))
        left = allpk[allpk < i]
        right = allpk[allpk > i]
        a = max(0, i - h, (int(left.max()) + i) // 2 if left.size else 0)
        b = min(r.size - 1, i + h, (int(right.min()) + i) // 2 if right.size else r.size - 1)
        if b - a < 4:
            continue
        seg = slice(a, b + 1)
        res = []
        for y in (p, r):
            base = np.interp(xs[seg], [xs[a], xs[b]], [y[a], y[b]])
            s = y[seg] - base
            area = float(np.trapezoid(s, xs[seg])) if hasattr(np, "trapezoid") else float(np.trapz(s, xs[seg]))
            pos = float(np.sum(xs[seg] * np.maximum(s, 0)) / max(np.sum(np.maximum(s, 0)), 1e-12))
            res.append((pos, area))
        (pp, ap), (pr_, ar) = res
        if ar <= 0:
            continue
        dpos.append(abs(pp - pr_))
        darea.append(abs(ap - ar) / ar)
    if not dpos:
        return math.nan, math.nan
    return float(np.mean(dpos)), float(np.mean(darea))


class Profiler:
    """Azimuthal profiles (pyFAI through :mod:`physics.geometry`) with one integrator per frame geometry."""

    def __init__(self, integrators: list[Any], embed: Callable[[np.ndarray], np.ndarray] | None = None):
        self.integrators = integrators
        self.embed = embed or (lambda a: a)

    def profile(self, i: int, img: np.ndarray, valid: np.ndarray):
        from .physics.geometry import azimuthal_profile

        ai = self.integrators[min(i, len(self.integrators) - 1)]
        return azimuthal_profile(self.embed(np.where(valid, img, np.nan)), self.embed(valid.astype(float)) > 0,
                                 geometry=ai, unit="2th_deg", npt=self.npt)

    npt = 500


def profile_metrics(prof: Profiler | None, den: np.ndarray, ref: np.ndarray, valid: np.ndarray):
    """Mean relative profile error and peak position / area errors over frames (same pixels for both)."""
    if prof is None:
        return math.nan, math.nan, math.nan
    from .physics.geometry import profile_error

    e, dp, da = [], [], []
    for i, (d, r, v) in enumerate(zip(den, ref, valid)):
        ok = v & np.isfinite(d) & np.isfinite(r)
        if not ok.any():
            continue
        x, pd_, _ = prof.profile(i, d, ok)
        _, pr_, _ = prof.profile(i, r, ok)
        try:
            e.append(profile_error(pd_, pr_))
        except XRDError:
            continue
        a, b = peak_errors(x, pd_, pr_)
        dp.append(a)
        da.append(b)
    f = lambda v: float(np.nanmean(v)) if v and np.isfinite(v).any() else math.nan  # noqa: E731
    return f(e), f(dp), f(da)


def spectrum_metrics(den: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(den) & np.isfinite(ref)
    rmse = float(np.sqrt(np.mean((den[ok] - ref[ok]) ** 2)))
    pe, ae = peak_errors(np.arange(ref.size, dtype=np.float64), den, ref)
    return {"rmse": rmse, "psnr_counts": psnr(den[None], ref[None], ok[None], "counts"),
            "psnr_sqrt": psnr(den[None], ref[None], ok[None], "sqrt"), "peak_pos": pe, "peak_area": ae}


# --------------------------------------------------------------------------------------------------
# running denoisers
# --------------------------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    den: np.ndarray | None = None
    train_s: float = math.nan
    predict_s: float = math.nan
    note: str = ""
    default: bool = False
    stats: dict[str, Any] | None = None


def _threads() -> int:
    from .devices import default_threads

    return default_threads()


@contextlib.contextmanager
def _quiet():
    """Package notes silenced: the per-run notes (e.g. the flux correction) would repeat for every run."""
    lg = logging.getLogger("napari_xrd_denoise")
    level = lg.level
    lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(level)


def train_predict(method: str, stack, budget_s: float, device: str, st: Settings, **cfg_extra) -> Result:
    """Train ``method`` on ``stack`` for at most ``budget_s`` seconds and denoise the whole stack."""
    import torch

    from .config import Config
    from .inference import predict_stack
    from .training import Trainer

    kw = dict(method__name=method, epochs=100000, steps_per_epoch=st.steps_per_epoch, max_minutes=budget_s / 60.0,
              patience=0, device=device, threads=_threads(), train__batch_size=8, patch_size=st.patch, seed=0,
              preview_every=0)
    kw.update(cfg_extra)
    cfg = Config().replace(**kw)
    t0 = time.perf_counter()
    model = Trainer(cfg, stack).run()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with _quiet(), torch.inference_mode():
        out = predict_stack(model, stack)
    pred_s = time.perf_counter() - t0
    n = len(model.history.get("train_loss", []))
    return Result(method, np.asarray(out, dtype=np.float32).reshape((-1,) + stack.frame_shape), train_s, pred_s,
                  note=f"{n} epochs x {st.steps_per_epoch} steps")


def peer_venv() -> Path | None:
    """The careamics virtual environment (``XRD_CAREAMICS_VENV`` or ``/work/careamics-venv``), if usable."""
    cands = [os.environ.get("XRD_CAREAMICS_VENV"), str(REPO.parent / "careamics-venv"), "/work/careamics-venv"]
    for c in cands:
        if c and (Path(c) / "bin" / "python").exists() and PEER_SCRIPT.exists():
            return Path(c)
    return None


def run_peer(frames: np.ndarray, budget_s: float, device: str, patch: int, timeout_s: float | None = None,
             valid: np.ndarray | None = None, vst: bool = True) -> Result:
    """CAREamics N2V on ``(N, H, W)`` counts in its own venv.

    With ``vst`` (default) it gets what BM3D gets: the Anscombe transform (invalid pixels filled from their
    valid surroundings, since N2V has no mask) and the exact unbiased inverse of its output; without, the
    counts themselves (invalid pixels 0).
    """
    venv = peer_venv()
    if venv is None:
        return Result(PEER, note="not available (no careamics venv; see benchmarks/careamics_peer.py --setup)")
    from .baselines import _normconv
    from .physics.vst import anscombe, inverse_anscombe

    x = np.asarray(frames, dtype=np.float64)
    v = np.ones(x.shape, bool) if valid is None else np.broadcast_to(valid, x.shape)
    if vst:
        a = anscombe(np.where(v, x, 0)).astype(np.float64)
        x = np.where(v, a, _normconv(a, v, 2.0, 2))
    else:
        x = np.where(v, x, 0.0)
    tmp = Path(tempfile.mkdtemp(prefix="xrd_peer_"))
    try:
        np.save(tmp / "in.npy", x.astype(np.float32))
        dev = "cuda" if device.startswith("cuda") else "cpu"
        cmd = [str(venv / "bin" / "python"), str(PEER_SCRIPT), "--input", str(tmp / "in.npy"), "--output",
               str(tmp / "out.npy"), "--stats", str(tmp / "stats.json"), "--seconds", f"{budget_s:.3f}",
               "--patch", str(patch), "--threads", str(_threads()), "--device", dev]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        env.pop("PYTHONPATH", None)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s or (budget_s * 4 + 300), env=env)
        if p.returncode != 0 or not (tmp / "out.npy").exists():
            last = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["?"]
            return Result(PEER, note=f"failed: {last[0][:160]}")
        stats = json.loads((tmp / "stats.json").read_text())
        out = np.load(tmp / "out.npy").astype(np.float64)
        if vst:
            out = inverse_anscombe(out).astype(np.float64)
        return Result(PEER, out.astype(np.float32), stats["train_seconds"], stats["predict_seconds"],
                      note=f"careamics {stats['careamics_version']}, {stats['steps']} steps, {stats['n_params']} params"
                      + (", Anscombe + exact inverse" if vst else ", on counts"), stats=stats)
    except subprocess.TimeoutExpired:
        return Result(PEER, note="failed: timed out")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_baselines(counts: np.ndarray, valid: np.ndarray, ref: np.ndarray, frame_ndim: int = 2,
                  bm3d: bool = True) -> list[Result]:
    from . import baselines

    out = [Result("raw", baselines.raw(counts, valid, frame_ndim=frame_ndim))]
    t0 = time.perf_counter()
    g, s = baselines.best_gaussian(counts, valid, ref, frame_ndim=frame_ndim)
    out.append(Result("gaussian (oracle sigma)", g, predict_s=time.perf_counter() - t0,
                      note=f"sigma={s:g} chosen on the reference (upper bound)"))
    t0 = time.perf_counter()
    out.append(Result("median 3x3" if frame_ndim == 2 else "median 3", baselines.median(counts, valid, 3, frame_ndim=frame_ndim),
                      predict_s=time.perf_counter() - t0))
    if bm3d and frame_ndim == 2:
        try:
            t0 = time.perf_counter()
            b = baselines.bm3d_anscombe(counts, valid)
            out.append(Result("BM3D-Anscombe", b, predict_s=time.perf_counter() - t0, note="sigma 1, exact unbiased inverse"))
        except XRDError as e:
            out.append(Result("BM3D-Anscombe", note=f"not available: {e}"))
    return out


def _safe(fn: Callable[[], Result], name: str, progress: Callable[[str], None]) -> Result:
    try:
        return fn()
    except Exception as e:  # a failing method is reported, never hidden or replaced by a number
        progress(f"  {name} failed: {type(e).__name__}: {e}")
        if os.environ.get("XRD_BENCH_DEBUG"):
            traceback.print_exc()
        return Result(name, note=f"failed: {type(e).__name__}: {str(e)[:120]}")


# --------------------------------------------------------------------------------------------------
# suites
# --------------------------------------------------------------------------------------------------
@dataclass
class Suite:
    key: str
    title: str
    description: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    frame_ndim: int = 2


def _score_rows(results: list[Result], ref: np.ndarray, valid: np.ndarray, prof: Profiler | None) -> list[dict]:
    rows = []
    for r in results:
        row = {"method": r.name + (" (default)" if r.default else ""), "train_s": r.train_s,
               "predict_s": r.predict_s, "note": r.note, "ok": r.den is not None}
        if r.den is not None:
            d = r.den.reshape(ref.shape)
            row["psnr_sqrt"] = psnr(d, ref, valid, "sqrt")
            row["psnr_counts"] = psnr(d, ref, valid, "counts")
            row["ssim"] = ssim_sqrt(d, ref, valid)
            row["profile_err"], row["peak_pos"], row["peak_area"] = profile_metrics(prof, d, ref, valid)
            inval = ~valid
            row["fills_invalid"] = bool(np.isfinite(d[inval]).any()) if inval.any() else False
        rows.append(row)
    return rows


def _methods_for(stack, center_known: bool, scan_2d: bool) -> list[str]:
    from .methods import available_methods

    avail = set(available_methods())
    out = []
    for m in PROJECT_METHODS:
        if m == "symmetry" and not center_known:
            continue
        if m == "neighbors" and not scan_2d:
            continue
        out.append(m if m in avail else f"!{m}")
        if m in VARIANTS and m in avail:
            out.append(VARIANTS[m][0])
    return out


def _project_results(stack, methods: list[str], budget: float, device: str, st: Settings, progress,
                     center=None) -> list[Result]:
    from .config import Config
    from .methods import resolve_auto

    default = resolve_auto(Config(), stack)
    res = []
    names = list(methods)
    if default not in [m.lstrip("!") for m in names]:
        names.insert(0, default)
    variants = {row: (method, extra) for method, (row, extra) in VARIANTS.items()}
    for m in names:
        if m.startswith("!"):
            res.append(Result(m[1:], note="not available in this installation"))
            continue
        progress(f"  {m} ({budget:g} s budget)")
        method, extra = variants.get(m, (m, {}))
        extra = dict(extra)
        if method == "symmetry" and center is not None:
            extra["center"] = list(center)
        r = _safe(lambda: train_predict(method, stack, budget, device, st, **extra), m, progress)
        r.name = m
        r.default = m == default
        res.append(r)
    return res


def synthetic_data(st: Settings, dose: str):
    """The synthetic suite's data for one dose: ``(scan, stack, truth, valid, counts, profiler)``, frames
    flattened to ``(n, *frame)``, counts as float64 with invalid pixels 0."""
    from .physics.geometry import make_integrator
    from .synthetic import make_scan

    sc = make_scan(st.synth_scan, st.synth_frame, dose=dose, seed=1)
    stack = sc.to_stack()
    n = stack.n_frames
    truth = sc.truth.reshape((n,) + sc.frame_shape).astype(np.float64)
    valid = np.broadcast_to(sc.valid, truth.shape).copy()
    counts, _ = stack.counts(np.asarray(sc.counts).reshape(truth.shape))
    prof = Profiler([make_integrator(sc.geometry())])
    prof.npt = int(max(64, min(st.synth_frame) // 2))
    return sc, stack, truth, valid, counts.astype(np.float64), prof


def synthetic_suite(st: Settings, device: str, progress) -> list[Suite]:
    suites = []
    for dose in st.doses:
        progress(f"synthetic scan, dose {dose}")
        sc, stack, truth, valid, counts, prof = synthetic_data(st, dose)
        results = _project_results(stack, _methods_for(stack, True, len(st.synth_scan) == 2), st.budget_s, device,
                                   st, progress, center=sc.center)
        progress("  baselines")
        results += run_baselines(counts, valid, truth, bm3d=st.name != "tiny")
        if st.peer:
            progress("  careamics N2V")
            results.append(run_peer(counts, st.budget_s, device, st.patch, valid=valid))
        s = Suite(f"synthetic-{dose}", f"Synthetic scan, dose '{dose}'",
                  f"{'x'.join(map(str, st.synth_scan))} scan of {'x'.join(map(str, st.synth_frame))} frames "
                  f"(synthetic.make_scan, seed 1, ring pixels ~{sc.dose:g} counts), rings, spots, gaps, beam stop; "
                  f"reference = the exact Poisson mean. The stack carries its geometry, so every project "
                  f"method gets the default flux correction along the rings.")
        s.rows = _score_rows(results, truth, valid, prof)
        suites.append(s)
    return suites


def _lab6(st: Settings):
    import h5py

    path = REAL_DIR / "ssrl_LaB6_Pilatus300KW_tth_scan" / "ssrl_LaB6_tth_scan_stack_DERIVED.h5"
    if not path.exists():
        return None
    import hdf5plugin  # noqa: F401

    with h5py.File(path, "r") as f:
        idx = list(st.real_frames)
        full = f["entry/data/data"][idx]
        pm = f["entry/instrument/detector/detectorSpecific/pixel_mask"][()]
        tth = f["entry/sample/positioners/two_theta_deg"][()][idx]
    return path, full, pm == 0, tth


def thinned(full: np.ndarray, valid: np.ndarray, p: float, seed: int):
    """(input counts, independent reference, reference noise variance estimate) from full-count frames."""
    from .physics.binomial import split

    a, rest = split(np.where(valid, full, 0), p=p, rng=seed)
    ref = rest * (p / (1 - p))
    var_ref = rest * (p / (1 - p)) ** 2  # Var(ref) = p^2 lambda / (1-p); lambda (1-p) estimated by rest
    return a.astype(np.float64), ref.astype(np.float64), var_ref


@dataclass
class Lab6Data:
    """The thinned real LaB6 suite's data (``st.real_cols`` crop), as :func:`lab6_data` makes it."""
    full_shape: tuple[int, int]  # the detector frame
    cols: tuple[int, int]  # the columns used
    tth: np.ndarray  # 2theta of each frame (deg)
    a: np.ndarray  # thinned input counts (float64)
    ref: np.ndarray  # independent reference
    var_ref: np.ndarray  # its noise variance estimate
    valid: np.ndarray
    stack: Any  # ScanStack of the thinned input
    prof: Profiler  # each frame's own goniometer geometry


def lab6_data(st: Settings) -> Lab6Data | None:
    """The real LaB6 frames of ``st``, thinned to ``THIN_P``, with their reference and profiler; None if absent."""
    from .io.stack import ScanStack
    from .physics.geometry import lab6_integrator

    got = _lab6(st)
    if got is None:
        return None
    _, full, fvalid, tth = got
    sentinel = np.iinfo(np.uint32).max
    fvalid = fvalid[None] & (full != sentinel)
    if st.real_cols is not None:
        c0, c1 = st.real_cols
        full_c, valid = full[..., c0:c1], fvalid[..., c0:c1]
    else:
        c0, c1 = 0, full.shape[-1]
        full_c, valid = full, fvalid
    a, ref, var_ref = thinned(full_c.astype(np.int64), valid, THIN_P, seed=2)
    raw_u = np.where(valid, a, sentinel).astype(np.uint32)
    stack = ScanStack.from_array(raw_u, frame_ndim=2, source="LaB6 thinned", static_valid=valid.all(0))
    H, W = full.shape[-2:]

    def embed(img):
        out = np.full(img.shape[:-1] + (W,), np.nan if img.dtype.kind == "f" else 0, dtype=img.dtype)
        out[..., c0:c1] = img
        return out

    prof = Profiler([lab6_integrator(float(t)) for t in tth], embed=embed)
    prof.npt = 400 if st.real_cols is None else 150
    return Lab6Data((H, W), (c0, c1), np.asarray(tth), a, ref, var_ref, valid, stack, prof)


def real_lab6_suite(st: Settings, device: str, progress) -> Suite | None:
    d = lab6_data(st)
    if d is None:
        progress("real LaB6 frames not found: suite skipped")
        return None
    a, ref, var_ref, valid, stack, prof, tth = d.a, d.ref, d.var_ref, d.valid, d.stack, d.prof, d.tth
    (c0, c1) = d.cols
    progress(f"real LaB6 frames {list(st.real_frames)} thinned to {THIN_P:.0%}")
    results = _project_results(stack, _methods_for(stack, False, False), st.real_budget_s, device, st, progress)
    results += _preserved_profile_rows(results, a, valid, d.full_shape, d.cols, prof.integrators)
    progress("  baselines")
    results += run_baselines(a, valid, ref, bm3d=st.name != "tiny")
    if st.peer:
        progress("  careamics N2V")
        results.append(run_peer(a, st.real_budget_s, device, st.patch, valid=valid))
    s = Suite("real-lab6", "Real LaB6 frames thinned to 5 %",
              f"{len(st.real_frames)} Pilatus 300K-W frames (indices {list(st.real_frames)}, 2theta "
              f"{', '.join(f'{t:g}' for t in tth)} deg) of the SSRL LaB6 scan, columns {c0}-{c1} "
              f"(module gap included), binomially thinned to p={THIN_P} (input). Reference: the remaining "
              f"{1 - THIN_P:.0%} of the counts times p/(1-p), independent of the input. The full frames are "
              "themselves noisy (median about 5 counts), so the reference carries Poisson noise of variance "
              f"p/(1-p) = {THIN_P / (1 - THIN_P):.3f} times the input's; the 'ideal' row is the expected score "
              "of a perfect estimate against this reference (the ceiling no method can beat). 'PSNR sqrt vs "
              "mean, est.' subtracts that expected reference error from each row's: an estimate of the PSNR "
              "against the true mean (validated by simulation within 0.3 dB, tests/test_bench.py).")
    s.rows = _score_rows(results, ref, valid, prof)
    s.rows.append(_ideal_row(ref, var_ref, valid))
    _add_mean_corrected(s.rows)
    s.extra["curves"] = _curves(prof, results, a, ref, valid, float(tth[0]))
    return s


def flux_corrected(den: np.ndarray, a: np.ndarray, valid: np.ndarray, full_shape, cols, integrators,
                   window: int) -> np.ndarray:
    """``den`` (a copy) with the flux correction along the rings to the counts ``a``, frame by frame, with
    each frame's own geometry (``integrators``; columns ``cols`` of frames of ``full_shape``)."""
    from .physics.geometry import preserve_profile, ring_bins
    from .physics.masks import flux_outliers

    d = np.array(den, copy=True)
    for i in range(d.shape[0]):
        ai = integrators[min(i, len(integrators) - 1)]
        tth_map = np.asarray(ai.array_from_unit(shape=tuple(full_shape), typ="center", unit="2th_deg"))[:, cols[0]:cols[1]]
        v = valid[i] & np.isfinite(d[i])
        d[i] = preserve_profile(d[i], a[i], v, ring_bins(tth_map), window=window, exclude=flux_outliers(a[i], d[i], v))
    return d


def _preserved_profile_rows(results: list[Result], a: np.ndarray, valid: np.ndarray, full_shape, cols,
                            integrators) -> list[Result]:
    """The default method's output with the flux correction along the rings that ``denoise`` applies by
    default when a geometry or centre is given (``infer.preserve_profile``, window
    ``infer.profile_window``), using each frame's own goniometer geometry. It becomes the default row;
    the uncorrected output stays as the default without a geometry."""
    from .config import InferConfig

    r0 = next((r for r in results if r.default and r.den is not None), None)
    if r0 is None:
        return []
    window = InferConfig().profile_window
    t0 = time.perf_counter()
    d = flux_corrected(r0.den.reshape(a.shape), a, valid, full_shape, cols, integrators, window)
    r0.default = False
    r0.note = (r0.note + "; " if r0.note else "") + "the default without a geometry or centre"
    out = Result(f"{r0.name} + flux correction along the rings", d, r0.train_s,
                 r0.predict_s + time.perf_counter() - t0,
                 note=f"the default with a geometry (--poni) or centre: the row above corrected over windows of "
                      f"{window} ring bins to the counts' flux")
    out.default = True
    return [out]


def _curves(prof: Profiler, results: list[Result], a: np.ndarray, ref: np.ndarray, valid: np.ndarray,
            tth: float) -> dict[str, Any]:
    """Profiles of the first frame: reference, thinned input, default method, BM3D, careamics."""
    v = valid[0]
    curves = {}
    x, y, _ = prof.profile(0, ref[0], v)
    curves["reference"] = (x, y)
    x, y, _ = prof.profile(0, a[0], v)
    curves["thinned input (raw)"] = (x, y)
    for r in results:
        if r.den is None or not (r.default or r.name in ("BM3D-Anscombe", PEER, "gaussian (oracle sigma)")):
            continue
        d = r.den.reshape(ref.shape)[0]
        ok = v & np.isfinite(d)
        x, y, _ = prof.profile(0, d, ok)
        curves[r.name + (" (default)" if r.default else "")] = (x, y)
    return {"title": f"Azimuthal profile of a thinned LaB6 frame (detector at 2theta = {tth:g} deg)",
            "curves": curves}


def _mse_sqrt_poisson(mu: np.ndarray) -> np.ndarray:
    """``E[(sqrt(mu) - sqrt(R))^2]`` for ``R ~ Poisson(mu)``: the variance of ``sqrt(R)`` plus its
    (Jensen) bias squared, tabulated by exact sums and interpolated."""
    from scipy import stats

    grid = np.concatenate([[0.0], np.geomspace(1e-3, 400.0, 600)])
    k = np.arange(0, 800)
    pmf = stats.poisson.pmf(k[None], grid[:, None])
    e_sqrt = pmf @ np.sqrt(k)
    table = np.maximum(2.0 * grid - 2.0 * np.sqrt(grid) * e_sqrt, 0.0)
    mu = np.asarray(mu, dtype=np.float64)
    return np.where(mu > 400.0, 0.25, np.interp(mu, grid, table))


def _ideal_row(ref: np.ndarray, var_ref: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Expected score of the true mean against the noisy reference ``c R`` (``R`` Poisson, ``c = p/(1-p)``).

    Counts: ``E[(cR - c mu)^2] = c^2 mu``, estimated without bias by ``c^2 R`` (= ``var_ref``). Square
    roots: ``c E[(sqrt(mu) - sqrt(R))^2]``, with ``mu`` estimated by a local mean of ``R`` (sigma 1 px).
    Checked by simulation (Poisson frames drawn from a known mean, thinned to 5 %): within 0.03 dB of
    the true ceiling on real LaB6 ring shapes and on synthetic rings 1.2-3 px wide, where plugging ``R``
    itself in was 0.1-0.2 dB off (a ``sqrt`` of a few counts is strongly non-linear); wider smoothing
    (2 px) overshoots on sharp rings. :func:`mean_corrected` relies on this number.
    """
    ok = valid & np.isfinite(ref)
    mse_c = float(np.mean(var_ref[ok]))
    peak = float(np.max(ref[ok]))
    c = float(np.sum(var_ref[ok]) / max(np.sum(ref[ok]), 1e-12))  # var_ref = c * ref
    from .baselines import _normconv

    mu = _normconv(np.where(ok, ref, 0.0) / max(c, 1e-12), ok, 1.0, 2)  # local mean over valid pixels
    mse_s = float(np.mean(c * _mse_sqrt_poisson(mu[ok])))
    return {"method": IDEAL, "ok": True,
            "psnr_counts": 10 * math.log10(peak**2 / mse_c) if mse_c > 0 else math.inf,
            "psnr_sqrt": 10 * math.log10(peak / mse_s) if mse_s > 0 else math.inf,
            "ssim": math.nan, "profile_err": math.nan, "peak_pos": math.nan, "peak_area": math.nan,
            "train_s": math.nan, "predict_s": math.nan, "note": "reference-noise ceiling", "fills_invalid": None}


def mean_corrected(psnr_measured: float, psnr_ideal: float) -> float:
    """PSNR against the true mean, estimated from a PSNR against an independent noisy reference.

    The reference's noise is independent of any estimate, so the measured mean squared error is the
    error against the mean plus the reference's own expected error (the ideal row's): subtracting
    that gives an unbiased estimate. ``inf`` when the measured error is within the reference noise.
    """
    diff = 10 ** (-psnr_measured / 10) - 10 ** (-psnr_ideal / 10)
    return -10 * math.log10(diff) if diff > 0 else math.inf


def _add_mean_corrected(rows: list[dict[str, Any]]) -> None:
    ideal = next((r for r in rows if r["method"] == IDEAL), None)
    if ideal is None:
        return
    for r in rows:
        if r.get("ok") and r is not ideal and math.isfinite(r.get("psnr_sqrt", math.nan)):
            r["psnr_sqrt_mean"] = mean_corrected(r["psnr_sqrt"], ideal["psnr_sqrt"])
            # counts: exactly unbiased at any count level (E[(d - cR)^2] = (d - mu)^2 + c^2 mu for any d
            # independent of R); the square-root scale's correction is not below a few counts per pixel
            r["psnr_counts_mean"] = mean_corrected(r["psnr_counts"], ideal["psnr_counts"])


def _merlin_frames() -> tuple[np.ndarray, np.ndarray]:
    """The real Merlin 2x4 scan: ``(counts (8, 256, 256), valid)``; saturated pixels invalid."""
    from .io.readers import open_stack

    src = open_stack(MERLIN)
    raw = np.asarray(src.flat().compute())
    return raw, src.valid(raw)


def merlin_thinned(full: np.ndarray, valid: np.ndarray, source: str):
    """Counts of the Merlin scan's shape ``(8, H, W)`` thinned as the 4D-STEM suites thin them (``STEM_P``,
    seed 3): ``(input, reference, reference variance, input as the 2x4 ScanStack)``; invalid pixels are
    the uint32 sentinel in the stack."""
    from .io.stack import ScanStack

    a, ref, var_ref = thinned(full.astype(np.int64), valid, STEM_P, seed=3)
    a_u = np.where(valid, a, np.iinfo(np.uint32).max).astype(np.uint32).reshape((2, 4) + full.shape[1:])
    return a, ref, var_ref, ScanStack.from_array(a_u, frame_ndim=2, source=source)


def merlin_twin_mean(raw: np.ndarray, valid: np.ndarray, sigma: float = MERLIN_TWIN_SIGMA) -> np.ndarray:
    """A known mean for a simulated twin of the Merlin scan: the frames' common pattern (their mean over
    valid pixels, smoothed over valid pixels by a normalised Gaussian of ``sigma`` px) times each frame's
    own flux (its counts over the pixels valid in every frame, relative to the frames' average); 0 where
    a frame is invalid. The real frames support this model: each differs from their mean by a chi-square
    of 0.88-0.92 per pixel, 0.875 if their means were equal (docs/methods.md)."""
    from .baselines import _normconv

    ok = valid & np.isfinite(raw)
    c = np.where(ok, raw, 0.0).astype(np.float64)
    every = ok.all(0)
    flux = np.array([f[every].sum() for f in c])
    flux = flux / max(flux.mean(), 1e-12)
    seen = ok.any(0)
    common = c.sum(0) / np.maximum(ok.sum(0), 1)
    common = _normconv(common[None], seen[None], float(sigma), 2)[0]
    return np.where(ok, flux[:, None, None] * common[None], 0.0)


def stem_twin_suite(st: Settings, device: str, progress, draw: int) -> Suite | None:
    """A simulated twin of the Merlin scan with a known mean (one of two independent draws): the
    neighbour method, Noise2Self, the default and BM3D scored against the truth, and the real suite's
    'vs the mean, est.' column checked against it on the same data."""
    from .physics.binomial import adjacent_correlation
    from .synthetic import charge_shared_counts

    if not st.stem or not MERLIN.exists():
        return None
    progress(f"simulated twin of the Merlin scan, draw {draw}, thinned to {STEM_P:.0%}")
    raw, valid = _merlin_frames()
    lam = merlin_twin_mean(raw, valid)
    rho = float(np.mean(adjacent_correlation(raw, valid)))
    q = rho / (1.0 - 2.0 * rho)  # rho = q / (1 + 2 q)
    full = charge_shared_counts(lam, q, np.random.default_rng(MERLIN_TWIN_SEEDS[draw]))
    rho_sim = adjacent_correlation(full, valid)
    a, ref, var_ref, stack = merlin_thinned(full, valid, f"Merlin twin {draw}")
    truth = lam * STEM_P
    results = _project_results(stack, [m for m in _methods_for(stack, False, True) if m.lstrip("!") in
                                       ("n2s", "neighbors")], st.stem_budget, device, st, progress)
    results += [r for r in run_baselines(a, valid, truth, bm3d=st.name != "tiny") if r.name != "median 3x3"]
    for r in results:
        r.note = r.note.replace("chosen on the reference", "chosen on the truth")
    s = Suite(f"twin-stem-{draw}", f"Simulated twin of the Merlin scan (known mean), draw {draw}, thinned to 25 %",
              f"Truth: the 8 real frames' common pattern (smoothed over valid pixels, sigma {MERLIN_TWIN_SIGMA:g} "
              f"px) times each frame's flux, with the real frames' invalid pixels. Counts: events shared "
              f"with the right and lower pixel with probability q = {q:.3f}, the real detector's adjacent "
              f"correlation {rho:.3f} (this draw: {rho_sim[0]:.3f} / {rho_sim[1]:.3f} along y / x); seed "
              f"{MERLIN_TWIN_SEEDS[draw]}; thinned to p={STEM_P} exactly as the real suite. First columns: "
              f"scored against the truth. 'vs ref' and 'vs mean, est. from ref': scored as the real suite must "
              f"be, against the thinned-off {1 - STEM_P:.0%}, to show how far that estimate can be trusted here.")
    s.rows = _score_rows(results, truth, valid, None)
    ideal = _ideal_row(ref, var_ref, valid)
    for row, r in zip(s.rows, results):
        if r.den is not None:
            d = r.den.reshape(truth.shape)
            row["psnr_sqrt_ref"] = psnr(d, ref, valid, "sqrt")
            row["psnr_sqrt_ref_est"] = mean_corrected(row["psnr_sqrt_ref"], ideal["psnr_sqrt"])
            row["psnr_counts_ref"] = psnr(d, ref, valid, "counts")
            row["psnr_counts_ref_est"] = mean_corrected(row["psnr_counts_ref"], ideal["psnr_counts"])
    return s


def real_stem_suite(st: Settings, device: str, progress) -> Suite | None:
    """Real Merlin 4D-STEM 2x4 scan thinned to 25 %: the only real scan with a 2-D scan grid here."""
    from .physics.binomial import adjacent_correlation

    if not st.stem or not MERLIN.exists():
        return None
    progress(f"real Merlin 4D-STEM 2x4 scan thinned to {STEM_P:.0%}")
    raw, valid = _merlin_frames()
    a, ref, var_ref, stack = merlin_thinned(raw, valid, "Merlin thinned")
    rho = adjacent_correlation(raw, valid)
    lam = np.where(valid, raw, 0).sum(0) / np.maximum(valid.sum(0), 1)
    rho_sim = adjacent_correlation(np.random.default_rng(0).poisson(np.broadcast_to(lam, raw.shape)), valid)
    results = _project_results(stack, [m for m in _methods_for(stack, False, True) if m.lstrip("!") in
                                       ("n2s", "n2n-split", "neighbors", VARIANTS["neighbors"][0])],
                               st.stem_budget, device, st, progress)
    results += run_baselines(a, valid, ref, bm3d=st.name != "tiny")
    s = Suite("real-stem", "Real 4D-STEM scan (Merlin, 2x4 positions) thinned to 25 %",
              f"8 frames of 256x256 6-bit counts (saturated pixels invalid) from a 2x4 scan, thinned to "
              f"p={STEM_P}; reference: the other {1 - STEM_P:.0%} scaled, independent of the input only as far as "
              f"the counts are: this detector shares charge between adjacent pixels (count correlation of "
              f"adjacent pixels in the background {rho[0]:.3f} / {rho[1]:.3f} along y / x; a Poisson "
              f"simulation of the same mean {rho_sim[0]:.3f} / {rho_sim[1]:.3f}; docs/methods.md). Tiny "
              "scan: every position is on the scan border, so the neighbour method sees at most 3-5 neighbours.")
    s.rows = _score_rows(results, ref, valid, None)
    s.rows.append(_ideal_row(ref, var_ref, valid))
    _add_mean_corrected(s.rows)
    _more_seeds(s, "neighbors", stack, ref, valid, st, device, progress)
    return s


def _more_seeds(s: Suite, name: str, stack, ref: np.ndarray, valid: np.ndarray, st: Settings, device: str,
                progress) -> None:
    """Train ``name`` again with seeds 1 .. ``st.stem_trainings`` - 1 (same budget; its row is the
    training with seed 0, :func:`train_predict`'s) and record every seed's PSNR counts vs the mean (est.)
    in its row as ``seed_psnr_counts_mean`` ({seed: dB}); the goals
    judge the median over the seeds, since one training's luck moves this scan's score by a few tenths
    of a dB (docs/methods.md)."""
    row = _row(s, name)
    ideal = next((r for r in s.rows if r["method"] == IDEAL), None)
    if row is None or ideal is None or "psnr_counts_mean" not in row or st.stem_trainings < 2:
        return
    seeds = {0: row["psnr_counts_mean"]}
    for seed in range(1, st.stem_trainings):
        progress(f"  {name}, training seed {seed} ({st.stem_budget:g} s budget)")
        r = _safe(lambda: train_predict(name, stack, st.stem_budget, device, st, seed=seed), name, progress)
        if r.den is None:
            continue
        d = np.asarray(r.den, dtype=np.float64).reshape(ref.shape)
        seeds[seed] = mean_corrected(psnr(d, ref, valid, "counts"), ideal["psnr_counts"])
    row["seed_psnr_counts_mean"] = seeds
    row["note"] = (row.get("note", "") + "; PSNR counts vs mean, est., by training seed: "
                   + ", ".join(f"{k}: {_fmt(v)}" for k, v in seeds.items()) + f" (median {_fmt(_median(seeds))})")


def _median(seeds: dict[int, float]) -> float:
    return float(np.median(list(seeds.values())))


def xrf_suite(st: Settings, device: str, progress) -> Suite | None:
    from . import baselines
    from .io.stack import ScanStack

    path = REAL_DIR / "xrf_spectra" / "05_xrf_spectra.csv"
    if not path.exists():
        progress("XRF spectra not found: suite skipped")
        return None
    progress("real XRF spectra: first 4 of 32")
    tab = np.genfromtxt(path, delimiter=",")
    spectra = tab[1:, 1:-1]  # row 0: energies; column 0: index; last column: overflow bin
    if spectra.shape[0] != 32 or not np.isfinite(spectra).all():
        progress(f"{path}: unexpected layout {tab.shape}: XRF suite skipped")
        return None
    ref = spectra.mean(0)
    four = spectra[:4]
    stack = ScanStack.from_array(np.rint(four).astype(np.uint32), frame_ndim=1, source="XRF 4 spectra")
    res: list[Result] = [Result("one spectrum (raw)", four[0][None])]
    res.append(Result("mean of the 4 spectra", four.mean(0)[None]))
    for m in ("n2n-frames", "n2s", "n2v"):
        progress(f"  {m} ({st.xrf_budget_s:g} s budget)")
        r = _safe(lambda: train_predict(m, stack, st.xrf_budget_s, device, st,
                                        patch_size=min(1024, four.shape[1])), m, progress)
        if r.den is not None:
            r.den = np.nanmean(r.den, axis=0)[None]
            r.note += "; prediction = mean of the 4 denoised spectra"
        r.default = m == "n2n-frames"
        res.append(r)
    g, s = baselines.best_gaussian(four.mean(0)[None], None, ref[None], frame_ndim=1, sigmas=(1, 2, 3, 4, 6, 8, 12))
    res.append(Result("gaussian of the mean (oracle sigma)", g, note=f"sigma={s:g} channels, chosen on the reference"))
    res.append(Result("median 5 of the mean", baselines.median(four.mean(0)[None], None, 5, frame_ndim=1)))
    suite = Suite("xrf", "Real XRF spectra (4 of 32 repeats)",
                  "CEA-MetroCarac auto-denoise example: 32 repeated 0.1 s spectra, 4095 channels (index and "
                  "overflow columns dropped). Input: the first 4; reference: the mean of all 32 (itself noisy, "
                  "RMSE about 0.41). Each estimate is one spectrum, scored by RMSE per channel.", frame_ndim=1)
    for r in res:
        row = {"method": r.name + (" (default)" if r.default else ""), "train_s": r.train_s, "note": r.note,
               "ok": r.den is not None, "predict_s": r.predict_s}
        if r.den is not None:
            row.update(spectrum_metrics(np.asarray(r.den, dtype=np.float64).ravel(), ref))
        suite.rows.append(row)
    return suite


# --------------------------------------------------------------------------------------------------
# speed
# --------------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    info = {"cpu": cpu or "unknown", "cores": cores, "torch": torch.__version__, "python": platform.python_version(),
            "os": f"{platform.system()} {platform.release()}", "threads": _threads()}
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    from .devices import amp_dtype

    info["cpu_amp"] = "bfloat16 mixed" if amp_dtype(torch.device("cpu")) == torch.bfloat16 else "float32"
    try:
        info["load_start"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


def _speed_device(device: str, st: Settings, progress, peer: bool) -> dict[str, Any]:
    """Training patches/s, inference frames/s (512x512) and extrapolated full-scan time on one device."""
    import torch

    from .config import Config
    from .inference import predict_stack
    from .methods import resolve_auto
    from .synthetic import make_scan
    from .training import Trainer

    f = st.speed_frame
    sc = make_scan((st.speed_frames,), (f, f), dose="mid", seed=4)
    stack = sc.to_stack()
    default = resolve_auto(Config(), stack)
    out: dict[str, Any] = {"device": device, "method": default, "frame": f}
    patch = st.patch
    rates, fps = [], []
    model = None
    for rep in range(st.repeats):
        times: list[tuple[int, float]] = []

        def cb(ev):
            if ev.kind == "step":
                times.append((ev.step, time.perf_counter()))

        cfg = Config().replace(method__name=default, epochs=1, steps_per_epoch=st.speed_steps, device=device,
                               threads=_threads(), train__batch_size=8, patch_size=patch, val_fraction=0.0,
                               seed=rep, preview_every=0)
        model = Trainer(cfg, stack, callback=cb).run()
        if len(times) >= 2:
            (s0, t0), (s1, t1) = times[0], times[-1]
            rates.append((s1 - s0) * 8 / max(t1 - t0, 1e-9))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with _quiet(), torch.inference_mode():
            predict_stack(model, stack, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        fps.append(stack.n_frames / (time.perf_counter() - t0))
    out["train_patches_per_s"] = statistics.median(rates) if rates else math.nan
    out["train_patches_all"] = rates
    out["patch"] = patch
    out["infer_fps"] = statistics.median(fps)
    out["infer_fps_all"] = fps
    dc = Config().train
    n_patches = dc.epochs * dc.steps_per_epoch * dc.batch_size
    # the default training run uses patches of the default size: scale by pixels per patch
    px_rate = out["train_patches_per_s"] * patch * patch
    out["default_train_s"] = n_patches * dc.patch_size**2 / px_rate if px_rate > 0 else math.nan
    nfull = FULL_SCAN[0] * FULL_SCAN[1]
    out["full_scan_infer_s"] = nfull / out["infer_fps"]
    out["full_scan_s"] = out["default_train_s"] + out["full_scan_infer_s"]
    out["n_params"] = int(sum(p.numel() for p in model.net.parameters())) if model is not None else 0
    if peer:
        progress(f"  careamics N2V on {device}")
        frames, _ = stack.counts(np.asarray(stack.flat().compute()))
        prs = []
        for rep in range(int(st.extra.get("peer_repeats", min(st.repeats, 3)))):
            r = run_peer(frames, max(5.0, st.speed_steps * 0.5), device, patch)
            if r.den is None:
                out["peer_note"] = r.note
                break
            prs.append(r.stats)
        if prs:
            out["peer_train_patches_per_s"] = statistics.median([p["train_patches_per_s"] for p in prs])
            out["peer_infer_fps"] = statistics.median([p["predict_frames_per_s"] for p in prs])
            out["peer_n_params"] = prs[0]["n_params"]
            out["peer_patch"] = prs[0]["patch"]
            out["peer_infer_all"] = [p["predict_frames_per_s"] for p in prs]
    return out


def memory_suite(st: Settings, progress) -> dict[str, Any] | None:
    """Peak RSS of a child process that streams stacks of growing size through training and prediction."""
    if not st.memory_frames or not MEMORY_SCRIPT.exists():
        return None
    rows = []
    for n in st.memory_frames:
        progress(f"memory: streaming {n} frames of 512x512")
        code = _MEMORY_CHILD.format(script=str(MEMORY_SCRIPT), size_gb=n * 512 * 512 * 4 / 1e9 + 1e-6)
        env = dict(os.environ)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
        if p.returncode != 0:
            rows.append({"frames": n, "note": "failed: " + (p.stderr.strip().splitlines() or ["?"])[-1][:160]})
            continue
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    return {"rows": rows}


_MEMORY_CHILD = r"""
import importlib.util, json, os, resource, shutil, sys, tempfile, time
import numpy as np, torch
torch.set_num_threads(1)
from napari_xrd_denoise.config import Config
from napari_xrd_denoise.io.readers import open_stack
from napari_xrd_denoise.training import Trainer
from napari_xrd_denoise.inference import predict_stack
spec = importlib.util.spec_from_file_location("memory_stream", {script!r})
ms = importlib.util.module_from_spec(spec); spec.loader.exec_module(ms)
d = tempfile.mkdtemp()
src = os.path.join(d, "big.h5")
n, _ = ms.write_stack(__import__("pathlib").Path(src), {size_gb!r}, 512, 0.5)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stack = open_stack(src)
cfg = Config().replace(method__name="n2s", epochs=1, steps_per_epoch=2, patch_size=64, device="cpu",
                       threads=1, width=4, depth=1, val_fraction=0.0, preview_every=0)
model = Trainer(cfg, stack).run()
t0 = time.perf_counter()
predict_stack(model, stack, os.path.join(d, "out.h5"))
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
size = n * 512 * 512 * 4
print(json.dumps(dict(frames=n, input_mib=size / 2**20, peak_rss_mib=peak / 1024,
                      rss_before_stack_mib=base / 1024, predict_s=dt, fps=n / dt)))
shutil.rmtree(d, ignore_errors=True)
"""


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "-" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if v != 0 and (abs(v) < 10 ** (-nd) or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.{nd}f}"
    return str(v)


def _suite_table(s: Suite) -> list[str]:
    if s.frame_ndim == 1:
        head = ["method", "RMSE / channel", "PSNR sqrt (dB)", "PSNR counts (dB)", "peak pos err (ch)",
                "peak area err", "train s", "notes"]
        keys = ["rmse", "psnr_sqrt", "psnr_counts", "peak_pos", "peak_area", "train_s"]
    else:
        head = ["method", "PSNR sqrt (dB)", "PSNR counts (dB)", "SSIM sqrt", "profile rel err",
                "peak pos err (deg)", "peak area err", "invalid filled", "train s", "predict s", "notes"]
        keys = ["psnr_sqrt", "psnr_counts", "ssim", "profile_err", "peak_pos", "peak_area", "fills_invalid",
                "train_s", "predict_s"]
        if any("psnr_sqrt_mean" in r for r in s.rows):
            head.insert(2, "PSNR sqrt vs mean, est. (dB)")
            keys.insert(1, "psnr_sqrt_mean")
        if any("psnr_counts_mean" in r for r in s.rows):
            at = head.index("PSNR counts (dB)") + 1
            head.insert(at, "PSNR counts vs mean, est. (dB)")
            keys.insert(at - 1, "psnr_counts_mean")
        if any("psnr_sqrt_ref" in r for r in s.rows):
            head[3:3] = ["PSNR sqrt vs ref (dB)", "vs mean, est. from ref (dB)", "PSNR counts vs ref (dB)",
                         "counts vs mean, est. from ref (dB)"]
            keys[2:2] = ["psnr_sqrt_ref", "psnr_sqrt_ref_est", "psnr_counts_ref", "psnr_counts_ref_est"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in s.rows:
        if not r.get("ok"):
            lines.append("| " + " | ".join([r["method"]] + ["-"] * len(keys) + [r.get("note", "")]) + " |")
            continue
        nds = {"ssim": 3, "profile_err": 3, "peak_pos": 3, "peak_area": 3, "rmse": 3, "train_s": 1, "predict_s": 2}
        cells = [_fmt(r.get(k), nds.get(k, 2)) for k in keys]
        lines.append("| " + " | ".join([r["method"]] + cells + [r.get("note", "")]) + " |")
    return lines


def _row(s: Suite | None, name: str) -> dict | None:
    if s is None:
        return None
    for r in s.rows:
        if r["method"] == name or r["method"] == name + " (default)":
            return r if r.get("ok") else None
    return None


def _default_row(s: Suite | None) -> dict | None:
    if s is None:
        return None
    for r in s.rows:
        if r["method"].endswith("(default)"):
            return r if r.get("ok") else None
    return None


def twin_checked(stem: Suite | None, twins: list[Suite], x_name: str, y_name: str,
                 margin: float) -> tuple[str, str] | None:
    """(measured, verdict) of "``x_name`` beats ``y_name``" (by ``margin`` dB or more; by anything when
    ``margin`` is 0) on the real Merlin scan, judged on PSNR counts against the mean estimated from the
    thinned reference, an estimate that is unbiased whatever the counts but not proof against the
    detector's charge sharing. So the same estimate is first judged on every simulated twin, where the
    truth is known: the real verdict stands only if, on every draw, the estimate gave the truth's
    verdict (PSNR counts vs truth); otherwise the row reads "undecided". None when the rows are missing."""
    x, y = _row(stem, x_name), _row(stem, y_name)
    if not (x and y and "psnr_counts_mean" in x and "psnr_counts_mean" in y):
        return None

    def meets(g: float) -> bool:
        return g >= margin if margin > 0 else g > 0

    seeds = x.get("seed_psnr_counts_mean")
    xv = _median(seeds) if seeds else x["psnr_counts_mean"]
    gap = xv - y["psnr_counts_mean"]
    text = (f"{_fmt(xv)} vs {_fmt(y['psnr_counts_mean'])} dB ({gap:+.2f} dB) on counts against the mean (est.)"
            + (f", the median of {len(seeds)} trainings (seeds " + ", ".join(map(str, seeds)) + ": "
               + " / ".join(_fmt(v) for v in seeds.values()) + " dB)" if seeds else "")
            + f"; square roots: {_fmt(x.get('psnr_sqrt_mean'))} vs {_fmt(y.get('psnr_sqrt_mean'))} dB")
    wrong, seen = [], []
    for i, t in enumerate(twins):
        tx, ty = _row(t, x_name), _row(t, y_name)
        if not (tx and ty and "psnr_counts_ref_est" in tx and "psnr_counts_ref_est" in ty):
            continue
        truth = tx["psnr_counts"] - ty["psnr_counts"]
        est = tx["psnr_counts_ref_est"] - ty["psnr_counts_ref_est"]
        seen.append(f"draw {i}: truth {truth:+.2f} dB, estimate {est:+.2f} dB")
        if not (math.isfinite(est) and meets(truth) == meets(est)):
            wrong.append(i)
    if seen:
        text += "; twins (counts): " + "; ".join(seen)
    if not math.isfinite(gap):
        return text, "undecided (an estimate is within the reference's noise)"
    if not seen:
        return text + "; no simulated twin to check the estimate", "undecided (not checked on a twin)"
    if wrong:
        return text, "undecided (the estimate misjudged twin draw " + ", ".join(map(str, wrong)) + ")"
    return text, "MET" if meets(gap) else "NOT MET"


def goals(suites: dict[str, Suite], speed: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(goal, measured, verdict) for each goal in the issues."""
    out = []

    def verdict(ok: bool | None) -> str:
        return "n/a (not measured)" if ok is None else ("MET" if ok else "NOT MET")

    real = suites.get("real-lab6")
    d = _default_row(real)
    b = _row(real, "BM3D-Anscombe")
    p = _row(real, PEER)

    def vs(x: dict, y: dict, what: str) -> tuple[str, bool]:
        if "psnr_sqrt_mean" in x and "psnr_sqrt_mean" in y:
            diff = x["psnr_sqrt_mean"] - y["psnr_sqrt_mean"]
            return (f"{what}{_fmt(x['psnr_sqrt_mean'])} dB vs {_fmt(y['psnr_sqrt_mean'])} dB ({diff:+.2f} dB) against "
                    f"the mean; against the noisy reference {_fmt(x['psnr_sqrt'])} vs {_fmt(y['psnr_sqrt'])} dB",
                    diff >= 1.0)
        diff = x["psnr_sqrt"] - y["psnr_sqrt"]
        return f"{what}{_fmt(x['psnr_sqrt'])} dB vs {_fmt(y['psnr_sqrt'])} dB ({diff:+.2f} dB)", diff >= 1.0

    if d and b:
        text, ok = vs(d, b, f"{d['method']}: ")
        out.append(("default method >= BM3D-Anscombe + 1 dB (thinned real LaB6, PSNR sqrt vs the mean, est.)",
                    text, verdict(ok)))
    else:
        out.append(("default method >= BM3D-Anscombe + 1 dB (thinned real)", "missing rows", verdict(None)))
    if d and p:
        text, ok = vs(d, p, "")
        out.append(("default method >= careamics N2V + 1 dB at equal time (thinned real LaB6, PSNR sqrt vs the mean, est.)",
                    text, verdict(ok)))
    else:
        out.append(("default method >= careamics N2V + 1 dB at equal time (thinned real)",
                    "careamics not run" if not p else "default row missing", verdict(None)))
    raw = _row(real, "raw")
    if d and raw:
        ok = d["profile_err"] <= raw["profile_err"]
        out.append(("azimuthal profile error <= raw (thinned real LaB6, default method)",
                    f"{_fmt(d['profile_err'], 4)} vs raw {_fmt(raw['profile_err'], 4)}", verdict(ok)))
    synth = [(k, v) for k, v in suites.items() if k.startswith("synthetic-")]
    checks = []
    for k, s in synth:
        sd, sb, sg, sr = _default_row(s), _row(s, "BM3D-Anscombe"), _row(s, "gaussian (oracle sigma)"), _row(s, "raw")
        if sd and sb and sg and sr:
            checks.append((k.split("-", 1)[1], sd, sb, sg, sr))
    if checks:
        out.append(("default method >= BM3D-Anscombe + 1 dB and > the oracle Gaussian (synthetic suites, PSNR sqrt vs truth)",
                    "; ".join(f"{dose}: {_fmt(sd['psnr_sqrt'])} vs {_fmt(sb['psnr_sqrt'])} "
                              f"({sd['psnr_sqrt'] - sb['psnr_sqrt']:+.2f} dB), Gaussian {_fmt(sg['psnr_sqrt'])}"
                              for dose, sd, sb, sg, _ in checks),
                    verdict(all(sd["psnr_sqrt"] - sb["psnr_sqrt"] >= 1.0 and sd["psnr_sqrt"] > sg["psnr_sqrt"]
                                for _, sd, sb, sg, _ in checks))))
        out.append(("azimuthal profile error <= raw (synthetic suites, default method)",
                    "; ".join(f"{dose}: {_fmt(sd['profile_err'], 4)} vs raw {_fmt(sr['profile_err'], 4)}"
                              for dose, sd, _, _, sr in checks),
                    verdict(all(sd["profile_err"] <= sr["profile_err"] for _, sd, _, _, sr in checks))))
    cpu = speed[0] if speed else None
    for sp in speed:
        if "peer_infer_fps" in sp:
            ratio = sp["infer_fps"] / sp["peer_infer_fps"]
            out.append((f"inference >= 2x careamics frames/s ({sp['device']}, {sp['frame']}x{sp['frame']})",
                        f"{_fmt(sp['infer_fps'])} vs {_fmt(sp['peer_infer_fps'])} frames/s (x{ratio:.2f})",
                        verdict(ratio >= 2.0)))
        elif sp is cpu:
            out.append(("inference >= 2x careamics frames/s", sp.get("peer_note", "careamics not run"), verdict(None)))
    x = suites.get("xrf")
    xd = _default_row(x)
    if xd:
        out.append(("XRF RMSE <= 0.80 (4 spectra, reference mean of 32)", f"{xd['method']}: {_fmt(xd['rmse'], 3)}",
                    verdict(xd["rmse"] <= 0.80)))
    else:
        out.append(("XRF RMSE <= 0.80", "default XRF method did not run", verdict(None)))
    stem = suites.get("real-stem")
    twins = [s for k, s in sorted(suites.items()) if k.startswith("twin-stem")]
    checked = twin_checked(stem, twins, "neighbors", "n2s", 0.0)
    if checked:
        out.append(("neighbour method beats single-frame Noise2Self on thinned real scans (Merlin 2x4, PSNR counts "
                    "vs the mean, est.; a verdict only where the same estimate gives the truth's verdict on every "
                    "simulated twin)", *checked))
    else:
        nb = _row(stem, "neighbors")
        note = "neighbour method not available" if stem is not None and nb is None else "no real 2-D scan suite"
        out.append(("neighbour method beats single-frame Noise2Self on thinned real scans", note, verdict(None)))
    syn = [s for k, s in suites.items() if k.startswith("synthetic")]
    wins, fills, seen = [], [], 0
    for s in syn:
        sy, n2 = _row(s, "symmetry"), _row(s, "n2s")
        if sy and n2:
            seen += 1
            wins.append(sy["psnr_sqrt"] > n2["psnr_sqrt"])
            fills.append(sy["fills_invalid"])
    if seen:
        ok = all(wins) and not any(fills)
        out.append(("symmetry beats Noise2Self on a beam-centred powder pattern with gaps, fills nothing in the gaps",
                    f"wins at {sum(wins)}/{seen} doses; invalid pixels filled: {'yes' if any(fills) else 'no'}",
                    verdict(ok)))
    else:
        out.append(("symmetry beats Noise2Self on a beam-centred pattern", "symmetry or n2s did not run", verdict(None)))
    for name in ("symmetry", "neighbors"):
        per = []
        for k, s in synth:
            r, sb, sr = _row(s, name), _row(s, "BM3D-Anscombe"), _row(s, "raw")
            if r and sb and sr:
                per.append((k.split("-", 1)[1], r, sb, sr))
        if per:
            out.append((f"{name} >= BM3D-Anscombe + 1 dB, profile error <= raw (synthetic suites, PSNR sqrt vs truth)",
                        "; ".join(f"{dose}: {_fmt(r['psnr_sqrt'])} vs {_fmt(sb['psnr_sqrt'])} "
                                  f"({r['psnr_sqrt'] - sb['psnr_sqrt']:+.2f} dB), profile {_fmt(r['profile_err'], 4)} "
                                  f"vs {_fmt(sr['profile_err'], 4)}" for dose, r, sb, sr in per),
                        verdict(all(r["psnr_sqrt"] - sb["psnr_sqrt"] >= 1.0 and r["profile_err"] <= sr["profile_err"]
                                    for _, r, sb, sr in per))))
    gaps = []  # (true gap on square roots, true gap on counts) of neighbours over BM3D, per twin draw
    for s in twins:
        tn, tb = _row(s, "neighbors"), _row(s, "BM3D-Anscombe")
        if tn and tb:
            gaps.append((tn["psnr_sqrt"] - tb["psnr_sqrt"], tn["psnr_counts"] - tb["psnr_counts"]))
    checked = twin_checked(stem, twins, "neighbors", "BM3D-Anscombe", 1.0)
    if checked:
        out.append(("neighbour method >= BM3D-Anscombe + 1 dB (Merlin 2x4, PSNR counts vs the mean, est.; a verdict "
                    "only where the same estimate gives the truth's verdict on every simulated twin)", *checked))
    if gaps:
        out.append(("neighbour method >= BM3D-Anscombe + 1 dB (simulated twins of the Merlin scan with its charge "
                    "sharing, every draw, PSNR sqrt vs truth)",
                    "; ".join(f"draw {i}: {t:+.2f} dB (on counts {c:+.2f} dB)" for i, (t, c) in enumerate(gaps)),
                    verdict(len(gaps) == len(twins) and all(t >= 1.0 for t, _ in gaps))))
    return out


def _plots(out_dir: Path, suites: list[Suite], speed: list[dict[str, Any]], extras: dict[str, Any],
           prefix: str = "bench_") -> list[str]:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = []
    img = [s for s in suites if s.frame_ndim == 2]
    if img:
        fig = Figure(figsize=(max(8, 2.2 * len(img)), 5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        methods: list[str] = []
        for s in img:
            for r in s.rows:
                m = r["method"].replace(" (default)", "")
                if r.get("ok") and m not in methods and not m.startswith("ideal"):
                    methods.append(m)
        w = 0.8 / max(1, len(methods))
        for j, m in enumerate(methods):
            vals = []
            for s in img:
                r = _row(s, m)
                vals.append(r["psnr_sqrt"] if r else np.nan)
            ax.bar(np.arange(len(img)) + j * w, vals, w, label=m, color=matplotlib.colormaps["tab20"](j % 20))
        ax.set_xticks(np.arange(len(img)) + 0.4 - w / 2, [s.key for s in img], rotation=0)
        ax.set_ylabel("PSNR on the square-root scale (dB)")
        lo = np.nanmin([r.get("psnr_sqrt", np.nan) for s in img for r in s.rows if r.get("ok")] + [0])
        ax.set_ylim(max(0, lo - 3), None)
        ax.legend(fontsize=7, ncol=3)
        ax.set_title("Quality: PSNR (sqrt scale) per data set")
        fig.savefig(out_dir / f"{prefix}quality.png", dpi=90)
        names.append(f"{prefix}quality.png")
    prof = extras.get("profile_plot")
    if prof:
        fig = Figure(figsize=(11, 5), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        for label, (x, y) in prof["curves"].items():
            ax.plot(x, y, lw=1 if label != "reference" else 1.8, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("2theta (deg)")
        ax.set_ylabel("mean counts per pixel")
        ax.set_title(prof["title"])
        ax.legend(fontsize=8)
        fig.savefig(out_dir / f"{prefix}profiles.png", dpi=90)
        names.append(f"{prefix}profiles.png")
    if speed:
        fig = Figure(figsize=(8, 4), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots(1, 2)
        labels, ours, peer = [], [], []
        for sp in speed:
            labels.append(sp["device"])
            ours.append((sp["train_patches_per_s"] * sp["patch"] ** 2 / 1e6, sp["infer_fps"]))
            peer.append((sp.get("peer_train_patches_per_s", np.nan) * sp.get("peer_patch", 0) ** 2 / 1e6,
                         sp.get("peer_infer_fps", np.nan)))
        x = np.arange(len(labels))
        fr = speed[0]["frame"]
        for k, title in enumerate(("training (Mpixel/s of patches)", f"inference ({fr}x{fr} frames/s)")):
            ax[k].bar(x - 0.2, [o[k] for o in ours], 0.4, label="napari-xrd-denoise")
            ax[k].bar(x + 0.2, [p[k] for p in peer], 0.4, label="careamics N2V")
            ax[k].set_xticks(x, labels)
            ax[k].set_title(title)
        ax[0].legend(fontsize=8)
        fig.savefig(out_dir / f"{prefix}speed.png", dpi=90)
        names.append(f"{prefix}speed.png")
    return names


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "-"


def write_markdown(path: Path, command: str, st: Settings, info: dict, suites: list[Suite], speed: list[dict],
                   memory: dict | None, goal_rows: list, plots: list[str], elapsed: float) -> Path:
    from .io.atomic import atomic_write_text

    L = [f"# Benchmarks ({st.name} run)", "", "Produced by:", "", "```", command, "```", "",
         f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
         f"- machine: {info['cpu']}, {info['cores']} cores" + (f", {info['memory_gib']} GiB RAM" if "memory_gib" in info else "")
         + (f", GPU {info['gpu']}" if "gpu" in info else ", no GPU"),
         f"- software: Python {info['python']}, torch {info['torch']}, {info['os']}; torch threads {info['threads']}; CPU training precision: {info.get('cpu_amp', 'float32')}",
         f"- settings: training budget {st.budget_s:g} s per method (synthetic), {st.real_budget_s:g} s (real LaB6), "
         f"{st.stem_budget:g} s (Merlin 4D-STEM, real and twins), {st.xrf_budget_s:g} s (XRF); patch {st.patch}, "
         f"batch 8; the same budget for the careamics peer; the neighbour method on the real Merlin scan trained "
         f"with seed{'s' if st.stem_trainings > 1 else ''} {', '.join(map(str, range(st.stem_trainings)))}"
         + (" (its goals judge the median)" if st.stem_trainings > 1 else ""),
         f"- wall time of this run: {elapsed / 60:.1f} min; CPU load average (1 min) at start "
         f"{info.get('load_start', '-')}, at end {_load()} (timings are only comparable on an otherwise idle "
         "machine; ratios against careamics are measured side by side in the same run)", "",
         "Every number below was measured in this run. Rows that could not run say why; no number is "
         "copied or estimated except where marked *extrapolated*.", "",
         "Metrics: PSNR on the square-root scale (peak = the reference maximum; the scale that weighs five "
         "decades of intensity evenly) and on counts, over valid pixels only; SSIM of square roots "
         "(skimage, averaged over valid pixels); azimuthal profile relative L2 error and the mean position "
         "and relative area errors of the main peaks of the profile (pyFAI, 2theta, same valid pixels for "
         "estimate and reference); 'invalid filled' = the output has values at invalid pixels (it must not).",
         ""]
    L += ["## Goals", "", "| goal | measured | verdict |", "|---|---|---|"]
    L += [f"| {g} | {m} | {v} |" for g, m, v in goal_rows]
    L += ["", f"{'Quick and tiny runs train for seconds only: their verdicts are not the project verdicts. ' if st.name != 'full' else ''}"
          "The default method is what `--method auto` chooses for the data (marked '(default)').", ""]
    L += ["## Quality", ""]
    for s in suites:
        L += [f"### {s.title}", "", s.description, ""] + _suite_table(s) + [""]
    if plots:
        L += [f"![{p}]({p})" for p in plots if not p.endswith("speed.png")] + [""]
    L += ["## Speed", ""]
    if speed:
        fr = speed[0]["frame"]
        L += [f"| device | method | train patches/s (patch) | careamics patches/s (patch) | infer frames/s {fr}x{fr} | "
              "careamics frames/s | ratio infer | params (ours / careamics) | 141x121 scan, extrapolated |",
              "|---|---|---|---|---|---|---|---|---|"]
        for sp in speed:
            pr = sp.get("peer_infer_fps")
            L.append(
                f"| {sp['device']} | {sp['method']} | {_fmt(sp['train_patches_per_s'], 1)} ({sp['patch']}) | "
                f"{_fmt(sp.get('peer_train_patches_per_s'), 1)} ({sp.get('peer_patch', '-')}) | "
                f"{_fmt(sp['infer_fps'], 2)} | {_fmt(pr, 2)} | {_fmt(sp['infer_fps'] / pr, 2) if pr else '-'} | "
                f"{sp['n_params']} / {sp.get('peer_n_params', '-')} | "
                f"{_fmt(sp['full_scan_s'] / 3600, 2)} h (train {_fmt(sp['default_train_s'] / 60, 1)} min + "
                f"infer {_fmt(sp['full_scan_infer_s'] / 3600, 2)} h) |")
        L += ["", "Training rate: median over repeats of optimiser steps x batch 8 per second, timed between "
              "training-step events (data loading included, model set-up excluded); careamics: its optimiser "
              "steps x batch 16 per second over its whole budgeted training (validation included). Inference: "
              "median over repeats of whole-stack `predict_stack` (reading, normalising, network, exact inverse) "
              "/ careamics `predict` on the same frames. The 141x121 scan time is extrapolated: the default "
              "training run (20 epochs x 50 steps x batch 8 at the default patch 96, scaled from the measured "
              "pixel rate) plus 17,061 frames at the measured frames/s.", ""]
        for sp in speed:
            if sp.get("peer_note"):
                L.append(f"- careamics on {sp['device']}: {sp['peer_note']}")
            L.append(f"- {sp['device']}: repeats, training patches/s {', '.join(_fmt(v, 1) for v in sp['train_patches_all'])};"
                     f" inference frames/s {', '.join(_fmt(v, 2) for v in sp['infer_fps_all'])}")
        L.append("")
    if memory:
        L += ["### Memory while streaming", "",
              "A child process writes a stack of 512x512 uint32 frames (bitshuffle-LZ4 HDF5, with the writer of "
              "`benchmarks/memory_stream.py`), trains a small Noise2Self model on it for two steps and streams the whole "
              "stack through `predict_stack` into an HDF5 output. Peak RSS is the child's `ru_maxrss` (torch "
              "and the model included). If it does not grow with the stack, the stack is never held in memory: "
              "a stack larger than any memory limit above that peak can be denoised.", "",
              "| frames | stack MiB | peak RSS MiB | peak RSS / stack | predict s | frames/s | note |",
              "|---|---|---|---|---|---|---|"]
        for r in memory["rows"]:
            ratio = r["peak_rss_mib"] / r["input_mib"] if r.get("input_mib") else None
            L.append(f"| {r['frames']} | {_fmt(r.get('input_mib'), 0)} | {_fmt(r.get('peak_rss_mib'), 0)} | "
                     f"{_fmt(ratio, 2)} | {_fmt(r.get('predict_s'), 1)} | {_fmt(r.get('fps'), 1)} | {r.get('note', '')} |")
        L.append("")
    for p in plots:
        if p.endswith("speed.png"):
            L += [f"![{p}]({p})", ""]
    L += ["## Caveats", "",
          "- The thinned-real reference is the held-out 95 % of the counts: independent of the input, but "
          "noisy; the 'ideal' row gives the expected PSNR of a perfect estimate against it. Against that "
          "reference no estimate can score above the ideal row, so differences between good estimates shrink "
          "(at 5 % of LaB6 'BM3D + 1 dB' would lie above the ceiling); the LaB6 goals are therefore judged on "
          "'PSNR sqrt vs mean, est.', which removes the reference's expected error (unbiased where the reference "
          "has a few counts per pixel or more, as there: the reference noise is independent of every estimate).",
          "- At a fraction of a count per pixel (the Merlin scan) the square-root correction is biased "
          "(docs/methods.md); the Merlin goals are judged on 'PSNR counts vs mean, est.', whose correction is "
          "exact at any count level, and a verdict stands only where the same estimate gave the truth's verdict "
          "on both simulated twins (the detector's charge sharing correlates the input with the reference, "
          "which no correction removes); otherwise the row reads 'undecided'.",
          "- Training budgets are wall-clock: a slower CPU, or one without bfloat16 instructions (it trains in "
          "float32), fits fewer epochs in the same budget, so the trained methods' numbers, and verdicts within a "
          "few tenths of a dB of a goal, depend on the machine; each model's epochs (careamics: its steps) are in its row's note.",
          "- The oracle Gaussian chooses its width on the reference: an upper bound for a Gaussian filter.",
          "- careamics N2V gets the preprocessing BM3D gets: the Anscombe transform (invalid pixels filled "
          "from valid neighbours, since it has no mask; its output there is kept, hence 'invalid filled') and "
          "the exact unbiased inverse of its output; otherwise its defaults (U-Net depth 2, 32 channels, its "
          "own normalisation, validation and N2V masking), for the same wall-clock time. Its speed is "
          "measured on the same frames.",
          "- XRF: careamics N2V and BM3D are 2D methods and are not run on spectra.", ""]
    atomic_write_text(path, "\n".join(L) + "\n")
    os.chmod(path, 0o644)  # a temporary file is created private; the report is a document
    return path


# --------------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------------
def run_bench(quick: bool = False, device: str = "auto", out_dir: Path = Path("docs"),
              progress: Callable[[str], None] = print, *, _tiny: bool = False, peer: bool | None = None,
              command: str | None = None) -> Path:
    """Run the quality and speed suites and write ``out_dir/benchmarks.md`` and ``out_dir/bench_*.png``
    (``--quick``: ``benchmarks-quick.md`` and ``bench-quick_*.png``, so a quick run never overwrites the
    full run's report or its plots)."""
    import torch

    from .devices import resolve_device

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        if not out_dir.parent.is_dir() or out_dir.exists():
            raise XRDError(f"{out_dir}: output folder does not exist (--out)")
        out_dir.mkdir()  # a new folder for the tables and plots, in an existing one
    st = settings_for(quick, _tiny)
    if peer is not None:
        st.peer = bool(peer)
    dev, _ = resolve_device(device)
    qdev = str(dev)
    if command is None:
        command = "xrd-denoise bench" + (" --quick" if quick else "") + (f" --device {device}" if device != "auto" else "") \
            + f" --out {out_dir}"
        if _tiny:
            command = f"napari_xrd_denoise.bench.run_bench(_tiny=True, out_dir={str(out_dir)!r})"
    info = machine_info()
    progress(f"bench ({st.name}) on {info['cpu']} ({info['cores']} cores), quality device {qdev}")
    torch_threads = torch.get_num_threads()
    suites: list[Suite] = []
    cache: dict[str, Any] = {}
    try:
        suites += synthetic_suite(st, qdev, progress)
        real = real_lab6_suite(st, qdev, progress)
        if real is not None:
            suites.append(real)
            cache["profile_plot"] = real.extra.get("curves")
        stem = real_stem_suite(st, qdev, progress)
        if stem is not None:
            suites.append(stem)
        for draw in range(len(MERLIN_TWIN_SEEDS)):
            twin = stem_twin_suite(st, qdev, progress, draw)
            if twin is not None:
                suites.append(twin)
        xrf = xrf_suite(st, qdev, progress)
        if xrf is not None:
            suites.append(xrf)
        speed = []
        # CPU always; the GPU too when there is one, unless the run was asked to stay on the CPU
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and dev.type != "cpu" else [])
        for d in devices:
            progress(f"speed on {d}")
            speed.append(_speed_device(d, st, progress, st.peer))
        memory = memory_suite(st, progress)
    finally:
        torch.set_num_threads(torch_threads)
    by_key = {s.key: s for s in suites}
    goal_rows = goals(by_key, speed)
    plots = _plots(out_dir, suites, speed, cache, prefix="bench-quick_" if quick else "bench_")
    path = write_markdown(out_dir / ("benchmarks-quick.md" if quick else "benchmarks.md"), command, st, info, suites, speed, memory, goal_rows, plots,
                          time.perf_counter() - t_start)
    progress(f"wrote {path} in {(time.perf_counter() - t_start) / 60:.1f} min")
    return path
