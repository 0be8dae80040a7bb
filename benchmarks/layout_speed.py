"""Time the default U-Net with the default (NCHW) and the channels-last memory layout, and in mixed precision.

Prints the median of ``--repeats`` timings of

* one training step (AdamW, MSE) on a batch of ``--batch`` patches of ``--patch`` pixels, with
  ``--train-threads`` torch threads (the trainer's default on a 2-core machine is 1);
* inference on ``--frame`` x ``--frame`` frames with network batches of 1, 2 and 4 frames (torch's
  default thread count, as the predictor uses),

for each layout and the ratio. The package uses channels-last for 2D networks on CPUs and CUDA
(``models.channels_last``) and one frame per network call on a CPU (``model_file._run_network_once``).

Then the channels-last network again under autocast to the reduced precision (bfloat16 on a CPU,
float16 on CUDA; the loss in float32), with the ratio to float32, and whether this CPU computes
bfloat16 natively (``devices.cpu_bf16_native``): only then does the trainer train in bfloat16
(``train.amp``), since emulated bfloat16 is slower than float32.

Usage::

    python benchmarks/layout_speed.py [--device cpu] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from napari_xrd_denoise.config import ModelConfig
from napari_xrd_denoise.devices import amp_dtype, cpu_bf16_native
from napari_xrd_denoise.models import build_model


def _median_time(fn, repeats: int, sync) -> float:
    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _forward(net, x, ctx):
    with ctx():
        return net(x)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frame", type=int, default=512)
    ap.add_argument("--train-threads", type=int, default=1)
    a = ap.parse_args(argv)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cfg = ModelConfig()
    print(f"U-Net depth {cfg.depth} width {cfg.width}, device {dev}, torch {torch.__version__}, "
          f"median of {a.repeats}")
    rows = []
    default_threads = torch.get_num_threads()
    low = torch.float16 if dev.type == "cuda" else torch.bfloat16
    low_name = str(low).replace("torch.", "")
    for layout, dtype in (("NCHW", None), ("channels-last", None), (f"c-last {low_name}", low)):
        fmt = torch.contiguous_format if layout == "NCHW" else torch.channels_last

        def ctx():
            return torch.autocast(device_type=dev.type, dtype=dtype or torch.float32, enabled=dtype is not None)

        torch.manual_seed(0)
        net = build_model(cfg, 2, in_channels=1).to(dev).to(memory_format=fmt)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x = torch.randn(a.batch, 1, a.patch, a.patch, device=dev).contiguous(memory_format=fmt)
        t = torch.randn(a.batch, a.patch, a.patch, device=dev)

        def step():
            opt.zero_grad(set_to_none=True)
            with ctx():
                out = net(x)
            loss = ((out.float().reshape(t.shape) - t) ** 2).mean()
            loss.backward()
            opt.step()

        if dev.type == "cpu":
            torch.set_num_threads(max(1, a.train_threads))
        net.train()
        ts = _median_time(step, a.repeats, sync)
        torch.set_num_threads(default_threads)
        net.eval()
        inf = {}
        with torch.inference_mode():
            for b in (1, 2, 4):
                xi = torch.randn(b, 1, a.frame, a.frame, device=dev).contiguous(memory_format=fmt)
                inf[b] = _median_time(lambda: _forward(net, xi, ctx), a.repeats, sync) / b
        rows.append((layout, ts, inf))
        print(f"{layout:>14}: training step {ts * 1e3:7.1f} ms ({a.batch}x{a.patch}x{a.patch}, "
              f"{a.train_threads if dev.type == 'cpu' else '-'} thread(s)); inference per frame "
              + ", ".join(f"batch {b}: {v * 1e3:.1f} ms" for b, v in inf.items()))
    (_, t0, i0), (_, t1, i1), (_, t2, i2) = rows
    print(f"channels-last speed-up: training x{t0 / t1:.2f}; inference "
          + ", ".join(f"batch {b} x{i0[b] / i1[b]:.2f}" for b in i0)
          + f"; best CPU/GPU choice per frame: {min(i1, key=i1.get)} frame(s) per call")
    chosen = amp_dtype(dev, True)
    print(f"{low_name} over float32 (channels-last): training x{t1 / t2:.2f}; inference "
          + ", ".join(f"batch {b} x{i1[b] / i2[b]:.2f}" for b in i1)
          + (f"; native bfloat16 on this CPU: {cpu_bf16_native()}" if dev.type == "cpu" else "")
          + f"; the trainer's precision here: {str(chosen).replace('torch.', '') if chosen else 'float32'}")


if __name__ == "__main__":
    main()
