"""Trainer, losses, schedule, model files: known values, events, cancel / resume, budgets, 1D spectra."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from napari_xrd_denoise.config import Config
from napari_xrd_denoise import devices
from napari_xrd_denoise.devices import amp_dtype, available_devices, default_threads, resolve_device
from napari_xrd_denoise.errors import ConfigError, XRDError
from napari_xrd_denoise.inference import predict_stack
from napari_xrd_denoise.io.stack import ScanStack
from napari_xrd_denoise.losses import link_rate, masked_mse, poisson_deviance, poisson_nll
from napari_xrd_denoise.methods.base import Normalizer
from napari_xrd_denoise.model_file import DenoiserModel
from napari_xrd_denoise.training import MAX_ROLLBACKS, EpochBatches, Trainer, collapsed, cosine_factor, schedule_period

torch.set_num_threads(1)


def ring_frames(n=4, shape=(40, 40), dose=4.0, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    r = np.hypot(yy - shape[0] / 2, xx - shape[1] / 2)
    lam = dose * (0.3 + np.exp(-0.5 * ((r - shape[0] / 4) / 2) ** 2) + np.exp(-r / 8))
    return rng.poisson(np.broadcast_to(lam, (n,) + shape)).astype(np.uint32), lam


def quick(name="n2s", **kw):
    base = dict(name=name, width=4, depth=2, epochs=3, steps_per_epoch=6, train__batch_size=2, patch_size=24,
                patience=0, val_fraction=0.25, preview_every=0)
    base.update(kw)
    return Config().replace(**base)


# --- losses ----------------------------------------------------------------------------------------
def test_masked_mse_known_values():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    tgt = torch.tensor([[0.0, 0.0, 0.0, 100.0]])
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert masked_mse(pred, tgt, w).item() == pytest.approx((1 + 4 + 9) / 3)
    w2 = torch.tensor([[2.0, 0.0, 0.0, 0.0]])  # weights scale, the count divides
    assert masked_mse(pred, tgt, w2).item() == pytest.approx(2.0)
    z = masked_mse(pred, tgt, torch.zeros_like(w))
    assert z.item() == 0.0 and not torch.isnan(z)


def test_poisson_nll_known_values():
    rate = torch.tensor([1.0, 2.0, 0.5, 7.0])
    t = torch.tensor([0.0, 3.0, 1.0, 1e6])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0])
    expect = np.mean([1.0 - 0.0, 2.0 - 3 * math.log(2.0 + 1e-8), 0.5 - math.log(0.5 + 1e-8)])
    assert poisson_nll(rate, t, w).item() == pytest.approx(expect, rel=1e-6)
    assert poisson_nll(rate, t, torch.zeros(4)).item() == 0.0
    # deviance: 0 at rate == t, same gradient as the NLL
    assert poisson_deviance(torch.tensor([3.0, 1e-3]), torch.tensor([3.0, 0.0]), torch.ones(2)).item() == pytest.approx(5e-4, abs=1e-6)
    r1 = torch.tensor([1.5, 2.5], requires_grad=True)
    r2 = torch.tensor([1.5, 2.5], requires_grad=True)
    poisson_nll(r1, torch.tensor([1.0, 4.0]), torch.ones(2)).backward()
    poisson_deviance(r2, torch.tensor([1.0, 4.0]), torch.ones(2)).backward()
    torch.testing.assert_close(r1.grad, r2.grad)


def test_link_matches_normalizer():
    norm = Normalizer(mean=2.0, std=0.8)
    y = np.linspace(-5, 5, 11).astype(np.float32)
    a = link_rate(torch.from_numpy(y), norm.mean, norm.std, norm.transform).numpy()
    assert np.allclose(a, norm.link(y), rtol=1e-5)


def test_cosine_schedule_with_restarts():
    period = schedule_period(100, 2)
    assert period == 50
    assert cosine_factor(0, period) == pytest.approx(1.0)
    assert cosine_factor(25, period) == pytest.approx(0.505)
    assert cosine_factor(49, period) < 0.02
    assert cosine_factor(50, period) == pytest.approx(1.0)  # restart at the period boundary
    assert cosine_factor(100, period) == pytest.approx(1.0)


def test_trainer_steps_the_schedule_per_optimiser_step():
    frames, _ = ring_frames(n=2)
    cfg = quick(epochs=2, steps_per_epoch=5, restarts=2, lr=1e-2, val_fraction=0.0)
    tr = Trainer(cfg, ScanStack.from_array(frames))
    m = tr.run()
    # lr recorded at the end of each epoch: 5 steps into each 5-step cycle -> restarted to the top
    assert m.history["lr"] == pytest.approx([1e-2, 1e-2])
    cfg = quick(epochs=2, steps_per_epoch=5, restarts=1, lr=1e-2, val_fraction=0.0)
    m = Trainer(cfg, ScanStack.from_array(frames)).run()
    assert m.history["lr"][0] == pytest.approx(1e-2 * cosine_factor(5, 10))


# --- devices ----------------------------------------------------------------------------------------
def test_devices():
    dev, msg = resolve_device("cpu")
    assert dev.type == "cpu" and msg == ""
    assert available_devices()[0][0] == "cpu"
    assert default_threads() >= 1
    with pytest.raises(ConfigError, match="train.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        dev, msg = resolve_device("cuda")
        assert dev.type == "cpu" and "not available" in msg


def test_mixed_precision_choice(monkeypatch):
    assert amp_dtype(torch.device("cuda"), True) == torch.float16
    assert amp_dtype(torch.device("cuda"), False) is None
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: True)
    assert amp_dtype(torch.device("cpu"), True) == torch.bfloat16
    assert amp_dtype(torch.device("cpu"), False) is None
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: False)  # emulated bfloat16 is slower: float32
    assert amp_dtype(torch.device("cpu"), True) is None
    assert amp_dtype(torch.device("mps"), True) is None


@pytest.mark.parametrize("native", [True, False])
def test_cpu_training_precision(monkeypatch, native):
    """With native bfloat16 the network's convolutions run in bfloat16 while training (validation too),
    the weights stay float32, and the model still denoises; without it everything is float32."""
    monkeypatch.setattr(devices, "cpu_bf16_native", lambda: native)
    frames, lam = ring_frames(n=4, shape=(48, 48), dose=6.0)
    events, seen = [], set()
    tr = Trainer(quick(name="n2n-split", device="cpu", epochs=4, steps_per_epoch=15, lr=3e-3, width=8),
                 ScanStack.from_array(frames), callback=events.append)
    orig = tr._collate

    def collate(samples):
        out = orig(samples)
        for m in tr.net.modules():
            if isinstance(m, torch.nn.Conv2d) and not getattr(m, "_probe", False):
                m._probe = True
                m.register_forward_hook(lambda mod, inp, o: seen.add(o.dtype) if mod.training else None)
        return out

    tr._collate = collate
    m = tr.run()
    want = torch.bfloat16 if native else torch.float32
    assert seen == {want}
    assert all(p.dtype == torch.float32 for p in m.net.parameters())
    start = next(e.message for e in events if e.kind == "start")
    assert ("bfloat16 mixed precision" in start) == native
    out = np.asarray(predict_stack(m, ScanStack.from_array(frames)), dtype=np.float64)
    assert out.dtype == np.float64 and np.isfinite(out).all()
    err_raw = np.mean((np.sqrt(frames[0]) - np.sqrt(lam)) ** 2)
    err_den = np.mean((np.sqrt(np.maximum(out[0], 0)) - np.sqrt(lam)) ** 2)
    assert err_den < 0.5 * err_raw


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_trainer_reports_device_fallback():
    frames, _ = ring_frames(n=2)
    events = []
    tr = Trainer(quick(device="cuda", epochs=1, steps_per_epoch=2), ScanStack.from_array(frames), callback=events.append)
    assert tr.device.type == "cpu" and "CUDA" in tr.device_message
    tr.run()
    assert any(e.kind == "message" and "not available" in e.message for e in events)


# --- events, validation, budgets ---------------------------------------------------------------------
def test_events_and_best_model():
    frames, _ = ring_frames(n=4)
    events = []
    tr = Trainer(quick(epochs=3, steps_per_epoch=10, preview_every=10), ScanStack.from_array(frames), callback=events.append)
    m = tr.run()
    kinds = [e.kind for e in events]
    assert kinds[0] in ("start", "message") and kinds[-1] == "done"
    assert kinds.count("epoch") == 3 and "step" in kinds
    prev = [e for e in events if e.kind == "preview"]
    assert len(prev) == 3 and prev[0].preview.shape == (40, 40)
    ep = [e for e in events if e.kind == "epoch"]
    assert all(e.val_loss is not None and e.train_loss is not None for e in ep)
    assert m.history["best_val"] == pytest.approx(min(e.val_loss for e in ep))
    assert m.history["train_frames"] == 3 and m.history["val_frames"] == 1
    assert m.config.method.name == "n2s" and m.config.model.residual is False  # blind spot: no residual


@pytest.mark.parametrize("name", ["neighbors", "symmetry", "n2n-split"])
def test_previews_of_split_trained_methods(name):
    """Methods whose network also takes a binomial half (and context: neighbours, the partner image) preview
    through their own inference: the preview of the first frame arrives with the frame's shape, NaN exactly
    on its invalid pixels, and near its counts (was: the neighbour method crashed on the first preview)."""
    from napari_xrd_denoise.synthetic import make_scan

    scan = make_scan((3, 3), (48, 48), dose="mid", seed=2)
    cfg = quick(name=name, epochs=2, steps_per_epoch=6, preview_every=3, patch_size=32, width=8)
    if name == "symmetry":
        cfg.method.center = [float(c) for c in scan.center]
    events = []
    tr = Trainer(cfg, scan.to_stack(), callback=events.append)
    tr.run()
    assert getattr(tr.method, "split", True)  # the split variant (the default for these integer counts)
    prev = [e.preview for e in events if e.kind == "preview"]
    assert len(prev) == 4
    p = prev[-1]
    assert p.shape == (48, 48) and np.array_equal(np.isfinite(p), scan.valid)
    ratio = np.nansum(p) / scan.truth[0, 0][scan.valid].sum()
    assert 0.5 < ratio < 2.0, ratio


def test_validation_loss_is_deterministic():
    frames, _ = ring_frames(n=3)
    cfg = quick(epochs=1, steps_per_epoch=3)
    a = Trainer(cfg, ScanStack.from_array(frames)).run().history["val_loss"]
    b = Trainer(cfg, ScanStack.from_array(frames)).run().history["val_loss"]
    assert a == b


def test_single_frame_holds_out_pixels():
    frames, _ = ring_frames(n=1, shape=(48, 48))
    tr = Trainer(quick(name="n2n-split", epochs=2), ScanStack.from_array(frames))
    m = tr.run()
    assert tr.holdout is not None and 0 < tr.holdout.mean() < 0.5
    assert all(v is not None for v in m.history["val_loss"])
    s_train = tr._draw(0, np.random.default_rng(0), "poisson", False, True, start=(0, 0))
    s_val = tr._draw(0, np.random.default_rng(0), "poisson", False, False, start=(0, 0))
    hold = tr.holdout[:24, :24]
    assert np.all(s_train.weight[hold] == 0) and np.all(s_val.weight[~hold] == 0)


def _fake_validation(tr, vals, states):
    """Make ``tr`` validate as usual but report the losses ``vals``, keeping each epoch's weights in ``states``."""
    orig = tr._validate

    def fake(space):
        orig(space)
        states.append({k: v.clone() for k, v in tr.net.state_dict().items()})
        return next(vals)

    tr._validate = fake


def test_early_stopping_restores_the_best_epoch():
    frames, _ = ring_frames(n=3)
    events = []
    tr = Trainer(quick(epochs=10, steps_per_epoch=3, patience=2, lr=1e-2), ScanStack.from_array(frames), callback=events.append)
    states = []
    _fake_validation(tr, iter([1.0, 0.5, 0.7, 0.9, 0.2, 0.1]), states)  # best at epoch 1, two worse: stop after 3
    m = tr.run()
    assert m.history["val_loss"] == [1.0, 0.5, 0.7, 0.9]
    assert m.history["best_epoch"] == 1 and m.history["best_val"] == 0.5
    assert any("early stop" in e.message for e in events)
    for k, v in m.net.state_dict().items():
        torch.testing.assert_close(v.cpu(), states[1][k])


def test_collapse_is_judged_against_the_best_validation_loss():
    assert not collapsed(1.5, 0.5) and collapsed(1.51, 0.5)  # more than 3 times the best epoch's loss
    assert collapsed(float("nan"), 0.3) and collapsed(float("inf"), 0.3)
    assert not collapsed(None, 0.3)  # no validation: nothing to judge by
    assert not collapsed(5.0, math.inf) and not collapsed(5.0, 0.0)  # no best epoch yet; a perfect one


def test_a_collapsed_training_goes_on_from_the_best_weights_at_half_the_learning_rate():
    """A validation loss far above the best epoch's (the network's output driven to zero, where its gradient
    vanishes) restores the best epoch's weights, clears the optimiser's moments and halves the learning
    rate; training goes on and may still find a better epoch."""
    frames, _ = ring_frames(n=3)
    spe, epochs, lr = 3, 6, 1e-2
    restored = []
    tr = None

    def on_event(e):
        if e.kind == "message" and "collapsed" in e.message:
            restored.append(({k: v.clone() for k, v in tr.net.state_dict().items()}, e.message))

    tr = Trainer(quick(epochs=epochs, steps_per_epoch=spe, lr=lr), ScanStack.from_array(frames), callback=on_event)
    states = []
    _fake_validation(tr, iter([1.0, 0.5, 0.6, 5.0, 0.4, 0.45]), states)
    m = tr.run()
    assert m.history["rollbacks"] == [3]
    (state, message), = restored
    assert "epoch 4" in message and "epoch 2" in message and "half the learning rate" in message
    for k, v in state.items():
        torch.testing.assert_close(v, states[1][k])  # the best epoch's weights, not the collapsed ones
    period = schedule_period(epochs * spe, 1)
    want = [lr * cosine_factor((e + 1) * spe, period) * (0.5 if e > 3 else 1.0) for e in range(epochs)]
    np.testing.assert_allclose(m.history["lr"], want, rtol=1e-6)
    assert m.history["best_epoch"] == 4
    for k, v in m.net.state_dict().items():
        torch.testing.assert_close(v.cpu(), states[4][k])


def test_training_that_keeps_collapsing_stops_with_the_best_weights():
    frames, _ = ring_frames(n=3)
    events = []
    tr = Trainer(quick(epochs=10, steps_per_epoch=2, lr=1e-2), ScanStack.from_array(frames), callback=events.append)
    states = []
    _fake_validation(tr, iter([1.0, 0.5] + [9.0] * (MAX_ROLLBACKS + 1) + [0.1] * 4), states)
    m = tr.run()
    assert m.history["rollbacks"] == list(range(2, 2 + MAX_ROLLBACKS))
    assert len(m.history["val_loss"]) == 3 + MAX_ROLLBACKS  # stopped at the collapse after the last rollback
    assert any("collapsed again" in e.message for e in events)
    assert m.history["best_epoch"] == 1
    for k, v in m.net.state_dict().items():
        torch.testing.assert_close(v.cpu(), states[1][k])


def test_time_budget_stops_training():
    frames, _ = ring_frames(n=2)
    events = []
    m = Trainer(quick(epochs=50, steps_per_epoch=4, max_minutes=1e-5), ScanStack.from_array(frames), callback=events.append).run()
    assert len(m.history["train_loss"]) == 1
    assert any("time budget" in e.message for e in events)


def test_eta_counts_down_to_the_time_budget():
    frames, _ = ring_frames(n=2)
    events = []
    budget_s = 2.0  # 10000 steps would take far longer: the budget ends the run, and the ETA says so
    Trainer(quick(epochs=1000, steps_per_epoch=10, max_minutes=budget_s / 60), ScanStack.from_array(frames),
            callback=events.append).run()
    timed = [e for e in events if e.kind in ("step", "epoch")]
    assert timed
    for e in timed:
        assert e.eta_s <= budget_s - e.elapsed_s + 1e-6 or e.eta_s == 0.0


# --- batches drawn ahead ------------------------------------------------------------------------------
def _batch_threads():
    return [t for t in threading.enumerate() if t.name.startswith("xrd-batches")]


@pytest.mark.parametrize("name", ["n2n-split", "n2s"])
def test_batches_drawn_ahead_train_exactly_as_drawn_in_the_loop(name):
    """train.prefetch draws the next batches in a thread; the patches, masks, splits and so the weights are
    bit for bit those of drawing each batch in the loop (previews read the frame cache meanwhile)."""
    frames, _ = ring_frames(n=4)
    runs = []
    for prefetch in (True, False):
        previews = []
        cfg = quick(name=name, epochs=3, steps_per_epoch=5, preview_every=2, prefetch=prefetch)
        m = Trainer(cfg, ScanStack.from_array(frames),
                    callback=lambda e: previews.append(e.preview) if e.kind == "preview" else None).run()
        runs.append((m, previews))
        assert not _batch_threads()
    (a, pa), (b, pb) = runs
    assert a.history["train_loss"] == b.history["train_loss"] and a.history["val_loss"] == b.history["val_loss"]
    for k, v in a.net.state_dict().items():
        assert torch.equal(v, b.net.state_dict()[k]), k
    assert len(pa) == len(pb) == 7 and all(np.array_equal(x, y, equal_nan=True) for x, y in zip(pa, pb))


def test_an_error_while_drawing_ahead_reaches_the_caller():
    frames, _ = ring_frames(n=4)
    tr = Trainer(quick(epochs=3, steps_per_epoch=5), ScanStack.from_array(frames))
    calls = {"n": 0}
    orig = tr.method.make_sample

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 17:  # second epoch, in the batch thread
            raise XRDError("frame 2 of ring frames: unreadable")
        return orig(*a, **kw)

    tr.method.make_sample = failing
    with pytest.raises(XRDError, match="frame 2 of ring frames: unreadable"):
        tr.run()
    assert not _batch_threads()


def test_epoch_batches_stay_at_most_depth_ahead_and_close_drops_the_rest():
    made, taken = [], []
    lock = threading.Lock()

    def draw():
        with lock:
            made.append(len(made))
            ahead = len(made) - len(taken)
        time.sleep(0.002)
        return ahead

    eb = EpochBatches(draw, n=10, depth=2)
    for _ in range(4):
        taken.append(1)
        assert eb.next() <= 3  # the batch being taken, and at most 2 more
    eb.close()
    assert 4 <= len(made) <= 6 and made == list(range(len(made)))
    plain = EpochBatches(lambda: "b", n=3, depth=0)  # depth 0: drawn in the caller's thread, on demand
    assert [plain.next() for _ in range(3)] == ["b"] * 3
    plain.close()


# --- cancel / resume ---------------------------------------------------------------------------------
def test_cancel_before_the_first_epoch_makes_no_model(tmp_path):
    """Stopped inside the first epoch there are no trained weights: the trainer raises Cancelled (after a
    'cancelled' event) instead of returning the untrained network as if it were a result, and writes no
    checkpoint; a run stopped after an epoch still returns its best model (test below)."""
    from napari_xrd_denoise.errors import Cancelled

    frames, _ = ring_frames(n=4, shape=(64, 64))
    ckpt = tmp_path / "ck.pt"
    events = []
    tr = Trainer(quick(epochs=3, steps_per_epoch=50, width=8, patch_size=48), ScanStack.from_array(frames),
                 checkpoint=ckpt, callback=lambda e: (events.append(e), e.kind == "step" and e.step >= 3 and tr.cancel()))
    with pytest.raises(Cancelled, match="before its first epoch finished"):
        tr.run()
    assert events[-1].kind == "cancelled" and "no new model" in events[-1].message
    assert not ckpt.exists() and tr.stopped == "cancelled"


def test_divergence_in_the_first_epoch_is_an_error_not_a_model():
    frames, _ = ring_frames(n=4, shape=(48, 48))
    tr = Trainer(quick(epochs=2, steps_per_epoch=4), ScanStack.from_array(frames))
    tr.method.loss = lambda out, *a, **k: out.float().sum() * float("nan")
    with pytest.raises(XRDError, match="diverged.*no model was made.*train.lr"):
        tr.run()


def test_cancel_returns_quickly_and_resume_continues(tmp_path):
    frames, _ = ring_frames(n=4, shape=(64, 64))
    ckpt = tmp_path / "ck.pt"
    cfg = quick(epochs=6, steps_per_epoch=8, width=8, patch_size=48)
    stack = ScanStack.from_array(frames)
    steps = []
    tr = Trainer(cfg, stack, checkpoint=ckpt, callback=lambda e: steps.append(e.step) if e.kind == "step" else None)
    cancelled_at = {}

    def canceller():
        while not steps or steps[-1] < 12:  # inside the second epoch, after one checkpoint
            time.sleep(0.005)
        cancelled_at["t"] = time.monotonic()
        tr.cancel()

    th = threading.Thread(target=canceller)
    th.start()
    model = tr.run()
    returned = time.monotonic()
    th.join()
    assert returned - cancelled_at["t"] < 1.0
    assert isinstance(model, DenoiserModel) and ckpt.is_file()
    done_epochs = len(model.history["train_loss"])
    assert 1 <= done_epochs < 6

    events = []
    tr2 = Trainer(cfg, stack, checkpoint=ckpt, resume=True, callback=events.append)
    m2 = tr2.run()
    start = next(e for e in events if e.kind == "start")
    assert start.epoch == done_epochs and start.step == done_epochs * 8
    assert len(m2.history["train_loss"]) == 6
    assert [e.epoch for e in events if e.kind == "epoch"] == list(range(done_epochs, 6))


def test_resume_without_checkpoint_is_an_error(tmp_path):
    frames, _ = ring_frames(n=2)
    with pytest.raises(XRDError, match="checkpoint"):
        Trainer(quick(), ScanStack.from_array(frames), checkpoint=tmp_path / "none.pt", resume=True)


def test_saved_loss_space_follows_the_data(tmp_path):
    frames, _ = ring_frames(n=3)
    m = Trainer(quick(name="n2n-frames"), ScanStack.from_array(frames)).run()
    assert m.config.method.loss == "poisson"  # counts: the Poisson loss
    smooth = frames.astype(np.float32) * 0.37  # not counts
    events = []
    m2 = Trainer(quick(name="n2n-frames", loss="poisson"), ScanStack.from_array(smooth), callback=events.append).run()
    assert m2.config.method.loss == "mse"
    assert any("integer counts" in e.message for e in events if e.kind == "message")
    m3 = DenoiserModel.load(m2.save(tmp_path / "m.pt"))
    assert m3.method.loss_space(None) == "mse"


# --- model files --------------------------------------------------------------------------------------
def test_model_round_trip(tmp_path):
    frames, _ = ring_frames(n=3)
    stack = ScanStack.from_array(frames)
    m = Trainer(quick(name="n2n-split"), stack).run()
    p = m.save(tmp_path / "model.pt")
    m2 = DenoiserModel.load(p, device="cpu")
    assert m2.config.to_dict() == m.config.to_dict() and m2.norm == m.norm and m2.version == m.version
    assert m2.history["best_epoch"] == m.history["best_epoch"]
    a = m.denoise_frames(frames[:2])
    b = m2.denoise_frames(frames[:2])
    assert np.array_equal(a, b, equal_nan=True)
    assert np.array_equal(predict_stack(m, stack), predict_stack(m2, stack), equal_nan=True)


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "notes.pt"
    bad.write_text("hello")
    with pytest.raises(XRDError, match="notes.pt"):
        DenoiserModel.load(bad)
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(XRDError, match="weights.pt"):
        DenoiserModel.load(other)
    with pytest.raises(XRDError, match="missing.pt"):
        DenoiserModel.load(tmp_path / "missing.pt")


def test_fine_tune_from_saved_model(tmp_path):
    frames, _ = ring_frames(n=3)
    stack = ScanStack.from_array(frames)
    m = Trainer(quick(width=6), stack).run()
    cfg = quick(width=16, epochs=1, lr=1e-8)  # the saved architecture wins over the new config
    m2 = Trainer(cfg, stack, init_model=m).run()
    assert m2.config.model.width == 6 and m2.norm == m.norm
    a, b = m.denoise_frames(frames[:1]), m2.denoise_frames(frames[:1])
    assert np.allclose(a, b, rtol=1e-3, atol=1e-3, equal_nan=True)


# --- 1D -----------------------------------------------------------------------------------------------
def test_1d_n2n_frames_on_spectra():
    rng = np.random.default_rng(0)
    ch = np.arange(256)
    lam = 1.0 + 30 * np.exp(-0.5 * ((ch - 80) / 3) ** 2) + 12 * np.exp(-0.5 * ((ch - 170) / 5) ** 2)
    spectra = rng.poisson(np.broadcast_to(lam, (8, 256))).astype(np.int64)
    stack = ScanStack.from_array(spectra, frame_ndim=1)
    # the spectra defaults (config.SPECTRA_DEFAULTS: 1D DnCNN, Poisson loss) fill in what is not given
    cfg = Config().replace(epochs=10, patience=0, preview_every=0, data__ndim=1)
    m = Trainer(cfg, stack).run()
    assert m.config.method.name == "n2n-frames" and m.config.data.ndim == 1
    assert m.config.model.arch == "dncnn" and m.config.method.loss == "poisson"
    out = predict_stack(m, stack)
    assert out.shape == spectra.shape
    err_raw = np.sqrt(np.mean((spectra - lam) ** 2))
    err_out = np.sqrt(np.mean((out - lam) ** 2))
    assert err_out < 0.6 * err_raw, (err_raw, err_out)


def test_single_frame_method_on_a_scan_grid_gets_the_neighbours_tip():
    frames, _ = ring_frames(n=6, shape=(24, 24))
    grid = frames.reshape((2, 3) + frames.shape[1:])

    def tips(stack, **kw):
        events = []
        Trainer(quick(name="n2n-split", epochs=1, steps_per_epoch=1, **kw), stack, callback=events.append).run()
        return [e.message for e in events if e.kind == "message" and "scan grid" in (e.message or "")]

    got = tips(ScanStack.from_array(grid, frame_ndim=2))
    assert len(got) == 1 and "2x3 scan grid" in got[0] and "neighbors" in got[0]
    assert tips(ScanStack.from_array(frames)) == []  # a flat stack: no grid known
    assert "3x2 scan grid" in tips(ScanStack.from_array(frames), data__scan_shape=(3, 2))[0]
    events = []  # the neighbour method itself, and repeats (n2n-frames), get no tip
    Trainer(quick(name="neighbors", epochs=1, steps_per_epoch=1), ScanStack.from_array(grid, frame_ndim=2),
            callback=events.append).run()
    assert not any("scan grid" in (e.message or "") for e in events if e.kind == "message")


def test_trainings_started_at_once_in_threads_keep_their_seed():
    """The initial weights come from torch's process-wide generator: two trainings in threads with one
    seed must give the model that seed gives alone."""
    import threading

    import napari_xrd_denoise as xd
    from napari_xrd_denoise.synthetic import make_scan

    s = make_scan(scan_shape=(2,), frame_shape=(64, 64), dose="mid", seed=1)
    kw = dict(method="n2s", epochs=1, train__steps_per_epoch=4, train__batch_size=2, patch_size=32, width=8,
              depth=2, device="cpu", seed=3, val_fraction=0.0, threads=1)
    alone = xd.train(s.counts, **kw).net.state_dict()
    got = [None, None]

    def job(i):
        got[i] = xd.train(s.counts, **kw).net.state_dict()

    ts = [threading.Thread(target=job, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for sd in got:
        assert all(torch.equal(sd[k], alone[k]) for k in alone)
