"""Python API: the same verbs as the command line (``train``, ``predict``, ``denoise``).

Every function takes a file path, a :class:`ScanStack` or a numpy array, plus a :class:`Config`
and/or keyword overrides (``epochs=5``, ``method="n2s"``, ``train__lr=1e-3``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .config import Config
from .errors import XRDError
from .io.atomic import RunLock
from .io.stack import ScanStack


def make_config(config: Config | dict | str | Path | None = None, **overrides: Any) -> Config:
    """A validated Config from a Config, a dict, a JSON file, or defaults, with keyword overrides.

    Always a new object: a Config passed in is copied, never changed (so one Config can serve
    several datasets)."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = Config.from_dict(config.to_dict()).with_chosen(config.chosen)
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    else:
        cfg = Config.load(config)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = cfg.replace(**overrides) if overrides else cfg
    return _absolute_paths(cfg)


_PATH_FIELDS = (("data", "mask_file"), ("method", "poni"), ("method", "reference"), ("method", "init_model"))


def _absolute_paths(cfg: Config) -> Config:
    """File names in ``cfg`` that exist relative to the working folder, made absolute, so that the
    configuration written beside an output (and into a model) replays from any folder."""
    for sec, key in _PATH_FIELDS:
        v = getattr(getattr(cfg, sec), key)
        if isinstance(v, (str, Path)) and v and not Path(v).is_absolute() and Path(v).exists():
            setattr(getattr(cfg, sec), key, str(Path(v).resolve()))
    return cfg


_MASK_KEYS = ("mask", "mask_file", "data__mask_file")


def _read_files(cfg: Config, *more: Any) -> tuple[str, ...]:
    """The other files a run reads (mask, PONI, reference frames, initial model, and ``more``, such as the
    model applied): like the input, never an output."""
    files = (cfg.data.mask_file, cfg.method.poni, cfg.method.reference, cfg.method.init_model, *more)
    return tuple(str(f) for f in files if isinstance(f, (str, os.PathLike)) and str(f))


def _check_output_arg(output: Any) -> None:
    """One line for an output that is not a path (a Config given where the output goes: ``denoise(src,
    cfg)``)."""
    if output is not None and not isinstance(output, (str, os.PathLike)):
        hint = "; pass a configuration as config=..." if isinstance(output, (Config, dict)) else ""
        raise XRDError(f"output: a file path or None, not {type(output).__name__}{hint}")


def _pop_mask_array(overrides: dict[str, Any]) -> np.ndarray | None:
    """An in-memory mask given as ``mask=array`` (nonzero = excluded, as in mask files): taken out of the
    keyword overrides (a Config holds file names only) and returned."""
    for k in _MASK_KEYS:
        v = overrides.get(k)
        if v is not None and not isinstance(v, (str, Path)):
            if not hasattr(v, "shape"):
                raise XRDError(f"{k}: a mask file name or an array (nonzero = excluded), not {type(v).__name__}")
            del overrides[k]
            return np.asarray(v)
    return None


def open_input(source: str | Path | ScanStack | np.ndarray, cfg: Config,
               mask: np.ndarray | None = None) -> ScanStack:
    """Open a file (lazily) or wrap an array, then apply the data options of ``cfg``; ``mask``: an
    in-memory mask (nonzero = excluded, the convention of mask files), combined with any other."""
    d = cfg.data
    if isinstance(source, ScanStack):
        stack = source.with_scan_shape(d.scan_shape) if d.scan_shape else source
        if d.ndim is not None and int(d.ndim) != stack.frame_ndim:
            raise XRDError(f"{stack.label}: the stack holds {stack.frame_ndim}D frames but data.ndim={d.ndim}: "
                           f"open it with ndim={d.ndim}")
        changes: dict[str, Any] = {}
        if d.saturation is not None and d.saturation != stack.saturation:
            changes["saturation"] = float(d.saturation)
        if d.keep_negatives and not stack.keep_negatives:
            changes["keep_negatives"] = True
        if changes:
            from dataclasses import replace

            stack = replace(stack, **changes)
        if d.mask_file:
            from .io.readers import load_mask

            stack = stack.with_mask(load_mask(d.mask_file, stack.frame_shape))
    elif isinstance(source, (str, Path)):
        from .io.readers import open_stack

        stack = open_stack(
            source,
            dataset=d.dataset,
            scan_shape=d.scan_shape,
            ndim=d.ndim,
            keep_negatives=d.keep_negatives,
            poni=cfg.method.poni,
            mask=d.mask_file,
            saturation=d.saturation,
        )
    else:
        arr = source
        if not hasattr(arr, "dtype") or not hasattr(arr, "shape"):
            raise XRDError(f"input of type {type(source).__name__} is not a file path, ScanStack or array")
        stack = ScanStack.from_array(arr, frame_ndim=d.ndim or 2, keep_negatives=d.keep_negatives, saturation=d.saturation)
        stack = stack.with_scan_shape(d.scan_shape) if d.scan_shape else stack
        if d.mask_file:
            from .io.readers import load_mask

            stack = stack.with_mask(load_mask(d.mask_file, stack.frame_shape))
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != stack.frame_shape:
            raise XRDError(f"mask shape {m.shape} does not match frame shape {stack.frame_shape} of {stack.label}")
        stack = stack.with_mask(~(m.astype(bool)) if m.dtype.kind != "f" else ~((m != 0) | ~np.isfinite(m)))
    if d.crop:
        stack = stack.crop(d.crop)
    stack.check_denoisable()
    if cfg.method.center is None and stack.beam_center is not None:
        cfg.method.center = [float(stack.beam_center[0]), float(stack.beam_center[1])]
    return stack


def provenance(cfg: Config, stack: ScanStack, extra: dict | None = None) -> dict:
    p = {
        "package": "napari-xrd-denoise",
        "version": __version__,
        "input_file": str(stack.source),
        "input_dataset": stack.dataset or "",
        "input_shape": list(stack.shape),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command_line": " ".join(sys.argv),
        "method": cfg.method.name,
        "config": cfg.to_json(),
    }
    if extra:
        p.update(extra)
    return p


def load_model(path: str | Path, device: str = "auto"):
    from .model_file import DenoiserModel

    return DenoiserModel.load(path, device=device)


def train(
    source: str | Path | ScanStack | np.ndarray,
    config: Config | dict | str | Path | None = None,
    *,
    model_path: str | Path | None = None,
    callback: Callable | None = None,
    reference: str | Path | ScanStack | np.ndarray | None = None,
    init_model: str | Path | Any = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    **overrides: Any,
):
    """Train a denoiser on ``source`` (self-supervised unless the method is ``supervised``); returns the
    :class:`~napari_xrd_denoise.model_file.DenoiserModel`.

    ``model_path``: also save the model there (an existing file is refused unless ``overwrite=True``);
    the checkpoint ``<model_path>.ckpt`` is written during training and kept, so that ``resume=True``
    can continue a run. ``callback(event)`` receives :class:`~napari_xrd_denoise.training.TrainEvent`
    objects (kinds ``start``, ``step``, ``epoch``, ``done``). ``mask``: a mask file or an array
    (nonzero = excluded). The Config passed in is not changed.
    """
    mask = _pop_mask_array(overrides)
    cfg = make_config(config, **overrides)
    stack = open_input(source, cfg, mask)
    return _train_on_stack(
        stack, cfg, model_path=model_path, callback=callback, reference=reference, init_model=init_model,
        checkpoint=checkpoint, resume=resume, overwrite=overwrite,
    )


def _model_lock(target):
    """One training at a time per model file (``MODEL.lock``): two trainings of one file wrote one
    checkpoint in turn, so --resume continued whichever wrote last, and the file held whichever finished
    last. No lock without a file."""
    if target is None:
        return contextlib.nullcontext()
    return RunLock(Path(str(target) + ".lock"), Path(target), "another training is writing this model now")


def _train_on_stack(stack, cfg, *, model_path=None, callback=None, reference=None, init_model=None,
                    checkpoint=None, resume=False, overwrite=False):
    from .methods import resolve_auto
    from .training import Trainer

    if cfg.method.name == "auto":
        cfg.method.name = resolve_auto(cfg, stack)
    if cfg.method.name == "neighbors" and cfg.method.cycles > 1:
        raise XRDError(
            f"--cycles {cfg.method.cycles}: iterative refinement denoises while it trains, so it runs in "
            "`xrd-denoise denoise` (train/predict use one cycle)"
        )
    ref, ref_src = None, None
    if cfg.method.name == "supervised":
        ref_src = reference if reference is not None else cfg.method.reference
        if ref_src is None:
            raise XRDError("--method supervised needs --reference FILE with the paired high-SNR frames")
        ref_cfg = make_config(cfg.to_dict())
        ref_cfg.data.dataset = cfg.method.reference_dataset
        ref_cfg.data.mask_file = None
        ref = open_input(ref_src, ref_cfg)
        if ref.shape != stack.shape:
            raise XRDError(f"--reference shape {ref.shape} does not match the input shape {stack.shape}")
    init = init_model if init_model is not None else cfg.method.init_model
    if isinstance(init, (str, Path)):
        init = load_model(init, device=cfg.train.device)
    if model_path is not None:
        from .io.atomic import check_output

        check_output(Path(model_path), overwrite, inputs=(*stack.input_files, ref_src, *_read_files(cfg)))
        if checkpoint is None:
            checkpoint = Path(str(model_path) + ".ckpt")
    with _model_lock(model_path if model_path is not None else checkpoint):
        trainer = Trainer(
            cfg, stack, callback=callback, reference=ref, init_model=init, checkpoint=checkpoint, resume=resume
        )
        model = trainer.run()
        if model_path is not None:
            model.save(model_path)
    return model


def predict(
    source: str | Path | ScanStack | np.ndarray,
    model: Any,
    output: str | Path | None = None,
    *,
    config: Config | dict | str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    resume: bool = False,
    cancel: Any = None,
    workers: int = 0,
    scheduler: str | None = None,
    **overrides: Any,
):
    """Denoise ``source`` with a trained model; returns an array (no output) or the output path.

    The model's own configuration decides the method and the data transform. The options that
    describe the data (dataset, scan shape, mask, crop, PONI file) are this call's, from ``config`` or
    the overrides, never those of the data the model was trained on. Inference options are the model's
    (as it was trained with them) unless this call sets one (an override, a chosen option, or a value in
    ``config`` other than the default). The
    beam centre (for the symmetry partner and the flux correction along the rings) is ``center=`` or
    the config's, else the data's own (file metadata, ``poni=``), else, for a symmetry model only, the
    model's (``inference.data_center``). An array input comes back in its own shape.
    """
    from .inference import predict_stack
    from .model_file import DenoiserModel

    model_file = model if isinstance(model, (str, Path)) else getattr(model, "source_path", None)
    if isinstance(model, (str, Path)):
        model = load_model(model)
    if not isinstance(model, DenoiserModel):
        raise XRDError(f"model: a trained model (from train or load_model) or a model file path, "
                       f"not {type(model).__name__}")
    _check_output_arg(output)
    mask = _pop_mask_array(overrides)
    user = make_config(config, **{k: v for k, v in overrides.items() if k in _CALL_KEYS})
    base = model.config.to_dict()
    base["data"].update({k: user.data.__dict__[k] for k in _DATA_KEYS})
    for key in ("ndim", "saturation"):  # given for these data, else the model's (a 1D model reads .npy as spectra)
        if getattr(user.data, key) is not None:
            base["data"][key] = getattr(user.data, key)
    if user.data.keep_negatives or "data.keep_negatives" in user.chosen:
        base["data"]["keep_negatives"] = bool(user.data.keep_negatives)
    base["method"]["poni"] = user.method.poni
    base["method"]["center"] = None  # filled from the data (open_input) when they know it
    default_infer = Config().infer.__dict__
    for key, value in user.infer.__dict__.items():  # the model's inference options unless this call sets one
        if f"infer.{key}" in user.chosen or value != default_infer[key]:
            base["infer"][key] = value
    cfg = make_config(base, **{k: v for k, v in overrides.items() if k not in _CALL_KEYS})
    stack = open_input(source, cfg, mask)
    from .inference import data_center

    center = data_center(model, stack, user.method.center)  # given, else the data's own (or a symmetry model's)
    cfg.method.center = None if center is None else list(center)  # as used, for the provenance
    if output is not None:
        from .io.atomic import check_output
        from .io.writers import output_kind

        check_output(Path(output), overwrite or resume, inputs=(source, *stack.input_files,
                                                                *_read_files(cfg, model_file)))
        output_kind(output)  # an unsupported suffix is refused now, not after the work
    prov = provenance(cfg, stack, {"model_version": getattr(model, "version", "")})
    if workers or scheduler:
        from .distributed import predict_distributed

        res = predict_distributed(
            model, stack, output, infer=cfg.infer, workers=workers, scheduler=scheduler,
            overwrite=overwrite, resume=resume, cancel=cancel, provenance=prov, progress=progress,
            center=center,
        )
    else:
        res = predict_stack(
            model, stack, output, infer=cfg.infer, progress=progress, cancel=cancel,
            overwrite=overwrite, resume=resume, provenance=prov, center=center,
        )
    if output is not None:
        out = Path(output)
        cfg.save(out.with_name(out.name + ".config.json"))  # this run's configuration, as used
    return _as_input_shape(res, source, cfg)


#: the data options a prediction takes from its own call, not from the model's training data
_DATA_KEYS = ("dataset", "scan_shape", "mask_file", "crop")
_CALL_KEYS = {"dataset", "data__dataset", "scan_shape", "data__scan_shape", "mask", "mask_file", "data__mask_file",
              "crop", "data__crop", "poni", "method__poni", "center", "method__center", "ndim", "data__ndim",
              "saturation", "data__saturation", "keep_negatives", "data__keep_negatives"}


def _as_input_shape(result, source, cfg: Config):
    """An array result in the shape of an array input (a single frame or spectrum comes back as one)."""
    if (isinstance(result, np.ndarray) and not isinstance(source, (str, Path, ScanStack))
            and hasattr(source, "shape") and not cfg.data.crop and result.size == int(np.prod(source.shape))
            and result.shape != tuple(source.shape)):
        return result.reshape(source.shape)
    return result


def denoise(
    source: str | Path | ScanStack | np.ndarray,
    output: str | Path | None = None,
    config: Config | dict | str | Path | None = None,
    *,
    callback: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
    qc: bool = False,
    model_path: str | Path | None = None,
    **overrides: Any,
):
    """Train on ``source`` and denoise it in one go. Returns the array (no output; an array input comes
    back in its own shape) or the output path. ``qc=True`` writes the QC report beside the output (it
    needs one). ``mask``: a mask file or an array (nonzero = excluded)."""
    from .inference import predict_stack

    if qc and output is None:
        raise XRDError("qc=True writes its report beside the output: give an output path")
    _check_output_arg(output)
    mask = _pop_mask_array(overrides)
    cfg = make_config(config, **overrides)
    if output is not None:
        from .io.atomic import check_output
        from .io.writers import output_kind

        check_output(Path(output), overwrite, inputs=(source, *_read_files(cfg)))
        output_kind(output)  # an unsupported suffix is refused now, not after training
        if model_path is not None:
            check_output(Path(model_path), overwrite, inputs=(source, *_read_files(cfg)))
    stack = open_input(source, cfg, mask)
    if output is not None or model_path is not None:  # nor any file the input's frames are read from
        from .io.atomic import check_output

        for p in (output, model_path):
            if p is not None:
                check_output(Path(p), True, inputs=stack.input_files)
    if cfg.infer.preserve_profile is True:  # refused now, not after the training
        from .inference import check_profile_possible

        check_profile_possible(stack, cfg.method.center)
    if cfg.method.name == "neighbors" and cfg.method.cycles > 1:
        result = _denoise_refined(stack, cfg, output, callback=callback, overwrite=overwrite, model_path=model_path)
    else:
        model = _train_on_stack(stack, cfg, callback=callback, model_path=model_path, overwrite=overwrite)
        cfg = model.config
        prov = provenance(cfg, stack)
        result = predict_stack(model, stack, output, infer=cfg.infer, progress=progress, overwrite=overwrite,
                               provenance=prov, center=cfg.method.center)  # the data's: given or their own
    if output is not None:
        out = Path(output)
        cfg.save(out.with_name(out.name + ".config.json"))
        if qc:
            from .qc import write_report
            from .io.writers import read_result

            import dask.array as da

            den, valid, _ = read_result(out)  # h5py datasets or arrays; streamed by the report, not loaded
            den, valid = (x if x is None or isinstance(x, np.ndarray) else da.from_array(x, chunks=x.chunks or "auto")
                          for x in (den, valid))
            write_report(stack, den, valid, out, geometry=stack.geometry, center=cfg.method.center,
                         frame_ndim=stack.frame_ndim)
    return _as_input_shape(result, source, cfg)


def _denoise_refined(stack: ScanStack, cfg: Config, output, *, callback=None, overwrite=False, model_path=None):
    """Neighbour-scan blind spot with ``cycles`` leak-free refinement cycles (see ``refine.py``).

    The refinement denoises while it trains, so it runs only here; with ``model_path`` the network of
    every cycle is saved (``MODEL`` is the last one, ``MODEL.cycleN.pt`` each cycle).
    """
    from .io.writers import write_array
    from .refine import Refiner

    with _model_lock(model_path):
        res = Refiner(cfg, stack, callback=callback).run()
        if model_path is not None:
            mp = Path(model_path)
            for c, m in enumerate(res.models, start=1):
                m.save(mp.with_name(f"{mp.name}.cycle{c}.pt"))
            res.models[-1].save(mp)
    flux = _refined_flux_correction(res, stack, cfg)
    if output is None:
        return res.denoised
    valid = np.isfinite(res.denoised)
    prov = provenance(res.models[-1].config, stack, {"refinement_cycles": int(cfg.method.cycles),
                                                     "flux_correction": flux})
    write_array(output, res.denoised, valid, provenance=prov, overwrite=overwrite, frame_ndim=stack.frame_ndim)
    return Path(output)


def _refined_flux_correction(res, stack: ScanStack, cfg: Config) -> str:
    """The flux correction of ``predict_stack`` (along the rings, else over each whole frame of integer
    counts) applied to the refinement's result in place, chunk by chunk; returns its provenance entry."""
    from .inference import (
        POOL_FRAMES,
        POOL_FRAMES_MAX,
        _Once,
        correct_profile,
        data_center,
        flux_provenance,
        pool_indices,
        profile_rings,
        sample_flux_factor,
        whole_frame_flux,
    )

    model = res.models[-1]
    inf = cfg.infer
    rings = profile_rings(model, stack, inf, data_center(model, stack, cfg.method.center))
    whole = whole_frame_flux(stack, inf, rings)
    if rings is not None or whole:
        den = res.denoised.reshape((stack.n_frames,) + stack.frame_shape)
        raw_den = {}  # the sample frames' outputs before any correction, for the sparse frames' factor

        def sample(ids):
            return [raw_den[i] for i in ids]

        pool = _Once(lambda: sample_flux_factor(stack, sample))
        if whole:
            for k in (POOL_FRAMES, POOL_FRAMES_MAX):
                raw_den.update({int(i): den[int(i)].copy() for i in pool_indices(stack.n_frames, k)})
        step = max(1, int(inf.chunk_frames))
        for c0 in range(0, stack.n_frames, step):
            c1 = min(stack.n_frames, c0 + step)
            counts, valid = stack.counts(stack.frames(c0, c1))
            correct_profile(den[c0:c1], counts, valid & np.isfinite(den[c0:c1]), rings, inf, whole, sparse_factor=pool)
    return flux_provenance(rings, inf, whole)


def config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
