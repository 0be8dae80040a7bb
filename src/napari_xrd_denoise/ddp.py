"""Multi-process training with torch DistributedDataParallel (one process per GPU, or CPU processes).

Run with torchrun::

    torchrun --standalone --nproc_per_node=4 -m napari_xrd_denoise.ddp INPUT -m MODEL.pt [--config FILE] [...]

It takes the options of ``xrd-denoise train``. Backend: ``nccl`` when the processes train on CUDA
(process ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``), ``gloo`` on the CPU. Every rank opens the input itself,
uses the same train/validation split and the same initial weights, and draws its own random patches
(generator seeded with ``train.seed + rank``); DDP averages the gradients, so every optimiser step sees
``nproc x train.batch_size`` patches and all ranks keep identical weights. The per-step loss and the
stop conditions (time budget, cancel, divergence) are all-reduced so every rank stops at the same step;
rank 0 validates, broadcasts the validation loss, writes the checkpoint ``MODEL.pt.ckpt`` after every
epoch (with every rank's random state, so ``--resume`` continues exactly) and writes the model.

The loop is :class:`~napari_xrd_denoise.training.Trainer`'s own (sample drawing, collation, loss, gradient
clipping, validation plan, schedule, events, checkpoint format); :class:`DDPTrainer` only overrides its
hooks: the per-rank patch generator, the DDP wrapper, the agreed stop conditions, rank-0 validation and
the checkpoint with every rank's random state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .config import Config
from .errors import XRDError
from .io.atomic import check_output
from .training import Trainer

RANK_SEED_STRIDE = 1_000_003  # rank r draws patches from default_rng(seed + r * stride)


def rank_seed(seed: int, rank: int) -> int:
    """The patch-drawing seed of ``rank`` (rank 0 uses ``seed`` itself, like single-process training)."""
    return int(seed) + int(rank) * RANK_SEED_STRIDE


def _params_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class DDPTrainer(Trainer):
    """:class:`Trainer` whose loop runs under DistributedDataParallel in an initialised process group."""

    def __init__(self, config: Config, stack, *, rank: int, world_size: int, device: torch.device, **kw: Any):
        super().__init__(config, stack, **kw)
        if int(self.config.method.cycles) > 1:
            raise XRDError("method.cycles > 1 (iterative refinement) is not available with DDP training; use method.cycles=1")
        self.rank, self.world_size = int(rank), int(world_size)
        self.device = torch.device(device)
        self.device_message = ""
        self.report: dict[str, Any] = {}
        self.backend = dist.get_backend()
        self._first_batch: str | None = None  # hash of this rank's first training batch, for the report

    def _emit(self, kind: str, **kw) -> None:
        if self.rank == 0:
            super()._emit(kind, **kw)

    def _agree(self, *values: float) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        if self.backend == "nccl":
            t = t.to(self.device)
        dist.all_reduce(t)
        return [float(v) for v in t.cpu()]

    def _from_rank0(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    # ---- the Trainer loop's hooks ------------------------------------------------------------------------
    def _make_rng(self, tc) -> np.random.Generator:
        return np.random.default_rng(rank_seed(tc.seed, self.rank))

    def _restore_rng(self, d: dict[str, Any], rng: np.random.Generator) -> np.random.Generator:
        states = d.get("ddp_np_rng")
        if states and len(states) == self.world_size:
            rng.bit_generator.state = states[self.rank]
            return rng
        # a single-process checkpoint, or another number of ranks: fresh, distinct streams
        self._emit("message", message=f"checkpoint made with {d.get('ddp_world_size', 1)} process(es); "
                   f"patch sampling restarts with new random streams for {self.world_size}")
        return np.random.default_rng([rank_seed(self.config.train.seed, self.rank), int(d["epoch"]) + 1])

    def _wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _cancel_now(self) -> bool:
        return False  # a rank alone never stops: cancel requests are agreed in _sync_step

    def _sync_step(self, loss: float, over_time: bool) -> tuple[float, bool, bool]:
        lsum, n_cancel, n_time = self._agree(loss, self._cancel.is_set(), over_time)
        return lsum / self.world_size, n_cancel > 0, n_time > 0

    def _epoch_validation(self, space: str) -> float | None:
        return self._from_rank0(self._validate(space) if self.rank == 0 else None)

    def _start_message(self, cfg: Config) -> str:
        return (f"{cfg.method.name} with DDP on {self.world_size} process(es) ({self.backend}, rank 0 on "
                f"{self.device}), {self.train_frames.size} training frame(s)")

    def _saw_batch(self, x: torch.Tensor) -> None:
        if self._first_batch is None:
            self._first_batch = hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()

    def _finish(self, stopped: str, step: int, tc) -> None:
        self.report = {
            "rank": self.rank, "world_size": self.world_size, "backend": self.backend, "device": str(self.device),
            "seed": rank_seed(tc.seed, self.rank), "steps": step, "first_batch_sha256": self._first_batch,
            "final_params_sha256": _params_digest(self.net), "stopped": stopped or "done",
        }
        self.history["ddp"] = {"world_size": self.world_size, "backend": self.backend,
                               "patches_per_step": self.world_size * int(tc.batch_size)}

    def _save_checkpoint(self, epoch: int, step: int, rng, opt, sched, scaler, best) -> None:
        """Rank 0 writes the checkpoint with every rank's random state (all ranks must call this)."""
        states = [None] * self.world_size
        dist.all_gather_object(states, rng.bit_generator.state)
        if self.rank != 0 or self.checkpoint is None:
            return
        d = self._checkpoint_dict(epoch, step, states[0], opt, sched, scaler, best)
        d.update(ddp_world_size=self.world_size, ddp_np_rng=states)
        self._write_checkpoint(d)


# --------------------------------------------------------------------------------------------------
# Process group and command line
# --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_device(requested: str, local_rank: int) -> torch.device:
    """CUDA requested or available (``auto``): ``cuda:LOCAL_RANK``; otherwise the CPU."""
    name = (requested or "auto").strip().lower()
    if name == "cpu" or name == "mps":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise XRDError(f"train.device: process with LOCAL_RANK {local_rank} has no GPU (only {n}); "
                       "use --nproc_per_node <= number of GPUs")
    return torch.device(f"cuda:{local_rank}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m napari_xrd_denoise.ddp", add_help=False)
    p.add_argument("--rank-report", help="folder: every rank writes rank<N>.json (seed, first batch hash, "
                   "final parameter hash)")
    return p


def _prepare(args, cfg: Config):
    """Open the input and the optional reference / init model exactly as ``xrd-denoise train`` does."""
    from .api import load_model, make_config, open_input
    from .methods import resolve_auto

    stack = open_input(args.input, cfg)
    if cfg.method.name == "auto":
        cfg.method.name = resolve_auto(cfg, stack)
    ref = None
    if cfg.method.name == "supervised":
        if cfg.method.reference is None:
            raise XRDError("--method supervised needs --reference FILE with the paired high-SNR frames")
        rc = make_config(cfg.to_dict())
        rc.data.dataset = cfg.method.reference_dataset
        rc.data.mask_file = None
        ref = open_input(cfg.method.reference, rc)
        if ref.shape != stack.shape:
            raise XRDError(f"--reference shape {ref.shape} does not match the input shape {stack.shape}")
    init = load_model(cfg.method.init_model, device="cpu") if cfg.method.init_model else None
    return stack, ref, init


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Train in the current process group member (initialising it from torchrun's environment)."""
    from .cli import _train_printer, build_parser, config_from_args

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print("usage: torchrun --standalone --nproc_per_node=N -m napari_xrd_denoise.ddp INPUT -m MODEL [options]\n"
              "  --rank-report DIR   every rank writes DIR/rank<N>.json (seed, first batch and final weights hashes)\n"
              "options as for `xrd-denoise train`:")
    extra, rest = _parser().parse_known_args(argv)
    args = build_parser().parse_args(["train", *rest])
    cfg = config_from_args(args)

    if "RANK" not in os.environ:  # started without torchrun: a group of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = _rank_device(cfg.train.device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    model_path = Path(args.model)
    check_output(model_path, args.overwrite or args.resume)
    dist.init_process_group(backend=backend)
    try:
        stack, ref, init = _prepare(args, cfg)
        trainer = DDPTrainer(cfg, stack, rank=rank, world_size=world, device=device, reference=ref,
                             init_model=init, checkpoint=Path(str(model_path) + ".ckpt"), resume=args.resume,
                             callback=_train_printer(args.quiet or rank != 0))
        previous = {s: signal.signal(s, lambda *_: trainer.cancel()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            model = trainer.run()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if rank == 0:
            model.save(model_path)
            if not args.quiet:
                print(f"wrote {model_path}", file=sys.stderr)
        if extra.rank_report:
            out = Path(extra.rank_report)
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank{rank}.json").write_text(json.dumps(trainer.report, indent=2))
        dist.barrier()
        return {"rank": rank, "stopped": trainer.stopped, "model": str(model_path)}
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        r = run(argv)
    except XRDError as e:
        if debug:
            raise
        print(f"xrd-denoise ddp (rank {os.environ.get('RANK', '0')}): error: {e}", file=sys.stderr)
        return 2
    return 130 if r["stopped"] == "cancelled" else 0


if __name__ == "__main__":  # pragma: no cover - run by torchrun
    sys.exit(main())
