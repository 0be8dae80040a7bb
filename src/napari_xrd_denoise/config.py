"""One configuration object for the GUI, the command line and saved models.

A :class:`Config` is a tree of plain dataclasses holding only JSON types, so it can be written next to
every output, stored inside every model file, loaded with ``--config FILE`` and edited by the widgets.
Validation raises :class:`~napari_xrd_denoise.errors.ConfigError` naming the parameter.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

METHODS = (
    "auto",
    "n2s",
    "n2v",
    "n2n-frames",
    "n2n-split",
    "supervised",
    "symmetry",
    "neighbors",
)
ARCHS = ("unet", "dncnn")
TRANSFORMS = ("anscombe", "gat", "none")
LOSSES = ("auto", "mse", "poisson")
DEVICES_HINT = "auto, cpu, cuda, cuda:N or mps"


class _Section:
    """Refuses attributes that are not parameters: ``cfg.train.epoch = 2`` (for ``epochs``) would otherwise
    be accepted and ignored."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self.__dataclass_fields__:  # type: ignore[attr-defined]
            section = type(self).__name__.replace("Config", "").lower() or "config"
            close = difflib.get_close_matches(name, list(self.__dataclass_fields__), n=1)  # type: ignore[attr-defined]
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
            raise AttributeError(f"'{section}' has no parameter '{name}'{hint}")
        object.__setattr__(self, name, value)


@dataclass
class DataConfig(_Section):
    """How raw frames are read and prepared."""

    dataset: str | None = None  # HDF5 path of the detector dataset; None picks it automatically
    scan_shape: list[int] | None = None  # e.g. [141, 121] for a flat stack of 17061 frames
    ndim: int | None = None  # frame dimensionality: 2 for detector frames, 1 for spectra; None = from the file
    crop: list[int] | None = None  # [y0, y1, x0, x1] (2D) or [c0, c1] (1D), half-open
    mask_file: str | None = None  # user mask file, nonzero = excluded (pyFAI/Dioptas convention)
    keep_negatives: bool = False  # True for background-subtracted data; else negatives are invalid
    saturation: float | None = None  # counts at or above are invalid (None: from file metadata)
    transform: str = "anscombe"  # variance stabilisation: anscombe | gat | none
    gain: float = 1.0  # generalized Anscombe: detector gain (ADU per photon)
    read_noise: float = 0.0  # generalized Anscombe: Gaussian read noise sigma (ADU)
    offset: float = 0.0  # generalized Anscombe: Gaussian mean (ADU)


@dataclass
class MethodConfig(_Section):
    """Which self-supervision strategy makes (input, target, loss mask) from the raw data."""

    name: str = "auto"
    masking: str = "grid"  # n2s: grid | random
    mask_width: int = 4  # n2s grid width w (w*w phases)
    replace: str = "interp"  # hidden pixels: zero | interp | random (a random neighbour)
    blind_fraction: float = 0.015  # n2v and random masks: fraction of blind spots per patch
    n2n_strategy: str = "1:X"  # n2n-frames: "1:X" or "X:1"
    split_p: float = 0.5  # n2n-split: binomial probability of the input half
    loss: str = "auto"  # auto | mse (Anscombe scale) | poisson (counts)
    reference: str | None = None  # supervised: file with the paired high-SNR frames
    reference_dataset: str | None = None
    # symmetry
    center: list[float] | None = None  # beam centre [y, x] in pixels (sub-pixel allowed)
    poni: str | None = None  # pyFAI PONI file giving the centre/geometry
    symmetry: str = "friedel"  # friedel | mirror
    mirror_angle: float = 0.0  # degrees, line through the centre
    center_guard: float = 3.0  # pixels around the centre excluded (a pixel is its own partner)
    combine_n2s: bool = False  # also blind-spot mask the input (symmetry / neighbors)
    # symmetry / neighbors: a binomial half of the frame as input (with its partner image / the neighbours), the
    # other half the target; None = auto: on for integer counts (Anscombe, Poisson loss, one neighbour cycle)
    combine_split: bool | None = None
    symmetrize: bool = False  # symmetry: average the prediction with its partner where both are valid
    partner_interp: str = "lanczos3"  # symmetry: partner interpolation, linear | cubic | lanczos3 (docs/methods.md)
    # neighbour-scan blind spot
    neighbors: int = 8  # 4, 8 or 24
    cycles: int = 1  # iterative refinement cycles
    warmup_epochs: int = 2  # MSE warm-up before the Poisson loss
    fill_invalid: bool = True  # neighbors: invalid input pixels filled from their valid surroundings (methods/base.fill_invalid); False: the neutral 0
    # pretrained reuse
    init_model: str | None = None  # fine-tune from this model file


@dataclass
class ModelConfig(_Section):
    arch: str = "unet"
    depth: int = 3
    width: int = 8
    stem_width: int = 0  # U-Net: channels of the first convolution; 0 = auto (max(width, 2 x input channels), at most 4 x width)
    residual: bool | None = None  # add the network's correction to its input; None = auto (the method decides; saved models hold the choice)
    dncnn_layers: int = 8
    in_channels: int = 1  # set by the method (e.g. 8 for neighbors)
    residual_channel: int | None = None  # set by the method: residual on this input channel; None = channel mean


@dataclass
class TrainConfig(_Section):
    epochs: int = 20
    steps_per_epoch: int = 50
    batch_size: int = 8
    patch_size: int = 96
    lr: float = 3e-3
    weight_decay: float = 1e-4
    restarts: int = 1  # cosine annealing cycles over the whole run
    val_fraction: float = 0.05
    patience: int = 5  # epochs without validation improvement before stopping; 0 = never
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch threads; 0 = a number that suits small models on few cores
    amp: bool = True  # mixed precision: float16 on CUDA, bfloat16 on CPUs that compute it natively
    augment: bool = True  # rot90 / flip
    max_minutes: float = 0.0  # wall-clock budget; 0 = none
    preview_every: int = 25  # steps between preview events
    checkpoint_dir: str | None = None
    prefetch: bool = True  # draw the next training batches in a background thread while the network trains


@dataclass
class InferConfig(_Section):
    batch_size: int = 4
    tile: int = 512  # frames larger than this are tiled
    overlap: int = 32  # tile overlap, blended
    chunk_frames: int = 16  # frames streamed per chunk
    j_invariant: bool = False  # n2s: sum over all mask phases
    tta: bool = False  # test-time augmentation: average over all 8 rotations/reflections (2 in 1D) in every pass
    split_passes: int = 4  # n2n-split: passes averaged per frame (pairs of complementary halves, each pass in another orientation; 0 = one full-frame pass)
    # local flux correction along the rings: None = auto (on when the rings are known: --poni, --center, a
    # drawn centre or the file's own centre; otherwise 2D integer-count frames keep their total counts,
    # inference.keep_frame_counts), True = required (error without), False = off (both)
    preserve_profile: bool | None = None
    profile_window: int = 5  # ring bins (about 1 px each) per flux-correction window; 1 = exact raw profile (docs/methods.md)


@dataclass
class Config(_Section):
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Config":
        d = dict(d or {})
        parts = {}
        for f in fields(cls):
            sub = d.pop(f.name, {}) or {}
            if not isinstance(sub, dict):
                raise ConfigError(f"config section '{f.name}' must be a mapping, got {type(sub).__name__}")
            parts[f.name] = _build(_SECTION[f.name], sub, f.name)
        if d:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(d))}")
        cfg = cls(**parts)
        cfg.validate()
        return cfg

    def save(self, path: str | Path) -> Path:
        from .io.atomic import atomic_write_text

        return atomic_write_text(Path(path), self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{p}: not a JSON config file ({e})") from None
        return cls.from_dict(d)

    def replace(self, **dotted: Any) -> "Config":
        """Copy with overrides given as ``section__key=value`` or ``key=value`` (unique keys); the keys
        given are remembered as chosen (:attr:`chosen`)."""
        d = self.to_dict()
        keys = set()
        for k, v in dotted.items():
            sec, key = _locate(k)
            d[sec][key] = v
            keys.add(f"{sec}.{key}")
        return Config.from_dict(d).with_chosen(self.chosen | keys)

    @property
    def chosen(self) -> frozenset[str]:
        """``section.key`` names the user set explicitly (keyword overrides, command-line flags), so that
        the data's defaults (:func:`with_data_defaults`) never replace them, even where a chosen value
        equals the generic default. Not saved: a saved Config holds values only."""
        return self.__dict__.get("_chosen", frozenset())

    def with_chosen(self, keys) -> "Config":
        """This Config, recording ``keys`` (``section.key``) as chosen; returns it."""
        object.__setattr__(self, "_chosen", frozenset(keys))
        return self

    # --- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        m, mo, t, dd, inf = self.method, self.model, self.train, self.data, self.infer
        _choice("method.name", m.name, METHODS)
        _choice("method.masking", m.masking, ("grid", "random"))
        _choice("method.replace", m.replace, ("zero", "interp", "random"))
        _choice("method.n2n_strategy", m.n2n_strategy, ("1:X", "X:1"))
        _choice("method.loss", m.loss, LOSSES)
        _choice("method.symmetry", m.symmetry, ("friedel", "mirror"))
        _choice("method.partner_interp", m.partner_interp, ("linear", "cubic", "lanczos3"))
        _choice("method.neighbors", m.neighbors, (4, 8, 24))
        _choice("model.arch", mo.arch, ARCHS)
        _choice("data.transform", dd.transform, TRANSFORMS)
        _choice("data.ndim", dd.ndim, (None, 1, 2))
        _range("method.mask_width", m.mask_width, 2, 16)
        _range("method.blind_fraction", m.blind_fraction, 1e-4, 0.5)
        _range("method.split_p", m.split_p, 0.05, 0.95)
        _range("method.cycles", m.cycles, 1, 50)
        _range("method.warmup_epochs", m.warmup_epochs, 0, 100000)
        _range("model.depth", mo.depth, 1, 6)
        _range("model.width", mo.width, 2, 512)
        _range("model.stem_width", mo.stem_width, 0, 2048)
        _range("model.dncnn_layers", mo.dncnn_layers, 2, 40)
        _range("train.epochs", t.epochs, 1, 100000)
        _range("train.steps_per_epoch", t.steps_per_epoch, 1, 10**7)
        _range("train.batch_size", t.batch_size, 1, 4096)
        _range("train.patch_size", t.patch_size, 8, 8192)
        _range("train.lr", t.lr, 1e-8, 1.0)
        _range("train.val_fraction", t.val_fraction, 0.0, 0.5)
        _range("train.restarts", t.restarts, 1, 1000)
        _range("train.seed", t.seed, 0, 2**32 - 1)
        _range("train.threads", t.threads, 0, 4096)
        _range("train.max_minutes", t.max_minutes, 0.0, 1e7)
        _range("train.weight_decay", t.weight_decay, 0.0, 10.0)
        _range("train.patience", t.patience, 0, 10**6)
        _range("method.center_guard", m.center_guard, 0.0, 1e4)
        _range("method.mirror_angle", m.mirror_angle, -360.0, 360.0)
        _range("data.read_noise", dd.read_noise, 0.0, 1e9)
        if dd.saturation is not None:
            _range("data.saturation", dd.saturation, 1e-12, 1e300)
        _range("infer.batch_size", inf.batch_size, 1, 4096)
        _range("infer.tile", inf.tile, 16, 1 << 16)
        _range("infer.chunk_frames", inf.chunk_frames, 1, 1 << 20)
        _range("infer.split_passes", inf.split_passes, 0, 64)
        _range("infer.profile_window", inf.profile_window, 1, 1001)
        if m.combine_split not in (None, True, False):
            raise ConfigError(f"method.combine_split={m.combine_split!r} must be true, false or null (auto)")
        if inf.preserve_profile not in (None, True, False):
            raise ConfigError(f"infer.preserve_profile={inf.preserve_profile!r} must be true, false or null (auto)")
        if inf.overlap < 0 or inf.overlap * 2 >= inf.tile:
            raise ConfigError(f"infer.overlap={inf.overlap} must be >= 0 and less than half of infer.tile={inf.tile}")
        if dd.scan_shape is not None:
            if isinstance(dd.scan_shape, numbers.Integral) and not isinstance(dd.scan_shape, bool):
                dd.scan_shape = [int(dd.scan_shape)]  # one scan axis
            if (not isinstance(dd.scan_shape, (list, tuple)) or not (1 <= len(dd.scan_shape) <= 2)
                    or any(not isinstance(s, numbers.Integral) or int(s) < 1 for s in dd.scan_shape)):
                raise ConfigError(f"data.scan_shape={dd.scan_shape} must be one or two positive integers, e.g. 141x121")
        if dd.crop is not None and len(dd.crop) not in (2, 4):
            raise ConfigError(f"data.crop={dd.crop} needs 4 numbers Y0,Y1,X0,X1 (2D) or 2 numbers C0,C1 (1D)")
        if m.center is not None and (len(m.center) != 2 or not all(math.isfinite(float(c)) for c in m.center)):
            raise ConfigError(f"method.center={m.center} must be two finite numbers Y,X")
        if not (isinstance(dd.gain, numbers.Real) and math.isfinite(dd.gain) and dd.gain > 0):
            raise ConfigError(f"data.gain={dd.gain} must be a positive number")
        if not (isinstance(dd.offset, numbers.Real) and math.isfinite(dd.offset)):
            raise ConfigError(f"data.offset={dd.offset} must be a finite number")
        if int(m.cycles) > 1 and m.name != "neighbors":
            raise ConfigError(f"method.cycles={m.cycles} (--cycles): iterative refinement is the neighbour method's "
                              f"(--method neighbors), not method.name={m.name!r}; use --cycles 1")
        if int(m.cycles) > 1 and m.combine_n2s:
            raise ConfigError("method.combine_n2s (--combine-n2s) with method.cycles > 1 (--cycles): the refinement "
                              "is leak-free only with the plain blind spot (the masked centre frame would pass its own "
                              "counts back through the neighbour estimates); use one or the other")


# Defaults that differ for 1D spectra (measured on the real XRF spectra, see docs/methods.md): a small
# 1D DnCNN with a Poisson loss on counts, whole spectra as patches, and no held-out spectrum (with four
# realisations every one is needed). They replace only values the user left at the generic defaults.
SPECTRA_DEFAULTS: dict[str, dict[str, Any]] = {
    "method": {"loss": "poisson"},
    "model": {"arch": "dncnn", "dncnn_layers": 8, "width": 16},
    "train": {"patch_size": 4096, "batch_size": 4, "epochs": 30, "steps_per_epoch": 20, "weight_decay": 0.0,
              "val_fraction": 0.0},
}


def with_data_defaults(cfg: Config, frame_ndim: int) -> Config:
    """``cfg`` with the defaults for the data's dimensionality filled in where the user kept the generic
    ones and did not choose them explicitly (:attr:`Config.chosen`)."""
    if frame_ndim != 1:
        return cfg
    generic = Config().to_dict()
    d = cfg.to_dict()
    for sec, vals in SPECTRA_DEFAULTS.items():
        for k, v in vals.items():
            if d[sec][k] == generic[sec][k] and f"{sec}.{k}" not in cfg.chosen:
                d[sec][k] = v
    return Config.from_dict(d).with_chosen(cfg.chosen)


_SECTION = {
    "data": DataConfig,
    "method": MethodConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "infer": InferConfig,
}


def _build(cls, sub: dict[str, Any], section: str):
    names = {f.name: f for f in fields(cls)}
    unknown = sorted(set(sub) - set(names))
    if unknown:
        raise ConfigError(f"unknown parameter(s) in '{section}': {', '.join(section + '.' + u for u in unknown)}")
    kwargs = {}
    default = cls()
    for k, v in sub.items():
        kwargs[k] = _coerce(f"{section}.{k}", v, getattr(default, k))
    return cls(**kwargs)


_AUTO_BOOLS = {"infer.preserve_profile", "method.combine_split", "model.residual"}  # true / false / null (= auto)


def _coerce(name: str, v: Any, default: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, tuple):
        v = list(v)
    if name in _AUTO_BOOLS:
        if isinstance(v, str) and v.lower() in ("auto", "none", "null"):
            return None
        default = False
    if isinstance(default, bool):
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.lower() in ("true", "false", "1", "0", "yes", "no"):
            return v.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}={v!r} must be true or false")
    if isinstance(default, int):
        try:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={v!r} must be an integer") from None
    if isinstance(default, float):
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={v!r} must be a number") from None
    return v


_ALIASES = {"method": ("method", "name"), "steps": ("train", "steps_per_epoch"), "mask": ("data", "mask_file")}


def _locate(key: str) -> tuple[str, str]:
    if key in _ALIASES:
        return _ALIASES[key]
    if "__" in key:
        sec, k = key.split("__", 1)
        if sec not in _SECTION or k not in {f.name for f in fields(_SECTION[sec])}:
            raise ConfigError(f"unknown parameter '{sec}.{k}'")
        return sec, k
    hits = [s for s, c in _SECTION.items() if key in {f.name for f in fields(c)}]
    if len(hits) != 1:
        raise ConfigError(
            f"unknown parameter '{key}'" if not hits else f"parameter '{key}' is ambiguous: use one of "
            + ", ".join(f"{h}__{key}" for h in hits)
        )
    return hits[0], key


def _choice(name: str, v: Any, allowed: tuple) -> None:
    if v not in allowed:
        raise ConfigError(f"{name}={v!r} is not one of: {', '.join(map(str, allowed))}")


def _range(name: str, v: float, lo: float, hi: float) -> None:
    if v is None or not (lo <= v <= hi):
        raise ConfigError(f"{name}={v!r} must be between {lo} and {hi}")


def parse_shape(text: str, name: str = "--scan-shape") -> list[int]:
    """Parse ``141x121`` / ``141,121`` / ``17061`` into a list of positive ints."""
    parts = [p for p in str(text).lower().replace(",", "x").split("x") if p.strip()]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{name}={text!r} must look like 141x121") from None
    if not 1 <= len(vals) <= 2 or any(v < 1 for v in vals):
        raise ConfigError(f"{name}={text!r} must be one or two positive integers, e.g. 141x121")
    return vals


def parse_center(text: str, name: str = "--center") -> list[float]:
    parts = str(text).replace("x", ",").split(",")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise ConfigError(f"{name}={text!r} must be two numbers Y,X") from None
    if len(vals) != 2:
        raise ConfigError(f"{name}={text!r} must be two numbers Y,X")
    return vals
