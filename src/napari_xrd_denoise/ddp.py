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

The loop is :class:`~napari_xrd_denoise.training.Trainer`'s, with the same sample drawing, collation, loss,
validation plan, schedule and checkpoint format (:class:`DDPTrainer` reuses those methods).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from . import __version__
from .config import Config
from .errors import XRDError
from .io.atomic import atomic_path, check_output
from .methods.base import patch_size_for
from .models import build_model
from .training import Trainer, cosine_factor, schedule_period

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

    def _save_ddp_checkpoint(self, epoch: int, step: int, rng, opt, sched, scaler, best) -> None:
        states = [None] * self.world_size
        dist.all_gather_object(states, rng.bit_generator.state)
        if self.rank != 0 or self.checkpoint is None:
            return
        d = {
            "format": "napari-xrd-denoise-checkpoint",
            "version": __version__,
            "config": self.config.to_json(indent=None),
            "norm": self.norm.to_dict(),
            "epoch": int(epoch),
            "step": int(step),
            "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "best": best,
            "history": self.history,
            "np_rng": states[0],
            "ddp_world_size": self.world_size,
            "ddp_np_rng": states,
            "torch_rng": torch.get_rng_state(),
            "elapsed_s": self._elapsed(),
        }
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.checkpoint, overwrite=True) as tmp:
            torch.save(d, tmp)

    def _run(self, cfg: Config, tc) -> Any:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.backend = dist.get_backend()
        self._t0 = time.monotonic()
        self._elapsed0 = 0.0
        torch.manual_seed(tc.seed)  # same initial weights everywhere (DDP also broadcasts rank 0's)
        rng = np.random.default_rng(rank_seed(tc.seed, self.rank))
        self.patch = patch_size_for(self.source.frame_shape, tc.patch_size)
        self._split_frames()  # seeded by train.seed only: the same split on every rank
        self.val_plan = self._val_plan()

        net = build_model(cfg.model, cfg.data.ndim, in_channels=cfg.model.in_channels)
        if self.init_model is not None:
            try:
                net.load_state_dict(self.init_model.net.state_dict())
            except RuntimeError:
                raise XRDError("method.init_model: the saved model's architecture does not match this method") from None
        self.use_amp = bool(tc.amp and self.device.type == "cuda")
        total = int(tc.epochs * tc.steps_per_epoch)
        period = schedule_period(total, tc.restarts)
        self.history = {"train_loss": [], "val_loss": [], "lr": [], "loss_space": [], "epoch_s": [],
                        "best_epoch": None, "best_val": None, "method": cfg.method.name,
                        "train_frames": int(self.train_frames.size), "val_frames": int(self.val_frames.size)}
        best: dict[str, Any] = {"val": math.inf, "epoch": -1, "state": None, "space": None}
        start_epoch, step = 0, 0
        resumed = None
        if self.resume:
            resumed = self._load_checkpoint()
            net.load_state_dict(resumed["net"])
        self.net = net.to(self.device)
        opt = torch.optim.AdamW(self.net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_factor(s, period))
        scaler = torch.amp.GradScaler("cuda") if self.use_amp else None
        if resumed is not None:
            d = resumed
            opt.load_state_dict(d["optimizer"])
            sched.load_state_dict(d["scheduler"])
            if scaler is not None and d.get("scaler"):
                scaler.load_state_dict(d["scaler"])
            states = d.get("ddp_np_rng")
            if states and len(states) == self.world_size:
                rng.bit_generator.state = states[self.rank]
            else:  # a single-process checkpoint, or another number of ranks: fresh, distinct streams
                rng = np.random.default_rng([rank_seed(tc.seed, self.rank), int(d["epoch"]) + 1])
                self._emit("message", message=f"checkpoint made with {d.get('ddp_world_size', 1)} process(es); "
                           f"patch sampling restarts with new random streams for {self.world_size}")
            self.history = d["history"]
            best = d["best"]
            start_epoch, step = int(d["epoch"]) + 1, int(d["step"])
            self._elapsed0 = float(d.get("elapsed_s", 0.0))
        ddp = DDP(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

        if self.residual_note:
            self._emit("message", message=self.residual_note)
        self._emit("start", epoch=start_epoch, epochs=tc.epochs, step=step, total_steps=total,
                   message=f"{cfg.method.name} with DDP on {self.world_size} process(es) ({self.backend}, rank 0 on "
                   f"{self.device}), {self.train_frames.size} training frame(s)" + (", resumed" if self.resume else ""))
        ddp.train()
        stopped, stale = "", 0
        if best.get("epoch", -1) >= 0 and self.history["val_loss"]:
            stale = len(self.history["val_loss"]) - 1 - best["epoch"]
        first_batch = None
        steps_done_now = 0
        epoch = start_epoch
        for epoch in range(start_epoch, tc.epochs):
            t_ep = time.monotonic()
            self.method.begin_epoch(epoch)
            space = self.method.loss_space(epoch)
            if best.get("space") not in (None, space):
                best = {"val": math.inf, "epoch": -1, "state": None, "space": space}
                stale = 0
            n_fr = min(self.train_frames.size, self.frames_per_epoch_cap)
            frames = rng.choice(self.train_frames, size=n_fr, replace=False)
            losses = []
            for _ in range(tc.steps_per_epoch):
                samples = [self._draw(int(frames[rng.integers(n_fr)]), rng, space, tc.augment, True)
                           for _ in range(tc.batch_size)]
                x, t, w, sc = self._collate(samples)
                if first_batch is None:
                    first_batch = hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()
                opt.zero_grad(set_to_none=True)
                with self._autocast():
                    out = ddp(x)
                loss = self._loss(out, t, w, sc, space)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                sched.step()
                step += 1
                steps_done_now += 1
                over_time = bool(tc.max_minutes and self._elapsed() > tc.max_minutes * 60)
                lsum, n_cancel, n_time = self._agree(float(loss.detach()), self._cancel.is_set(), over_time)
                lv = lsum / self.world_size
                if not math.isfinite(lv):
                    stopped = "diverged"
                    break
                losses.append(lv)
                if n_cancel > 0:
                    stopped = "cancelled"
                    break
                if n_time > 0:
                    stopped = "time"
                    break
            if stopped in ("cancelled", "diverged") or not losses:
                break
            val = self._validate(space) if self.rank == 0 else None
            val = self._from_rank0(val)
            tr = float(np.mean(losses))
            self.history["train_loss"].append(tr)
            self.history["val_loss"].append(val)
            self.history["lr"].append(float(opt.param_groups[0]["lr"]))
            self.history["loss_space"].append(space)
            self.history["epoch_s"].append(time.monotonic() - t_ep)
            score = val if val is not None else tr
            if score < best["val"]:
                best = {"val": score, "epoch": epoch, "space": space,
                        "state": {k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()}}
                stale = 0
            else:
                stale += 1
            self.history["best_epoch"], self.history["best_val"] = int(best["epoch"]), float(best["val"])
            el = self._elapsed()
            self._emit("epoch", epoch=epoch, epochs=tc.epochs, step=step, total_steps=total, train_loss=tr,
                       val_loss=val, elapsed_s=el,
                       eta_s=(time.monotonic() - self._t0) / max(1, steps_done_now) * (total - step))
            self._save_ddp_checkpoint(epoch, step, rng, opt, sched, scaler, best)
            if stopped == "time":
                self._emit("message", message=f"time budget of {tc.max_minutes:g} min reached after epoch {epoch + 1}")
                break
            if tc.patience and stale >= tc.patience and val is not None:
                self._emit("message", message=f"early stop: no validation improvement for {tc.patience} epochs")
                stopped = "early"
                break

        self.report = {
            "rank": self.rank, "world_size": self.world_size, "backend": self.backend, "device": str(self.device),
            "seed": rank_seed(tc.seed, self.rank), "steps": step, "first_batch_sha256": first_batch,
            "final_params_sha256": _params_digest(self.net), "stopped": stopped or "done",
        }
        self.history["ddp"] = {"world_size": self.world_size, "backend": self.backend,
                               "patches_per_step": self.world_size * int(tc.batch_size)}
        if best.get("state") is not None:
            self.net.load_state_dict(best["state"])
        self.net.eval()
        model = self._model()
        model._method = None
        if stopped == "diverged":
            self._emit("message", message="training diverged (non-finite loss); kept the best weights so far (try a lower train.lr)")
        self._emit("cancelled" if stopped == "cancelled" else "done", epoch=epoch, epochs=tc.epochs, step=step,
                   total_steps=total, val_loss=self.history.get("best_val"), elapsed_s=self._elapsed())
        self.stopped = stopped
        return model


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
