"""``xrd-denoise``: the command line over the same engine and Config as the napari widgets.

Exit codes: 0 success; 2 bad input (one line on stderr naming the file, dataset or parameter);
130 interrupted (training keeps its last checkpoint); 1 unexpected internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, parse_center, parse_shape
from .errors import XRDError

PROG = "xrd-denoise"

# CLI flag -> (config section, key, converter)
_FLAGS: dict[str, tuple[str, str, Any]] = {
    "dataset": ("data", "dataset", str),
    "scan_shape": ("data", "scan_shape", parse_shape),
    "ndim": ("data", "ndim", int),
    "crop": ("data", "crop", None),
    "mask": ("data", "mask_file", str),
    "keep_negatives": ("data", "keep_negatives", bool),
    "saturation": ("data", "saturation", float),
    "transform": ("data", "transform", str),
    "method": ("method", "name", str),
    "loss": ("method", "loss", str),
    "mask_width": ("method", "mask_width", int),
    "center": ("method", "center", parse_center),
    "poni": ("method", "poni", str),
    "symmetry": ("method", "symmetry", str),
    "mirror_angle": ("method", "mirror_angle", float),
    "neighbors": ("method", "neighbors", int),
    "center_guard": ("method", "center_guard", float),
    "combine_n2s": ("method", "combine_n2s", bool),
    "combine_split": ("method", "combine_split", bool),
    "symmetrize": ("method", "symmetrize", bool),
    "partner_interp": ("method", "partner_interp", str),
    "warmup_epochs": ("method", "warmup_epochs", int),
    "cycles": ("method", "cycles", int),
    "fill_invalid": ("method", "fill_invalid", bool),
    "reference": ("method", "reference", str),
    "init_model": ("method", "init_model", str),
    "arch": ("model", "arch", str),
    "depth": ("model", "depth", int),
    "width": ("model", "width", int),
    "stem_width": ("model", "stem_width", int),
    "residual": ("model", "residual", bool),
    "epochs": ("train", "epochs", int),
    "steps": ("train", "steps_per_epoch", int),
    "batch_size": ("train", "batch_size", int),
    "patch_size": ("train", "patch_size", int),
    "lr": ("train", "lr", float),
    "seed": ("train", "seed", int),
    "device": ("train", "device", str),
    "threads": ("train", "threads", int),
    "max_minutes": ("train", "max_minutes", float),
    "amp": ("train", "amp", bool),
    "tile": ("infer", "tile", int),
    "infer_batch": ("infer", "batch_size", int),
    "j_invariant": ("infer", "j_invariant", bool),
    "tta": ("infer", "tta", bool),
    "split_passes": ("infer", "split_passes", int),
    "preserve_profile": ("infer", "preserve_profile", bool),
    "profile_window": ("infer", "profile_window", int),
}


def _crop(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.replace(":", ",").split(",")]
    except ValueError:
        raise XRDError(f"--crop={text!r} must be Y0,Y1,X0,X1 (or C0,C1 for spectra)") from None
    return vals


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="HDF5 dataset path, npz key or zip member of the detector data (default: found "
                                     "automatically)")
    g.add_argument("--scan-shape", help="scan grid of a flat stack, e.g. 141x121")
    g.add_argument("--ndim", type=int, choices=(1, 2), help="frame dimensionality: 2 for images, 1 for spectra")
    g.add_argument("--crop", type=_crop, help="Y0,Y1,X0,X1 half-open crop of each frame")
    g.add_argument("--mask", help="mask file (npy, npz, TIFF, EDF, HDF5; nonzero = excluded, as pyFAI/Dioptas)")
    g.add_argument("--keep-negatives", action="store_const", const=True,
                   help="keep negative values (background-subtracted data); default: negatives are invalid")
    g.add_argument("--saturation", type=float, help="counts at or above are invalid")
    g.add_argument("--poni", help="pyFAI PONI file (geometry, beam centre)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("method and training")
    g.add_argument("--method", help="auto, n2s, n2v, n2n-frames, n2n-split, supervised, symmetry, neighbors")
    g.add_argument("--loss", help="auto, mse (Anscombe scale) or poisson (counts)")
    g.add_argument("--mask-width", type=int, help="Noise2Self grid width")
    g.add_argument("--center", help="beam centre Y,X in pixels: the symmetry method's centre, and the rings of the "
                                     "flux correction for every method (default: the file's own or --poni's)")
    g.add_argument("--symmetry", choices=("friedel", "mirror"), help="symmetry operator")
    g.add_argument("--mirror-angle", type=float, help="mirror line angle in degrees")
    g.add_argument("--center-guard", type=float, help="pixels around the centre left out of the symmetry loss")
    g.add_argument("--partner-interp", choices=("linear", "cubic", "lanczos3"),
                   help="symmetry: interpolation of the partner image (default lanczos3)")
    g.add_argument("--symmetrize", action="store_const", const=True,
                   help="symmetry: average the prediction with its partner where both are valid")
    g.add_argument("--combine-n2s", action="store_const", const=True,
                   help="symmetry/neighbors: also blind-spot mask the input (Noise2Self)")
    g.add_argument("--combine-split", action="store_const", const=True,
                   help="symmetry/neighbors: input one binomial half of the frame (with its partner image / the "
                        "neighbours), target the other half (default: on for integer counts, neighbors with 1 cycle)")
    g.add_argument("--no-combine-split", dest="combine_split", action="store_const", const=False,
                   help="symmetry/neighbors: the plain form (partner image / neighbours only as the input)")
    g.add_argument("--neighbors", type=int, choices=(4, 8, 24), help="neighbour frames for the neighbors method")
    g.add_argument("--warmup-epochs", type=int, help="neighbors: MSE epochs before the Poisson loss")
    g.add_argument("--cycles", type=int, help="iterative refinement cycles (neighbors)")
    g.add_argument("--no-fill-invalid", dest="fill_invalid", action="store_const", const=False,
                   help="neighbors: feed invalid pixels of the input frames as the neutral 0 instead of filling "
                        "them from their valid surroundings")
    g.add_argument("--reference", help="paired high-SNR frames for --method supervised")
    g.add_argument("--init-model", help="fine-tune from this model file")
    g.add_argument("--arch", help="unet or dncnn")
    g.add_argument("--depth", type=int, help="U-Net depth")
    g.add_argument("--width", type=int, help="network width (channels of the first level)")
    g.add_argument("--stem-width", type=int,
                   help="U-Net: channels of the first convolution (0 = auto: twice the input channels, from --width to 4x --width)")
    g.add_argument("--residual", action="store_const", const=True,
                   help="the network adds its correction to its input (default: auto, decided by the method: off for "
                        "blind-spot methods, and for neighbors with the split half below a median count of 12)")
    g.add_argument("--no-residual", dest="residual", action="store_const", const=False,
                   help="the network predicts its output directly")
    g.add_argument("--epochs", type=int, help="training epochs (validation after each; the best is kept)")
    g.add_argument("--steps", type=int, help="optimiser steps per epoch")
    g.add_argument("--batch-size", type=int, help="patches per optimiser step")
    g.add_argument("--patch-size", type=int, help="training patch side in pixels (spectra: channels)")
    g.add_argument("--lr", type=float, help="learning rate (Adam, cosine schedule)")
    g.add_argument("--seed", type=int, help="random seed of the training")
    g.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--threads", type=int, help="torch threads (0: suited to the model and cores)")
    g.add_argument("--max-minutes", type=float, help="wall-clock budget for training, 0 = none (with --cycles: per cycle)")
    g.add_argument("--amp", action="store_const", const=True,
                   help="mixed-precision training: float16 on CUDA, bfloat16 on CPUs with native bfloat16 (default)")
    g.add_argument("--no-amp", dest="amp", action="store_const", const=False, help="train in float32 throughout")


def _add_infer_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--tile", type=int, help="tile size for large frames")
    g.add_argument("--infer-batch", type=int, help="frames per inference batch")
    g.add_argument("--j-invariant", action="store_const", const=True, help="J-invariant Noise2Self inference")
    g.add_argument("--tta", action="store_const", const=True, help="test-time augmentation: average over the 8 rotations/reflections of the frame")
    g.add_argument("--preserve-profile", action="store_const", const=True,
                   help="correct the result's flux along the rings to the counts' (needs --poni or a centre; "
                        "default: on when the rings are known: --poni, --center or the file's own centre; "
                        "else each 2D frame of integer counts keeps its total counts)")
    g.add_argument("--no-preserve-profile", dest="preserve_profile", action="store_const", const=False,
                   help="no flux correction: neither along the rings nor over the whole frame")
    g.add_argument("--profile-window", type=int,
                   help="ring bins (about 1 px each) per flux-correction window (default 5; 1 = exact raw profile)")
    g.add_argument("--split-passes", type=int,
                   help="n2n-split: passes averaged per frame, complementary halves, each in another orientation "
                        "(default 4; 0 = one full-frame pass, biased at a few counts per pixel)")


_NUMBER = r"(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"
#: values that start with a minus sign but are numbers or number lists (a beam centre off the detector,
#: ``--center -3.5,812``), not options
_NEGATIVE_VALUE = re.compile(rf"^-{_NUMBER}([,xX][-+]?{_NUMBER})*$")


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line naming the argument and where to look (not the whole usage text);
    values such as ``--center -3,512`` are read as values, not as options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Self-supervised denoising of X-ray diffraction scans.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="JSON config file (the same options; flags override it)")
        sp.add_argument("--debug", action="store_true", help="show tracebacks")
        sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    sp = sub.add_parser("info", help="describe a detector file (as the data options make it: what the denoiser sees)")
    sp.add_argument("input", help="detector file, folder of frames or file pattern")
    _add_data_options(sp)
    sp.add_argument("--debug", action="store_true", help="show tracebacks")

    sp = sub.add_parser("demo", help="denoise the bundled real sample scan and write a PNG comparison")
    sp.add_argument("-o", "--output-dir", default="xrd-denoise-demo", help="folder for the results")
    sp.add_argument("--epochs", type=int, help="training epochs (default: a short run)")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--overwrite", action="store_true", default=True,
                    help="accepted for symmetry with the other commands: the demo always replaces its own results")
    sp.add_argument("--debug", action="store_true", help="show tracebacks")
    sp.add_argument("-q", "--quiet", action="store_true", help="no progress output")

    spectra_note = ("The defaults shown are those of 2D frames; spectra (--ndim 1, CSV, MCA) have their own where "
                    "the option is not given (docs/cli.md).")
    sp = sub.add_parser("denoise", help="train on INPUT and denoise it in one go", epilog=spectra_note)
    sp.add_argument("input")
    sp.add_argument("-o", "--output", required=True, help="output file: .h5 (.nxs), .npy or .tif")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sp.add_argument("--qc", action="store_true", help="write a QC report (JSON and PNG) beside the output")
    sp.add_argument("--save-model", help="also save the trained model here")
    _add_data_options(sp)
    _add_train_options(sp)
    _add_infer_options(sp)
    common(sp)

    sp = sub.add_parser("train", help="train a model on INPUT", epilog=spectra_note)
    sp.add_argument("input")
    sp.add_argument("-m", "--model", required=True, help="model file to write (.pt)")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    sp.add_argument("--resume", action="store_true", help="continue from the model's checkpoint (MODEL.ckpt)")
    _add_data_options(sp)
    _add_train_options(sp)
    _add_infer_options(sp)
    common(sp)

    sp = sub.add_parser("predict", help="denoise INPUT with a trained model")
    sp.add_argument("input")
    sp.add_argument("-m", "--model", required=True, help="trained model file (.pt)")
    sp.add_argument("-o", "--output", required=True, help="output file: .h5 (.nxs), .npy or .tif")
    sp.add_argument("--overwrite", action="store_true", help="replace an existing output")
    sp.add_argument("--resume", action="store_true", help="continue a killed run from the frames already written")
    sp.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    sp.add_argument("--workers", type=int, default=0, help="run on a local dask cluster with N workers")
    sp.add_argument("--scheduler", help="address of an existing dask scheduler")
    sp.add_argument("--center", help="beam centre Y,X in pixels of these data (symmetry partner, flux correction "
                                     "along the rings; default: the file's own or --poni's, else the model's)")
    _add_data_options(sp)
    _add_infer_options(sp)
    common(sp)

    sp = sub.add_parser("bench", help="run the quality and speed benchmarks, write docs/benchmarks.md")
    sp.add_argument("--quick", action="store_true", help="small version, about 8 minutes on 2 idle CPU cores")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    sp.add_argument("--out", default="docs", help="folder for benchmarks.md and plots (--quick: benchmarks-quick.md, "
                                                 "bench-quick_*.png); the default, docs, is the repository's own "
                                                 "docs folder when run from its root: give another to keep those")
    sp.add_argument("--debug", action="store_true", help="show tracebacks")
    _with_defaults(p)
    return p


def _with_defaults(parser: argparse.ArgumentParser) -> None:
    """Append each option's default, from the Config the option sets, to its help text (``auto`` where
    the default is decided from the data), so that --help says what a run does without the option."""
    cfg = Config()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for sp in (sp for a in subs for sp in a.choices.values()):
        for act in sp._actions:
            entry = _FLAGS.get(act.dest)
            if entry is None or act.help is None or "default" in act.help or act.const is False:
                continue
            sec, key, _ = entry
            v = getattr(getattr(cfg, sec), key)
            if isinstance(v, bool) or v is None and act.const is True:
                shown = {True: "on", False: "off", None: "auto"}[v]
            elif v is None:
                shown = "auto" if key not in ("dataset", "scan_shape", "crop", "mask_file", "center", "poni",
                                              "reference", "init_model", "saturation", "ndim") else None
            else:
                shown = "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
            if shown is not None:
                act.help = f"{act.help} (default: {shown})"


def config_from_args(args: argparse.Namespace) -> Config:
    """Build the Config from ``--config`` and the flags given (flags win)."""
    cfg = Config.load(args.config) if getattr(args, "config", None) else Config()
    d = cfg.to_dict()
    chosen = set()
    for flag, (sec, key, conv) in _FLAGS.items():
        v = getattr(args, flag, None)
        if v is None:
            continue
        if conv is not None and conv is not bool and isinstance(v, str):
            v = conv(v)
        d[sec][key] = v
        chosen.add(f"{sec}.{key}")
    return Config.from_dict(d).with_chosen(chosen)


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal; in a log file (stderr not a terminal, as in batch
    jobs) plain lines, at most one every ``every`` seconds and the last, with the rate and the time left."""

    #: bars drawn now, closed before a message ends the command (Ctrl-C), so it stands on its own line
    active: list["_Progress"] = []

    def __init__(self, desc: str, quiet: bool = False, every: float = 10.0):
        self.desc, self.quiet, self.bar, self.every = desc, quiet, None, float(every)
        self._t0 = self._last = None
        self._start = 0
        _Progress.active.append(self)

    @classmethod
    def close_all(cls) -> None:
        for p in cls.active:
            if p.bar is not None and not p.bar.disable:  # an open bar (a finished one is disabled by close)
                with contextlib.suppress(Exception):
                    p.bar.close()
            p.bar = None
        cls.active.clear()

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        tqdm = None
        if _isatty(sys.stderr):
            try:
                from tqdm import tqdm
            except ImportError:  # pragma: no cover - tqdm is a dependency of our dependencies
                tqdm = None
        if tqdm is not None:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.desc, unit="frame", file=sys.stderr, leave=True)
            self.bar.n = done
            self.bar.refresh()
            if done >= total:
                self.bar.close()
            return
        now = time.monotonic()
        if self._t0 is None:  # the first call: the point a rate is measured from (a resumed run starts late)
            self._t0, self._start = now, done
        elif now - self._last < self.every and done < total:
            return
        self._last = now
        line = f"{self.desc}: {done}/{total} frames ({100.0 * done / max(total, 1):.0f} %)"
        if done > self._start and now > self._t0:
            rate = (done - self._start) / (now - self._t0)
            line += f", {rate:.3g} frames/s"
            if done < total:
                line += f", {_fmt_left((total - done) / rate)} left"
        print(line, file=sys.stderr, flush=True)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _fmt_left(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _train_printer(quiet: bool):
    def cb(ev) -> None:
        if quiet:
            return
        if ev.kind == "message":
            print(f"note: {ev.message}", file=sys.stderr)
        elif ev.kind == "start":
            print(f"training: {ev.message}" if ev.message else "training...", file=sys.stderr)
        elif ev.kind == "epoch":
            val = f" val {ev.val_loss:.4g}" if ev.val_loss is not None else ""
            eta = f", {ev.eta_s:.0f} s left" if ev.eta_s is not None else ""
            trn = f"{ev.train_loss:.4g}" if ev.train_loss is not None else "-"
            print(f"epoch {ev.epoch + 1}/{ev.epochs}: loss {trn}{val} ({ev.elapsed_s:.0f} s{eta})", file=sys.stderr)
        elif ev.kind == "cancelled":
            print("training stopped; keeping the best model so far", file=sys.stderr)

    return cb


def cmd_info(args: argparse.Namespace) -> int:
    from .io.info import describe, format_info
    from .io.readers import open_stack

    shape = parse_shape(args.scan_shape) if args.scan_shape else None
    stack = open_stack(args.input, dataset=args.dataset, scan_shape=shape, ndim=args.ndim, poni=args.poni,
                       mask=args.mask, keep_negatives=bool(args.keep_negatives), saturation=args.saturation)
    print(format_info(describe(stack.crop(args.crop))))
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from .api import denoise

    cfg = config_from_args(args)
    out = denoise(args.input, args.output, cfg, callback=_train_printer(args.quiet),
                  progress=_Progress("denoising", args.quiet), overwrite=args.overwrite, qc=args.qc,
                  model_path=args.save_model)
    if not args.quiet:
        print(f"wrote {out}")
        if args.qc:
            print(_qc_summary(Path(out)))
    return 0


def _qc_summary(out: Path) -> str:
    """One line from the QC report beside ``out``: how many frames its checks flag, and where to look."""
    import json

    rep = json.loads(out.with_name(out.name + ".qc.json").read_text())
    n, flagged = len(rep.get("flags", [])), list(rep.get("flagged_frames", []))
    png = out.with_name(out.name + ".qc.png")
    if not flagged:
        return f"qc: no frame flagged of {n} (residuals consistent with counting noise); {png.name}"
    first = ", ".join(str(i) for i in flagged[:5]) + (", ..." if len(flagged) > 5 else "")
    return (f"qc: {len(flagged)} of {n} frames flagged (frames {first}: residuals not counting noise alone, "
            f"docs/qc.md); see {png.name} and {out.name}.qc.json")


def cmd_train(args: argparse.Namespace) -> int:
    from .api import train

    cfg = config_from_args(args)
    model_path = Path(args.model)
    train(args.input, cfg, model_path=model_path, callback=_train_printer(args.quiet),
          resume=args.resume, overwrite=args.overwrite or args.resume)
    if not args.quiet:
        print(f"wrote {model_path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .api import load_model, predict

    cfg = config_from_args(args)
    model = load_model(args.model, device=args.device or "auto")
    out = predict(args.input, model, args.output, config=cfg, progress=_Progress("denoising", args.quiet),
                  overwrite=args.overwrite, resume=args.resume, workers=args.workers, scheduler=args.scheduler)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output_dir), epochs=args.epochs, device=args.device, quiet=args.quiet)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    path = run_bench(quick=args.quick, device=args.device, out_dir=Path(args.out))
    print(f"wrote {path}")
    return 0


COMMANDS = {
    "info": cmd_info,
    "denoise": cmd_denoise,
    "train": cmd_train,
    "predict": cmd_predict,
    "demo": cmd_demo,
    "bench": cmd_bench,
}


class _NoteFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        kind = "note" if record.levelno < logging.WARNING else record.levelname.lower()
        return f"{kind}: {record.getMessage()}"


def _log_to_stderr(quiet: bool) -> tuple[logging.Handler, int]:
    """The package's log records (notes, warnings) as one line each on stderr while a command runs;
    returns the handler and the logger's previous level, for :func:`main` to restore."""
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(_NoteFormatter())
    h.setLevel(logging.WARNING if quiet else logging.INFO)
    lg = logging.getLogger("napari_xrd_denoise")
    previous = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.INFO)
    return h, previous


def _interrupted(args: argparse.Namespace) -> str:
    """The line for Ctrl-C: what was kept and how to continue."""
    from .io.writers import part_path

    if args.command == "train" and getattr(args, "model", None):
        ckpt = Path(f"{args.model}.ckpt")
        if ckpt.is_file():
            return f"interrupted; the last checkpoint {ckpt} is kept (the same command with --resume continues from it)"
    output = getattr(args, "output", None)
    if output and args.command in ("predict", "denoise"):
        part = part_path(Path(output))
        if part.is_file():
            if args.command == "predict":
                return (f"interrupted; the frames already written are kept in {part} (the same command with "
                        "--resume continues from them)")
            for p in (part, part.with_name(part.name + ".json")):  # denoise cannot resume: leave nothing
                with contextlib.suppress(OSError):
                    p.unlink()
    return "interrupted"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    handler, level = _log_to_stderr(bool(getattr(args, "quiet", False)))
    try:
        return COMMANDS[args.command](args)
    except XRDError as e:
        if debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _Progress.close_all()
        print(f"{PROG}: {_interrupted(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (xrd-denoise info FILE | head): no message,
        with contextlib.suppress(Exception):  # but not a success either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 1
    except MemoryError:
        print(f"{PROG}: error: out of memory; try a smaller --infer-batch, --tile or --batch-size", file=sys.stderr)
        return 2
    except Exception as e:
        if debug:
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1
    finally:
        _Progress.active.clear()
        lg = logging.getLogger("napari_xrd_denoise")
        lg.removeHandler(handler)
        lg.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
