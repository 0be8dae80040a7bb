"""Methods: blind-spot masks, J-invariance, sample construction, invalid pixels, and that every method
denoises synthetic Poisson ring patterns (PSNR on the square-root scale against the known truth)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xrd_denoise.config import Config
from napari_xrd_denoise.errors import XRDError
from napari_xrd_denoise.inference import predict_stack
from napari_xrd_denoise.io.stack import ScanStack
from napari_xrd_denoise.methods import available_methods, build_method, get_method, resolve_auto
from napari_xrd_denoise.methods.base import FrameSource, Normalizer, grid_mask, n_phases, random_mask, replace_hidden
from napari_xrd_denoise.methods.n2n import Noise2NoiseFrames
from napari_xrd_denoise.methods.n2s import Noise2Self
from napari_xrd_denoise.model_file import run_network
from napari_xrd_denoise.models import UNet
from napari_xrd_denoise.physics.vst import inverse_anscombe
from napari_xrd_denoise.training import Trainer

torch.set_num_threads(1)
SENTINEL = 2**32 - 1


def rings(shape=(48, 48), n=4, dose=5.0, seed=0, gap=True):
    """Smooth ring pattern (known mean ``lam``) + Poisson frames; a 3-column gap marked with the sentinel."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = 0.45 * h, 0.55 * w
    r = np.hypot(yy - cy, xx - cx)
    ang = np.arctan2(yy - cy, xx - cx)
    lam = np.full(shape, 0.3)
    for i, rad in enumerate(rng.uniform(0.1, 0.9, size=6) * max(h, w) * 0.6):
        lam += rng.uniform(0.5, 3) * (1 + 0.5 * np.cos(2 * ang + i)) * np.exp(-0.5 * ((r - rad) / rng.uniform(1, 3)) ** 2)
    lam = lam * dose / lam.mean()
    frames = rng.poisson(np.broadcast_to(lam, (n,) + shape)).astype(np.uint32)
    valid = np.ones(shape, bool)
    if gap:
        valid[:, w // 3 : w // 3 + 3] = False
        frames[:, :, w // 3 : w // 3 + 3] = SENTINEL
    return frames, lam.astype(np.float32), valid


def psnr_sqrt(est, lam, valid):
    a, b = np.sqrt(np.maximum(est, 0)), np.sqrt(lam)
    v = valid & np.isfinite(est)
    return 10 * np.log10((b[v].max() - b[v].min()) ** 2 / np.mean((a[v] - b[v]) ** 2))


def tiny_config(name, **kw):
    base = dict(name=name, width=8, depth=2, epochs=4, steps_per_epoch=25, train__batch_size=4, patch_size=32,
                patience=0, lr=3e-3, val_fraction=0.25, preview_every=0)
    base.update(kw)
    return Config().replace(**base)


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,margin",
    [("n2s", 4.0), ("n2v", 4.0), ("n2n-split", 4.0), ("n2n-frames", 5.0), ("n2n-frames:X:1", 5.0), ("supervised", 5.0)],
)
def test_each_method_improves_psnr(name, margin):
    name, _, strategy = name.partition(":")
    frames, lam, valid = rings()
    stack = ScanStack.from_array(frames)
    ref = None
    if name == "supervised":  # a 10x longer exposure of the same scene
        hi = np.random.default_rng(9).poisson(np.broadcast_to(lam * 10, frames.shape)).astype(np.uint32)
        ref = ScanStack.from_array(hi)
    extra = {"n2n_strategy": strategy} if strategy else {}
    model = Trainer(tiny_config(name, **extra), stack, reference=ref).run()
    out = predict_stack(model, stack)
    raw = np.mean([psnr_sqrt(f.astype(float), lam, valid) for f in frames])
    den = np.mean([psnr_sqrt(o, lam, valid) for o in out])
    assert den > raw + margin, f"{name}: raw {raw:.2f} dB, denoised {den:.2f} dB"
    assert np.isnan(out[:, ~valid]).all() and np.isfinite(out[:, valid]).all() and (out[:, valid] >= 0).all()
    # counts are kept: total flux within 10 % of the truth
    flux = np.nansum(out[:, valid]) / (lam[valid].sum() * len(frames))
    assert 0.9 < flux < 1.1, f"{name}: flux ratio {flux:.3f}"


def test_available_and_unknown_methods():
    avail = available_methods()
    for n in ("n2s", "n2v", "n2n-frames", "n2n-split", "supervised"):
        assert n in avail
    with pytest.raises(XRDError, match="method.name"):
        get_method("noise2magic")


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ndim,w", [(2, 3), (2, 4), (1, 4)])
def test_grid_phases_partition_the_frame(ndim, w):
    shape = (13, 10)[:ndim] if ndim == 2 else (23,)
    masks = np.stack([grid_mask(shape, w, ph) for ph in range(n_phases(w, ndim))])
    assert np.all(masks.sum(axis=0) == 1)
    assert abs(masks[0].mean() - 1 / w**ndim) < 0.1


def test_random_mask_fraction():
    m = random_mask((100, 100), 0.015, np.random.default_rng(0))
    assert m.sum() == 150


def test_interp_replacement_uses_only_valid_unhidden_neighbours():
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    hidden = np.zeros((5, 5), bool)
    hidden[2, 2] = True
    valid = np.ones((5, 5), bool)
    valid[1, 2] = False  # the neighbour above is invalid: excluded, kernel renormalised
    out = replace_hidden(x, hidden, valid, "interp")
    k = np.array([[0.5, 1, 0.5], [1, 0, 1], [0.5, 1, 0.5]])
    k[0, 1] = 0
    expect = (x[1:4, 1:4] * k).sum() / k.sum()
    assert out[2, 2] == pytest.approx(expect, rel=1e-6)
    assert np.array_equal(out[~hidden], x[~hidden])


def test_random_replacement_takes_a_neighbour_never_itself():
    rng = np.random.default_rng(0)
    x = rng.permutation(400).astype(np.float32).reshape(20, 20)  # distinct values
    hidden = random_mask((20, 20), 0.05, rng)
    out = replace_hidden(x, hidden, np.ones((20, 20), bool), "random", rng)
    for r, c in np.argwhere(hidden):
        nb = x[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
        assert out[r, c] != x[r, c] and out[r, c] in nb


# --------------------------------------------------------------------------------------------------
def _jinv_setup(replace):
    torch.manual_seed(0)
    net = UNet(2, 1, depth=2, width=4, residual=False)
    for p in net.parameters():  # a random (not zero-initialised) network
        torch.nn.init.normal_(p, std=0.3)
    cfg = Config().replace(name="n2s", masking="grid", mask_width=3, replace=replace)
    m = Noise2Self(cfg, frame_ndim=2, norm=Normalizer(mean=2.0, std=1.0))

    def run(x):
        return run_network(net, x, device=torch.device("cpu"), batch_size=4, tile=512, overlap=0)

    return m, run


@pytest.mark.parametrize("replace", ["zero", "interp", "random"])
@pytest.mark.parametrize("pos", [(0, 0), (7, 5), (12, 13), (3, 14)])
def test_j_invariant_output_ignores_the_pixel_itself(replace, pos):
    m, run = _jinv_setup(replace)
    rng = np.random.default_rng(1)
    counts = rng.poisson(4.0, size=(1, 16, 16)).astype(np.float32)
    valid = np.ones_like(counts, bool)
    infer = Config().infer
    infer.j_invariant = True
    a = m.predict(run, {"counts": counts, "valid": valid}, infer)
    changed = counts.copy()
    changed[(0,) + pos] += 50.0
    b = m.predict(run, {"counts": changed, "valid": valid}, infer)
    assert a[(0,) + pos] == pytest.approx(b[(0,) + pos], abs=1e-5)
    # the test can fail: a single pass does see the pixel
    infer.j_invariant = False
    a1 = m.predict(run, {"counts": counts, "valid": valid}, infer)
    b1 = m.predict(run, {"counts": changed, "valid": valid}, infer)
    assert abs(a1[(0,) + pos] - b1[(0,) + pos]) > 1e-3
    # and the J-invariant output elsewhere does use it
    assert np.abs(a - b).max() > 1e-3


# --------------------------------------------------------------------------------------------------
def _sample_for(name, frames, valid_extra=None, **kw):
    stack = ScanStack.from_array(frames)
    cfg = Config().replace(name=name, **kw)
    src = FrameSource(stack)
    norm = Normalizer.fit(cfg, src)
    m = build_method(cfg, stack, norm=norm)
    ref = None
    if m.needs_reference:
        ref = FrameSource(ScanStack.from_array(frames * 3))
    m.check(stack)
    m.attach(src, ref)
    return m, src


@pytest.mark.parametrize("name", ["n2s", "n2v", "n2n-split", "n2n-frames", "supervised"])
@pytest.mark.parametrize("space", ["mse", "poisson"])
def test_invalid_pixels_have_zero_weight_and_neutral_input(name, space):
    frames, lam, valid = rings(shape=(32, 32), n=3)
    m, src = _sample_for(name, frames)
    arrays = m.load(1, src)
    s = m.make_sample(arrays, np.random.default_rng(0), space)
    assert s.input.shape[1:] == valid.shape and s.target.shape == valid.shape
    assert np.all(s.weight[~valid] == 0)
    assert np.all(s.input[:, ~valid] == 0)
    assert s.weight.sum() > 0 and np.isfinite(s.target).all()
    # the sentinel never leaks into any array
    assert np.all(np.abs(s.input) < 100) and np.all(np.abs(s.target) < 1e4)


def test_binomial_split_sample_halves_add_up():
    frames, lam, valid = rings(shape=(32, 32), n=2, dose=8.0)
    m, src = _sample_for("n2n-split", frames, data__transform="none")
    arrays = m.load(0, src)
    counts = arrays["counts"]
    roles = set()
    for seed in range(6):
        s = m.make_sample(arrays, np.random.default_rng(seed), "poisson")
        a = (s.input[0] * m.norm.std + m.norm.mean) * (1 - s.scale)  # input = a / p_in, p_in = 1 - scale
        assert np.allclose(a[valid], np.round(a[valid]), atol=1e-3)
        assert np.allclose(a[valid] + s.target[valid], counts[valid], atol=1e-3)
        roles.add(round(s.scale, 3))
    assert roles == {0.5}


def test_n2n_split_inference_is_deterministic_and_unbiased_lattice():
    frames, lam, valid = rings(shape=(32, 32), n=2)
    m, src = _sample_for("n2n-split", frames)
    batch = {"counts": src.get_many([0, 1])[0], "valid": src.get_many([0, 1])[1]}
    x0, x0b = m.split_inputs(batch, 0), m.split_inputs(batch, 0)
    x1 = m.split_inputs(batch, 1)
    assert np.array_equal(x0, x0b) and not np.array_equal(x0, x1)
    # passes 0 and 1 are complementary halves of one split: together they hold every count once
    m2, src2 = _sample_for("n2n-split", frames, data__transform="none")
    to_counts = lambda x: x[:, 0] * m2.norm.std + m2.norm.mean  # noqa: E731 (transform "none")
    c, v = src2.get_many([0, 1])
    b2 = {"counts": c, "valid": v}
    h0, h1 = to_counts(m2.split_inputs(b2, 0)) * m2.p, to_counts(m2.split_inputs(b2, 1)) * (1 - m2.p)
    np.testing.assert_allclose((h0 + h1)[v], c[v], atol=1e-3)
    assert np.allclose(h0[v], np.round(h0[v]), atol=1e-3) and not np.allclose(h0[v], h1[v])


@pytest.mark.parametrize("ndim", [1, 2])
def test_orientations_form_the_augmentation_group(ndim):
    from napari_xrd_denoise.methods.base import n_orientations, orient, unorient

    x = np.arange(2 * 3 * 5 * 5).reshape(2, 3, 5, 5).astype(float) if ndim == 2 else np.arange(14.0).reshape(2, 7)
    seen = set()
    for k in range(n_orientations(ndim)):
        y = orient(x, k, ndim)
        np.testing.assert_array_equal(unorient(y, k, ndim), x)
        seen.add(y.tobytes())
    assert len(seen) == n_orientations(ndim)  # all distinct: 8 in 2D, 2 in 1D


def test_tta_averages_a_network_over_the_8_orientations():
    from napari_xrd_denoise.methods.base import flip_tta

    h = w = 6
    col = np.broadcast_to(np.arange(w, dtype=np.float32), (h, w))

    def run(x):  # an "identity" network with a bias that depends on the column: not rotation-equivariant
        return x[:, 0] + col

    x = np.random.default_rng(0).random((2, 1, h, w)).astype(np.float32)
    # over the 8 symmetries of the square, the column index turns into c, w-1-c, r and h-1-r twice each
    np.testing.assert_allclose(flip_tta(run, x, 2), x[:, 0] + (w - 1) / 2.0, atol=1e-5)


def test_n2n_split_passes_see_the_frame_in_different_orientations():
    from napari_xrd_denoise.config import InferConfig
    from napari_xrd_denoise.methods.base import ORIENTATIONS_2D, orient

    frames, lam, valid = rings(shape=(24, 24), n=1)
    v = np.ones((24, 24), bool)
    v[2:5, 3] = False  # an asymmetric mark: invalid pixels are the neutral 0 in the input
    m, src = _sample_for("n2n-split", frames)
    c, vv = src.get_many([0])
    vv = vv & v
    seen = []

    def run(x):
        seen.append(x[0, 0] == 0.0)
        return np.zeros((x.shape[0],) + x.shape[2:], np.float32)

    m.denoise(run, {"counts": c, "valid": vv}, InferConfig())
    assert len(seen) == 4  # the default: two complementary pairs
    for k, zeros in zip(ORIENTATIONS_2D[:4], seen):
        assert zeros[orient(~vv[0], k, 2)].all()  # the invalid mark sits where orientation k puts it


def test_n2n_frames_groups():
    frames = np.random.default_rng(0).poisson(3.0, size=(3, 4, 20, 20)).astype(np.uint16)
    stack = ScanStack.from_array(frames)  # 3 positions x 4 repeats
    m = Noise2NoiseFrames(Config().replace(name="n2n-frames"), frame_ndim=2)
    src = FrameSource(stack)
    assert list(m.group(5, src)) == [4, 5, 6, 7]
    assert list(m.others(5, src)) == [4, 6, 7]
    flat = FrameSource(ScanStack.from_array(frames.reshape(12, 20, 20)))
    assert len(m.others(0, flat)) == 8 and 0 not in m.others(0, flat)
    with pytest.raises(XRDError, match="n2n-frames"):
        m.check(ScanStack.from_array(frames[:, :1]))


def test_supervised_target_is_scaled_to_input_dose():
    frames, lam, valid = rings(shape=(32, 32), n=2, dose=5.0)
    m, src = _sample_for("supervised", frames)
    arrays = m.load(0, src)
    v = arrays["valid"]
    assert arrays["ref"][v].sum() == pytest.approx(arrays["counts"][v].sum(), rel=1e-4)


def test_resolve_auto():
    cfg = Config()
    ints = ScanStack.from_array(np.random.default_rng(0).poisson(2.0, (3, 32, 32)).astype(np.uint32))
    assert resolve_auto(cfg, ints) == "n2n-split"
    floats = ScanStack.from_array(np.random.default_rng(0).normal(5, 1, (3, 32, 32)).astype(np.float32))
    assert resolve_auto(cfg, floats) == "n2s"
    spectra = ScanStack.from_array(np.random.default_rng(0).poisson(2.0, (5, 64)).astype(np.int32), frame_ndim=1)
    assert resolve_auto(cfg, spectra) == "n2n-frames"
    assert resolve_auto(cfg.replace(data__transform="none"), ints) == "n2s"
    assert resolve_auto(cfg.replace(name="n2v"), ints) == "n2v"


def test_normalizer_expected_forward_inverts_exactly():
    norm = Normalizer()
    lam = np.array([0.0, 0.05, 0.3, 1.0, 3.0, 20.0, 150.0, 1000.0])
    back = inverse_anscombe(norm.expected_forward(lam))
    assert np.allclose(back, lam, rtol=2e-3, atol=2e-3)
    assert Normalizer.from_dict(Normalizer(mean=1.5, std=0.7).to_dict()) == Normalizer(mean=1.5, std=0.7)
    assert np.all(norm.link(np.linspace(-20, 20, 50)) > 0)
