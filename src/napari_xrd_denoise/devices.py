"""Torch devices by name, with a clear message when a requested device is not available."""

from __future__ import annotations

import os

import torch

from .config import DEVICES_HINT
from .errors import ConfigError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | None) -> tuple[torch.device, str]:
    """``auto|cpu|cuda|cuda:N|mps`` -> ``(device, message)``; the message says why it fell back ("" if not).

    ``auto`` prefers CUDA, then MPS, then CPU. A requested but unavailable accelerator falls back to
    the CPU with a message; a malformed name is a :class:`ConfigError` naming ``train.device``.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0"), ""
        if _mps_available():
            return torch.device("mps"), ""
        return torch.device("cpu"), ""
    if name == "cpu":
        return torch.device("cpu"), ""
    if name == "mps":
        if _mps_available():
            return torch.device("mps"), ""
        return torch.device("cpu"), "MPS requested but not available; using CPU"
    if name == "cuda" or name.startswith("cuda:"):
        idx = 0
        if ":" in name:
            try:
                idx = int(name.split(":", 1)[1])
            except ValueError:
                raise ConfigError(f"train.device={name!r} is not one of: {DEVICES_HINT}") from None
        if not torch.cuda.is_available():
            return torch.device("cpu"), f"{name.upper()} requested but not available; using CPU"
        n = torch.cuda.device_count()
        if idx >= n:
            return torch.device("cuda:0"), f"{name} requested but only {n} CUDA device(s) exist; using cuda:0"
        return torch.device(f"cuda:{idx}"), ""
    raise ConfigError(f"train.device={name!r} is not one of: {DEVICES_HINT}")


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), so that bfloat16 mixed
    precision speeds training up rather than emulating it (slower than float32)."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a private probe: its absence or failure means "not known to be native"
            continue
    return False


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The mixed-precision dtype for ``device`` (``train.amp``): float16 on CUDA, bfloat16 on a CPU with
    native bfloat16 (:func:`cpu_bf16_native`), else None (float32 throughout)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16_native():
        return torch.bfloat16
    return None


def default_threads() -> int:
    """Torch threads for training the small default models: 1 on machines with up to 2 cores, else half
    the cores (at most 8).

    Measured on a 2-core machine (U-Net depth 3, width 8, batch 8 of 96x96): one training step takes
    about 100 ms with one thread and 80 ms with two when the machine is idle, but 2-4x longer with two
    as soon as anything else runs. Inference on whole frames is left at torch's default (all cores).
    """
    n = os.cpu_count() or 1
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return 1 if n <= 2 else max(2, min(8, n // 2))


def available_devices() -> list[tuple[str, str]]:
    """``[(name, description)]`` of the devices this machine can use, CPU first."""
    n = os.cpu_count() or 1
    out = [("cpu", f"CPU ({n} thread{'s' if n != 1 else ''})")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append((f"cuda:{i}", f"{p.name} ({p.total_memory / 1e9:.0f} GB)"))
    if _mps_available():
        out.append(("mps", "Apple GPU (MPS)"))
    return out
