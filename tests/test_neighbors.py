"""Neighbour-scan blind spot: neighbour tables, the blind spot, the loss, training, leak-free refinement."""

import dataclasses

import numpy as np
import pytest

from napari_xrd_denoise.config import Config
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.io.stack import ScanStack
from napari_xrd_denoise.methods.base import FrameSource, Normalizer
from napari_xrd_denoise.physics.neighbors import lattice_labels, neighbor_indices, neighbor_offsets


# --------------------------------------------------------------------------------------------------
# neighbour tables
# --------------------------------------------------------------------------------------------------
def test_neighbours_of_a_3x5_scan():
    # flat index = 5 * row + col; out-of-grid offsets are reflected through the position itself
    nb8 = neighbor_indices((3, 5), 8)
    assert nb8.shape == (15, 8)
    expected8 = {
        0: [6, 5, 6, 1, 1, 6, 5, 6],  # corner (0, 0)
        4: [8, 9, 8, 3, 3, 8, 9, 8],  # corner (0, 4)
        7: [1, 2, 3, 6, 8, 11, 12, 13],  # interior (1, 2)
        10: [6, 5, 6, 11, 11, 6, 5, 6],  # corner (2, 0)
        14: [8, 9, 8, 13, 13, 8, 9, 8],  # corner (2, 4)
        2: [6, 7, 8, 1, 3, 6, 7, 8],  # top edge (0, 2)
        9: [3, 4, 3, 8, 8, 13, 14, 13],  # right edge (1, 4)
    }
    for pos, exp in expected8.items():
        assert nb8[pos].tolist() == exp, pos
    nb4 = neighbor_indices((3, 5), 4)
    expected4 = {0: [5, 1, 1, 5], 4: [9, 3, 3, 9], 7: [2, 6, 8, 12], 12: [7, 11, 13, 7], 14: [9, 13, 13, 9]}
    for pos, exp in expected4.items():
        assert nb4[pos].tolist() == exp, pos
    # a non-square scan is not its transpose: (5, 3) gives other neighbours
    assert neighbor_indices((5, 3), 8)[7].tolist() == [3, 4, 5, 6, 8, 9, 10, 11]


@pytest.mark.parametrize("n, k", [(4, 1), (8, 1), (24, 2)])
def test_offset_counts_and_no_self_neighbour(n, k):
    offs = neighbor_offsets(n)
    assert offs.shape == (n, 2) and not np.any((offs == 0).all(axis=1))
    assert np.abs(offs).max() == k and len({tuple(o) for o in offs}) == n
    for shape in [(4, 4), (5, 9), (9, 5), (7, 4), (1, 30), (30, 1)]:
        if min(shape) == 1 and max(shape) < n:
            continue
        nb = neighbor_indices(shape, n)
        total = shape[0] * shape[1]
        assert nb.shape == (total, n)
        assert nb.min() >= 0 and nb.max() < total
        assert not np.any(nb == np.arange(total)[:, None])  # a position is never its own neighbour
        lab = lattice_labels(shape, n)
        assert not np.any(lab[nb] == lab[:, None])  # proper sub-lattice colouring
    # interior positions have exactly the offsets (row-major scan of 9 x 11)
    nb = neighbor_indices((9, 11), n)
    r, c = 4, 5
    got = sorted(nb[r * 11 + c].tolist())
    assert got == sorted(((r + offs[:, 0]) * 11 + c + offs[:, 1]).tolist())


def test_line_scan_fallback_and_too_small_scans():
    assert neighbor_indices((1, 6), 4)[0].tolist() == [2, 1, 1, 2]
    assert neighbor_indices((6,), 4)[5].tolist() == [3, 4, 4, 3]
    with pytest.raises(XRDError, match="--scan-shape"):
        neighbor_indices((3, 5), 24)
    with pytest.raises(XRDError, match="--scan-shape"):
        neighbor_indices((1, 3), 4)
    with pytest.raises(XRDError, match="--scan-shape"):
        neighbor_indices((1, 1), 8)


# --------------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------------
def _labelled_stack(rows=3, cols=5, size=16):
    """Frame k holds the constant count k + 1: a frame's identity can be read from its pixels."""
    frames = np.stack([np.full((size, size), k + 1, np.uint16) for k in range(rows * cols)])
    return ScanStack.from_array(frames.reshape(rows, cols, size, size))


def _method(**kw):
    from napari_xrd_denoise.methods.neighbors import METHOD, NeighborScan

    assert METHOD is NeighborScan
    if "combine_split" not in kw:
        kw["method__combine_split"] = False  # the plain (founding) mode unless a test asks
    cfg = Config().replace(method__name="neighbors", **kw)
    return NeighborScan(cfg, frame_ndim=2, norm=Normalizer(mean=3.0, std=2.0))


@pytest.mark.parametrize("n", [4, 8])
def test_input_never_contains_the_centre_frame(n):
    stack = _labelled_stack()
    m = _method(neighbors=n)
    m.check(stack)
    src = FrameSource(stack)
    m.attach(src)
    table = neighbor_indices((3, 5), n)
    assert m.in_channels == n
    rng = np.random.default_rng(0)
    for i in range(15):
        arrays = m.load(i, src)
        ids = m.load_infer(i, src)["context"][:, 0, 0].astype(int) - 1
        assert ids.tolist() == table[i].tolist()
        assert i not in ids
        s = m.make_sample(arrays, rng, "poisson")
        assert s.input.shape == (n, 16, 16)
        back = np.rint(((s.input * 2.0 + 3.0) / 2.0) ** 2 - 0.375).astype(int) - 1  # frame ids from the input
        assert i not in np.unique(back)
        assert np.all(s.target == i + 1) and s.weight.all()


def test_combine_n2s_hides_the_centre_where_the_loss_is():
    stack = _labelled_stack()
    m = _method(neighbors=4, combine_n2s=True, replace="zero")
    m.check(stack)
    src = FrameSource(stack)
    m.attach(src)
    assert m.in_channels == 5
    s = m.make_sample(m.load(7, src), np.random.default_rng(1), "mse")
    w = s.weight > 0
    assert w.sum() == 16 * 16 // 16  # one grid phase of width 4
    assert np.all(s.input[-1][w] == 0.0)  # hidden centre pixels replaced by the neutral value


def test_combine_split_feeds_one_half_of_the_centre_and_targets_the_other():
    stack = _labelled_stack()
    m = _method(neighbors=4, combine_split=True)
    m.check(stack)
    src = FrameSource(stack)
    m.attach(src)
    assert m.in_channels == 5
    assert m.loss_space(0) == "poisson"  # no MSE warm-up: the split target is counts from the start
    rng = np.random.default_rng(4)
    swapped = set()
    for i in (0, 7, 14):
        s = m.make_sample(m.load(i, src), rng, "poisson")
        assert s.input.shape == (5, 16, 16)
        half = ((s.input[-1] * 2.0 + 3.0) / 2.0) ** 2 - 0.375  # inverse Anscombe of the last channel: a / p
        p_in = 1.0 - s.scale
        swapped.add(round(float(s.scale), 3))
        a = np.rint(half * p_in)
        np.testing.assert_allclose(half * p_in, a, atol=1e-3)  # whole counts once scaled back
        np.testing.assert_array_equal(a + s.target, i + 1)  # the two halves add up to the frame
        assert s.weight.all()
        ids = np.rint(((s.input[:4, 0, 0] * 2.0 + 3.0) / 2.0) ** 2 - 0.375).astype(int) - 1
        assert i not in ids  # the neighbours are still other frames
    assert swapped <= {0.5}


def test_combine_split_needs_counts_and_excludes_combine_n2s():
    floats = ScanStack.from_array(np.random.default_rng(0).random((3, 4, 16, 16)).astype(np.float32) * 5)
    with pytest.raises(XRDError, match="combine_split"):
        _method(combine_split=True).check(floats)
    with pytest.raises(XRDError, match="choose one"):
        _method(combine_split=True, combine_n2s=True).check(_labelled_stack())


def test_method_needs_a_2d_scan_grid():
    flat = ScanStack.from_array(np.ones((15, 16, 16), np.uint16))
    m = _method()
    with pytest.raises(XRDError, match="--scan-shape"):
        m.check(flat)
    small = ScanStack.from_array(np.ones((3, 3, 16, 16), np.uint16))
    with pytest.raises(XRDError, match="--scan-shape"):
        _method(neighbors=24).check(small)


def test_poisson_only_for_integer_counts_after_warmup():
    ints = ScanStack.from_array(np.random.default_rng(2).poisson(3.0, (3, 4, 16, 16)).astype(np.uint16))
    m = _method(warmup_epochs=2)
    m.check(ints)
    assert [m.loss_space(e) for e in range(4)] == ["mse", "mse", "poisson", "poisson"]
    m.begin_epoch(0)
    assert m.mc.loss == "mse" and m.loss_space(None) == "mse"
    m.begin_epoch(2)
    assert m.mc.loss == "poisson" and m.loss_space(None) == "poisson"
    floats = ScanStack.from_array(np.random.default_rng(2).gamma(2.0, 1.5, (3, 4, 16, 16)).astype(np.float32))
    m = _method(warmup_epochs=2)
    m.check(floats)
    assert [m.loss_space(e) for e in range(4)] == ["mse"] * 4
    m = _method(loss="poisson")
    m.check(floats)
    assert m.loss_space(5) == "mse" and m.messages


def test_poisson_loss_with_count_constraints():
    torch = pytest.importorskip("torch")
    from napari_xrd_denoise.losses import link_rate, poisson_deviance

    m = _method()
    norm = m.norm
    t = torch.from_numpy(np.random.default_rng(3).poisson(4.0, (2, 1, 8, 8)).astype(np.float32)) + 1.0
    w = torch.ones_like(t)
    w[0, 0, :2] = 0.0
    sc = torch.ones(2, 1, 1, 1)

    def out_for(rate):  # network output whose link gives ``rate``
        s = 2.0 * torch.sqrt(rate)
        u = s + torch.log(-torch.expm1(-s))  # softplus inverse
        return (u - norm.mean) / norm.std

    r = t.clone()
    assert torch.allclose(link_rate(out_for(r), norm.mean, norm.std, "anscombe"), r, rtol=1e-4)
    assert float(m.loss(out_for(r), t, w, sc, "poisson")) < 1e-4
    r2 = 1.1 * t
    got = float(m.loss(out_for(r2), t, w, sc, "poisson"))
    dev = float(poisson_deviance(r2, t, w))
    n = w.sum(dim=(1, 2, 3))
    st = (t * w).sum(dim=(1, 2, 3))
    d = 0.1 * st
    expected = dev + float((0.02 * (d / n) ** 2).mean() + (0.01 * d * d / (st * n)).mean())
    assert got == pytest.approx(expected, rel=1e-3)
    assert float(m.loss(out_for(r2), t, w, sc, "mse")) > 0


def _short_training(scan_shape, dose, seed, **cfg_kw):
    """Train the neighbours method briefly on a synthetic scan; ``(trainer, model, scan, valid, psnr)``."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_xrd_denoise.synthetic import make_scan
    from napari_xrd_denoise.training import Trainer

    scan = make_scan(scan_shape, (64, 64), dose=dose, seed=seed)
    stack = scan.to_stack()
    valid = stack.valid(scan.counts)
    truth = scan.truth

    def psnr(x):
        e = np.sqrt(np.maximum(x[valid], 0)) - np.sqrt(truth[valid])
        return 20 * np.log10(np.sqrt(truth[valid]).max() / np.sqrt(np.mean(e**2)))

    cfg_kw.setdefault("combine_split", False)  # the plain blind-spot mode unless a test asks
    kw = dict(method__name="neighbors", epochs=4, steps_per_epoch=20, train__batch_size=4, patch_size=48,
              width=12, depth=2, lr=3e-3, val_fraction=0.1, patience=0, seed=1, threads=1)
    cfg = Config().replace(**{**kw, **cfg_kw})
    tr = Trainer(cfg, stack)
    return tr, tr.run(), scan, stack, valid, psnr


def _check_denoised(model, scan, stack, valid, psnr):
    from napari_xrd_denoise.inference import predict_stack

    out = predict_stack(model, stack)
    assert out.shape == stack.shape
    assert np.isnan(out[~valid]).all() and np.isfinite(out[valid]).all()
    assert psnr(out) > psnr(scan.counts.astype(float)) + 6.0
    # counts are kept: the total over valid pixels within 5 %
    assert abs(np.nansum(out[valid]) / scan.truth[valid].sum() - 1.0) < 0.05


def test_short_training_on_a_scan_beats_raw():
    tr, model, scan, stack, valid, psnr = _short_training((6, 6), "low", 5, warmup_epochs=1)
    assert tr.history["loss_space"] == ["mse", "poisson", "poisson", "poisson"]
    assert model.config.method.loss == "poisson"
    _check_denoised(model, scan, stack, valid, psnr)


def test_short_training_with_the_split_centre_beats_raw_and_keeps_counts():
    # median count 2: no residual path (auto), which needs more than the 80 steps the residual form did
    tr, model, scan, stack, valid, psnr = _short_training((5, 5), "mid", 6, combine_split=True, neighbors=4, epochs=8)
    assert model.config.model.residual is False
    assert tr.history["loss_space"] == ["poisson"] * 8
    _check_denoised(model, scan, stack, valid, psnr)


def test_the_first_convolution_is_widened_for_the_neighbour_channels_and_old_files_still_load():
    """8 neighbours and the centre frame's half are 9 input channels: the trainer saves the stem width it
    chose (18 here), and a model file written before ``model.stem_width`` existed loads with its own first
    block (``width`` channels) and gives that network's outputs."""
    import dataclasses
    import json

    import torch

    from napari_xrd_denoise.model_file import DenoiserModel
    from napari_xrd_denoise.models import build_model

    tr, model, scan, stack, valid, psnr = _short_training((3, 5), "mid", 3, combine_split=True, epochs=1,
                                                          steps_per_epoch=2)
    mc = model.config.model
    assert (mc.in_channels, mc.width, mc.stem_width) == (9, 12, 18)
    assert (model.net.inc.c1.out_channels, model.net.inc.c2.in_channels, model.net.inc.c2.out_channels) == (18, 18, 12)
    d = model.to_dict()
    assert DenoiserModel.from_dict(d, device="cpu").net.inc.c1.out_channels == 18

    old_cfg = json.loads(d["config"])
    del old_cfg["model"]["stem_width"]
    torch.manual_seed(0)
    old_net = build_model(dataclasses.replace(mc, stem_width=mc.width), 2, in_channels=9)
    loaded = DenoiserModel.from_dict(dict(d, config=json.dumps(old_cfg), state_dict=old_net.state_dict()), device="cpu")
    assert loaded.net.inc.c1.out_channels == 12
    x = torch.randn(1, 9, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(x), old_net(x))


def test_invalid_input_pixels_are_filled_from_their_own_channel_and_old_files_fill_nothing():
    """A saturated disc in every neighbour frame: the network input there is the frame's own smooth
    surroundings (a ramp continues across the disc), not the neutral 0; valid pixels are the plain network
    scale; the centre frame's invalid pixels carry no loss weight and come out NaN; a model file written
    before ``method.fill_invalid`` existed loads with the fill off."""
    import json

    from napari_xrd_denoise.methods.base import fill_invalid

    yy, xx = np.mgrid[0:32, 0:32]
    ramp = 20.0 + 2.0 * xx  # counts
    disc = (yy - 16) ** 2 + (xx - 12) ** 2 <= 16
    frames = np.stack([np.rint(ramp * (1.0 + 0.1 * k)) for k in range(9)]).astype(np.uint32)
    frames[:, disc] = np.iinfo(np.uint32).max  # invalid (saturated) in every frame
    stack = ScanStack.from_array(frames.reshape(3, 3, 32, 32))
    for fill in (True, False):
        m = _method(neighbors=8, fill_invalid=fill)
        m.check(stack)
        src = FrameSource(stack)
        m.attach(src)
        arrays = m.load(4, src)
        s = m.make_sample(arrays, np.random.default_rng(0), "mse")
        assert s.input.shape == (8, 32, 32) and not s.weight[disc].any() and s.weight[~disc].all()
        raw = m.load_infer(4, src)
        plain = m.norm.to_net(raw["context"], raw["context_valid"])
        np.testing.assert_array_equal(s.input[:, ~disc], plain[:, ~disc])
        if not fill:
            assert np.all(s.input[:, disc] == 0.0)
            continue
        # each channel continues its own ramp across the disc: within 10 % of the true value (the neutral
        # 0 is 100 % off here) and growing with x as the ramp does
        for ch, k in enumerate(m.neighbors_of(4, src)):
            want = m.norm.to_net(ramp * (1.0 + 0.1 * k), np.ones((32, 32), bool))
            err = np.abs(s.input[ch][disc] - want[disc])
            assert err.max() < 0.1 * np.abs(want[disc]).min(), (ch, err.max())
            row = s.input[ch][16, 8:17]
            assert np.all(np.diff(row) > 0)

    z = np.stack([np.full((8, 8), -3.0), np.full((8, 8), 5.0)]).astype(np.float32)
    v = np.ones_like(z, bool)
    v[0, 2:5, 2:5] = False
    v[1] = False  # a channel without one valid pixel keeps the neutral 0
    f = fill_invalid(z, v, 2)
    np.testing.assert_allclose(f[0], -3.0, rtol=1e-5)
    assert np.all(f[1] == 0.0)
    # 1D frames (spectra): filled along the last axis only, each row from itself
    s1 = np.stack([np.linspace(0.0, 1.0, 64), np.full(64, 2.0)]).astype(np.float32)
    v1 = np.ones_like(s1, bool)
    v1[:, 30:34] = False
    f1 = fill_invalid(s1, v1, 1)
    np.testing.assert_allclose(f1[1], 2.0, rtol=1e-5)
    assert np.all(np.abs(f1[0, 30:34] - s1[0, 30:34]) < 0.05) and np.array_equal(f1[v1], s1[v1])

    tr, model, *_ = _short_training((3, 5), "mid", 3, combine_split=True, epochs=1, steps_per_epoch=2)
    assert model.config.method.fill_invalid is True
    from napari_xrd_denoise.model_file import DenoiserModel

    d = model.to_dict()
    old_cfg = json.loads(d["config"])
    del old_cfg["method"]["fill_invalid"]
    assert DenoiserModel.from_dict(dict(d, config=json.dumps(old_cfg)), device="cpu").config.method.fill_invalid is False
    assert DenoiserModel.from_dict(d, device="cpu").config.method.fill_invalid is True


def test_the_blind_spot_channel_is_never_filled():
    """With ``combine_n2s`` the centre frame's channel holds hidden pixels: filling its invalid pixels from
    their surroundings would carry hidden values into the input, so that channel keeps the neutral 0."""
    frames = np.full((9, 16, 16), 7, np.uint16)
    frames[:, 5:8, 5:8] = np.iinfo(np.uint16).max
    stack = ScanStack.from_array(frames.reshape(3, 3, 16, 16))
    m = _method(neighbors=8, combine_n2s=True, replace="zero")
    m.check(stack)
    src = FrameSource(stack)
    m.attach(src)
    bad = np.zeros((16, 16), bool)
    bad[5:8, 5:8] = True
    s = m.make_sample(m.load(4, src), np.random.default_rng(1), "mse")
    assert np.all(s.input[-1][bad] == 0.0)
    assert np.allclose(s.input[:-1][:, bad], m.norm.to_net(np.full(1, 7.0), None)[0], atol=1e-4)


# --------------------------------------------------------------------------------------------------
# leak-free refinement
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def refined():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_xrd_denoise.refine import refine
    from napari_xrd_denoise.synthetic import make_scan

    scan = make_scan((4, 5), (32, 32), dose="mid", seed=1)
    stack = scan.to_stack()
    cfg = Config().replace(
        method__name="neighbors", cycles=3, epochs=2, steps_per_epoch=4, train__batch_size=4, patch_size=32,
        width=8, depth=2, warmup_epochs=1, val_fraction=0.1, patience=0, threads=1,
    )
    return scan, stack, refine(cfg, stack)


def _perturbed(scan, stack, pos):
    raw = scan.counts.copy()
    f = raw[pos]
    raw[pos] = np.where(f < np.iinfo(raw.dtype).max, f * 3 + 7, f)
    return ScanStack.from_array(raw, static_valid=stack.static_valid)


def test_refinement_prediction_at_i_never_depends_on_raw_frame_i(refined):
    from napari_xrd_denoise.refine import refine_predict

    scan, stack, res = refined
    assert len(res.models) == 3 and res.denoised.shape == stack.shape
    p = refine_predict(res.models, stack)
    np.testing.assert_array_equal(p, res.denoised)  # the trained networks reproduce the refinement
    table = neighbor_indices((4, 5), 8)
    for pos in [(2, 2), (0, 0), (3, 4)]:
        i = pos[0] * 5 + pos[1]
        p2 = refine_predict(res.models, _perturbed(scan, stack, pos)).reshape(20, 32, 32)
        pf = p.reshape(20, 32, 32)
        np.testing.assert_array_equal(p2[i], pf[i])  # exactly unchanged at i
        for j in set(table[i].tolist()):
            assert np.nanmax(np.abs(p2[j] - pf[j])) > 0.1  # changed where frame i is an input


def test_naive_refinement_leaks(refined):
    """The founding method's scheme (shared denoised neighbours) lets frame i reach its own input."""
    from napari_xrd_denoise.refine import _predict

    scan, stack, res = refined
    f0, f1 = res.models[0], res.models[1]
    table = neighbor_indices((4, 5), 8)

    def naive(stk):
        src = FrameSource(stk, cache_frames=64)
        den = np.nan_to_num(_predict(f0, None, src, np.arange(20)))

        def provider(index, source):
            c, v = source.get_many(table[index])
            return np.where(v, 0.5 * c + 0.5 * den[table[index]], 0).astype(np.float32), v

        return _predict(f1, provider, src, np.arange(20))

    i = 2 * 5 + 2
    a = naive(stack)[i]
    b = naive(_perturbed(scan, stack, (2, 2)))[i]
    assert np.nanmax(np.abs(a - b)) > 0.1


def test_refinement_training_inputs_are_free_of_the_target_frame(refined):
    """The context a target gets in training equals the lattice-free context used to predict it."""
    from napari_xrd_denoise.refine import Estimates, LatticeContext

    scan, stack, res = refined
    table = neighbor_indices((4, 5), 8)
    labels = lattice_labels((4, 5), 8)
    src = FrameSource(stack)
    est = Estimates(4, 20, (32, 32), None)
    rng = np.random.default_rng(4)
    est.b0[:] = rng.random(est.b0.shape)
    d = rng.random((4, 20, 32, 32)).astype(np.float32)
    train_ctx = LatticeContext(2, 3, est, d, labels, table)
    for i in range(20):
        a, _ = train_ctx(i, src)
        b, _ = LatticeContext(2, 3, est, d, labels, table, lattice=int(labels[i]))(i, src)
        np.testing.assert_array_equal(a, b)
        # no estimate of the target's own lattice enters, and never raw frame i itself
        assert not np.any(labels[table[i]] == labels[i])


def test_refinement_needs_neighbors_and_a_grid():
    from napari_xrd_denoise.refine import Refiner

    stack = ScanStack.from_array(np.ones((4, 4, 16, 16), np.uint16))
    with pytest.raises(XRDError, match="--method neighbors"):
        Refiner(Config().replace(method__name="n2s", cycles=2), stack)
    with pytest.raises(XRDError, match="--scan-shape"):
        Refiner(Config().replace(method__name="neighbors", cycles=2), ScanStack.from_array(np.ones((16, 16, 16), np.uint16)))


def test_saved_models_of_both_physics_methods_reload_and_predict_the_same(tmp_path):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from napari_xrd_denoise.inference import predict_stack
    from napari_xrd_denoise.methods import get_method
    from napari_xrd_denoise.model_file import DenoiserModel
    from napari_xrd_denoise.training import Trainer
    from napari_xrd_denoise.synthetic import make_scan

    assert get_method("neighbors").__name__ == "NeighborScan"
    assert get_method("symmetry").__name__ == "SymmetryN2N"
    scan = make_scan((3, 4), (32, 32), dose="mid", seed=2)
    stack = scan.to_stack()
    common = dict(epochs=1, steps_per_epoch=3, train__batch_size=2, patch_size=32, width=8, depth=2,
                  val_fraction=0.0, threads=1)
    for cfg in (
        Config().replace(method__name="neighbors", neighbors=4, combine_n2s=True, **common),
        Config().replace(method__name="symmetry", center=list(scan.center), **common),
    ):
        model = Trainer(cfg, stack).run()
        a = predict_stack(model, stack)
        path = model.save(tmp_path / f"{cfg.method.name}.pt")
        back = DenoiserModel.load(path, device="cpu")
        assert back.config.method == model.config.method
        np.testing.assert_array_equal(predict_stack(back, stack), a)
        if cfg.method.name == "neighbors":  # the same frames as a flat file
            flat = dataclasses.replace(stack, data=stack.flat())  # same metadata, no grid
            assert flat.scan_shape == (12,)
            with pytest.raises(XRDError, match="--scan-shape"):
                predict_stack(back, flat)
            back.config.data.scan_shape = [3, 4]  # trained from a flat file with --scan-shape 3x4: that grid, said
            notes = []
            b = predict_stack(back, flat, notes=notes)
            assert len(notes) == 1 and "the model's 3x4" in notes[0] and "--scan-shape" in notes[0]
            np.testing.assert_array_equal(b.reshape(a.shape), a)
            from napari_xrd_denoise.io.writers import read_result

            out = predict_stack(back, flat, tmp_path / "flat.h5")  # the grid used is in the provenance
            assert read_result(out)[2]["scan_grid"].startswith("3x4 (the model's")


def test_combine_split_is_the_default_for_counts_but_not_with_refinement():
    ints = ScanStack.from_array(np.random.default_rng(3).poisson(3.0, (3, 4, 16, 16)).astype(np.uint16))
    from napari_xrd_denoise.methods.neighbors import NeighborScan

    def method(**kw):
        return NeighborScan(Config().replace(method__name="neighbors", **kw), frame_ndim=2,
                            norm=Normalizer(mean=3.0, std=2.0))

    m = method()
    m.check(ints)
    assert m.mc.combine_split is True and m.in_channels == 9
    assert m.residual_channel == 8  # the residual adds to the centre frame's half, not the neighbours' mean
    m = method(cycles=3)
    m.check(ints)
    assert m.mc.combine_split is False and m.in_channels == 8 and m.residual_channel is None
    with pytest.raises(XRDError, match="method.cycles"):
        method(cycles=3, combine_split=True).check(ints)


def test_the_fill_is_on_by_default_and_the_cli_turns_it_off():
    from napari_xrd_denoise import cli

    p = cli.build_parser()
    base = ["denoise", "scan.h5", "-o", "out.h5", "--method", "neighbors"]
    assert cli.config_from_args(p.parse_args(base)).method.fill_invalid is True
    assert cli.config_from_args(p.parse_args(base + ["--no-fill-invalid"])).method.fill_invalid is False


def test_the_residual_path_follows_the_counts_with_the_split_centre():
    """``model.residual = auto``: with the centre frame's split half the network adds its correction to
    that half only where counts are high (median >= 12); below, it predicts directly and says so. A forced
    setting wins, the plain blind spot keeps its residual on the neighbours' mean, single-frame methods
    are unchanged, and the model file holds the choice."""
    from napari_xrd_denoise.methods.neighbors import RESIDUAL_MIN_MEDIAN, median_count
    from napari_xrd_denoise.model_file import DenoiserModel
    from napari_xrd_denoise.training import Trainer

    rng = np.random.default_rng(4)
    low = ScanStack.from_array(rng.poisson(2.0, (2, 3, 24, 24)).astype(np.uint16))
    high = ScanStack.from_array(rng.poisson(40.0, (2, 3, 24, 24)).astype(np.uint16))
    assert median_count(FrameSource(low)) == 2.0
    assert median_count(FrameSource(high)) >= RESIDUAL_MIN_MEDIAN

    def train(stack, **kw):
        events = []
        cfg = Config().replace(**{"method__name": "neighbors", "epochs": 1, "steps_per_epoch": 1, "train__batch_size": 2,
                                  "patch_size": 16, "width": 4, "depth": 2, "val_fraction": 0.0, **kw})
        m = Trainer(cfg, stack, callback=events.append).run()
        return m, [e.message for e in events if e.kind == "message" and "model.residual" in (e.message or "")]

    assert Config().model.residual is None  # auto
    m, notes = train(low)
    assert m.config.model.residual is False and m.net.residual is False
    assert len(notes) == 1 and "median count 2 " in notes[0]
    assert DenoiserModel.from_dict(m.to_dict(), device="cpu").net.residual is False
    m, notes = train(high)
    assert m.config.model.residual is True and m.net.residual is True and notes == []
    m, notes = train(low, model__residual=True)
    assert m.config.model.residual is True and notes == []
    m, _ = train(low, combine_split=False)
    assert m.config.model.residual is True and m.config.model.residual_channel is None
    m, notes = train(low, method__name="n2n-split")
    assert m.config.model.residual is True and notes == []


def test_the_cli_forces_the_residual_path_either_way():
    from napari_xrd_denoise import cli

    p = cli.build_parser()
    base = ["denoise", "scan.h5", "-o", "out.h5", "--method", "neighbors"]
    assert cli.config_from_args(p.parse_args(base)).model.residual is None
    assert cli.config_from_args(p.parse_args(base + ["--residual"])).model.residual is True
    assert cli.config_from_args(p.parse_args(base + ["--no-residual"])).model.residual is False
