"""Python API: the same verbs as the command line (``train``, ``predict``, ``denoise``).

Every function takes a file path, a :class:`ScanStack` or a numpy array, plus a :class:`Config`
and/or keyword overrides (``epochs=5``, ``method="n2s"``, ``train__lr=1e-3``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from .config import Config
from .errors import XRDError
from .io.stack import ScanStack


def make_config(config: Config | dict | str | Path | None = None, **overrides: Any) -> Config:
    """A validated Config from a Config, a dict, a JSON file, or defaults, with keyword overrides."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = config
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    else:
        cfg = Config.load(config)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return cfg.replace(**overrides) if overrides else cfg


def open_input(source: str | Path | ScanStack | np.ndarray, cfg: Config) -> ScanStack:
    """Open a file (lazily) or wrap an array, then apply the data options of ``cfg``."""
    d = cfg.data
    if isinstance(source, ScanStack):
        stack = source.with_scan_shape(d.scan_shape) if d.scan_shape else source
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
    overwrite: bool = True,
    **overrides: Any,
):
    """Train a denoiser on ``source`` (self-supervised unless the method is ``supervised``)."""
    cfg = make_config(config, **overrides)
    stack = open_input(source, cfg)
    return _train_on_stack(
        stack, cfg, model_path=model_path, callback=callback, reference=reference, init_model=init_model,
        checkpoint=checkpoint, resume=resume, overwrite=overwrite,
    )


def _train_on_stack(stack, cfg, *, model_path=None, callback=None, reference=None, init_model=None,
                    checkpoint=None, resume=False, overwrite=True):
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

        check_output(Path(model_path), overwrite, inputs=(stack.source, ref_src))
        if checkpoint is None:
            checkpoint = Path(str(model_path) + ".ckpt")
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

    The model's own configuration decides the method and the data transform; ``config`` or
    overrides may change data options (dataset, scan shape, mask, crop) and inference options.
    """
    from .inference import predict_stack

    if isinstance(model, (str, Path)):
        model = load_model(model)
    base = model.config.to_dict()
    if config is not None:
        user = make_config(config).to_dict()
        base["data"].update({k: user["data"][k] for k in ("dataset", "scan_shape", "mask_file", "crop")})
        base["infer"] = user["infer"]
    cfg = make_config(base, **overrides)
    stack = open_input(source, cfg)
    if output is not None:
        from .io.atomic import check_output
        from .io.writers import output_kind

        check_output(Path(output), overwrite or resume, inputs=(source,))
        output_kind(output)  # an unsupported suffix is refused now, not after the work
    prov = provenance(cfg, stack, {"model_version": getattr(model, "version", "")})
    if workers or scheduler:
        from .distributed import predict_distributed

        return predict_distributed(
            model, stack, output, infer=cfg.infer, workers=workers, scheduler=scheduler,
            overwrite=overwrite, resume=resume, cancel=cancel, provenance=prov, progress=progress,
        )
    return predict_stack(
        model, stack, output, infer=cfg.infer, progress=progress, cancel=cancel,
        overwrite=overwrite, resume=resume, provenance=prov,
    )


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
    """Train on ``source`` and denoise it in one go. Returns the array (no output) or the output path."""
    from .inference import predict_stack

    cfg = make_config(config, **overrides)
    if output is not None:
        from .io.atomic import check_output
        from .io.writers import output_kind

        check_output(Path(output), overwrite, inputs=(source,))
        output_kind(output)  # an unsupported suffix is refused now, not after training
        if model_path is not None:
            check_output(Path(model_path), overwrite, inputs=(source,))
    stack = open_input(source, cfg)
    if cfg.method.name == "neighbors" and cfg.method.cycles > 1:
        result = _denoise_refined(stack, cfg, output, callback=callback, overwrite=overwrite, model_path=model_path)
    else:
        model = _train_on_stack(stack, cfg, callback=callback, model_path=model_path)
        cfg = model.config
        prov = provenance(cfg, stack)
        result = predict_stack(model, stack, output, infer=cfg.infer, progress=progress, overwrite=overwrite,
                               provenance=prov)
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
    return result


def _denoise_refined(stack: ScanStack, cfg: Config, output, *, callback=None, overwrite=False, model_path=None):
    """Neighbour-scan blind spot with ``cycles`` leak-free refinement cycles (see ``refine.py``).

    The refinement denoises while it trains, so it runs only here; with ``model_path`` the network of
    every cycle is saved (``MODEL`` is the last one, ``MODEL.cycleN.pt`` each cycle).
    """
    from .io.writers import write_array
    from .refine import Refiner

    res = Refiner(cfg, stack, callback=callback).run()
    if model_path is not None:
        mp = Path(model_path)
        for c, m in enumerate(res.models, start=1):
            m.save(mp.with_name(f"{mp.name}.cycle{c}.pt"))
        res.models[-1].save(mp)
    if output is None:
        return res.denoised
    valid = np.isfinite(res.denoised)
    prov = provenance(res.models[-1].config, stack, {"refinement_cycles": int(cfg.method.cycles)})
    write_array(output, res.denoised, valid, provenance=prov, overwrite=overwrite, frame_ndim=stack.frame_ndim)
    return Path(output)


def config_json(cfg: Config) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
