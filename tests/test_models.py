"""Networks: shapes for any input size, 1D and 2D, residual identity at start, DnCNN depth from config."""

from __future__ import annotations

import pytest
import torch

from napari_xrd_denoise.config import ModelConfig
from napari_xrd_denoise.models import DnCNN, UNet, build_model, count_parameters
from napari_xrd_denoise.models.unet import pad_to_multiple

torch.set_num_threads(1)


@pytest.mark.parametrize("ndim,size", [(2, (37, 45)), (2, (16, 16)), (2, (5, 70)), (1, (101,)), (1, (3,))])
@pytest.mark.parametrize("arch", ["unet", "dncnn"])
def test_any_size_keeps_shape(ndim, size, arch):
    torch.manual_seed(0)
    net = build_model(ModelConfig(arch=arch, depth=3, width=4, dncnn_layers=4, residual=False), ndim, in_channels=2)
    x = torch.randn(3, 2, *size)
    y = net(x)
    assert y.shape == (3, 1, *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("ndim", [1, 2])
def test_residual_network_starts_as_identity(ndim):
    torch.manual_seed(0)
    for net in (UNet(ndim, 1, depth=2, width=4, residual=True), DnCNN(ndim, 1, layers=3, width=4, residual=True)):
        x = torch.randn(2, 1, *((40,) * ndim))
        torch.testing.assert_close(net(x), x)


def test_residual_base_is_channel_mean():
    net = UNet(2, 3, depth=2, width=4, residual=True)
    x = torch.randn(1, 3, 24, 24)
    torch.testing.assert_close(net(x), x.mean(dim=1, keepdim=True))


def test_dncnn_layer_count_comes_from_config():
    for layers in (2, 5, 11):
        net = build_model(ModelConfig(arch="dncnn", dncnn_layers=layers, width=8), 2)
        convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == layers
    # width comes from the config too, not from a positional slip
    net = build_model(ModelConfig(arch="dncnn", dncnn_layers=4, width=7), 1)
    assert all(m.out_channels in (7, 1) for m in net.modules() if isinstance(m, torch.nn.Conv1d))


def test_unet_depth_and_width_from_config():
    small = build_model(ModelConfig(arch="unet", depth=2, width=8), 2)
    big = build_model(ModelConfig(arch="unet", depth=3, width=8), 2)
    wide = build_model(ModelConfig(arch="unet", depth=2, width=16), 2)
    assert small.depth == 2 and big.depth == 3
    assert count_parameters(small) < count_parameters(big)
    assert count_parameters(small) < count_parameters(wide)
    assert small.inc.c1.out_channels == 8 and wide.inc.c1.out_channels == 16


def test_stem_width_widens_only_the_first_convolution_for_many_input_channels():
    from napari_xrd_denoise.models import stem_channels

    cfg = ModelConfig(arch="unet", depth=2, width=8)
    # auto: max(width, 2 x channels), at most 4 x width
    assert [stem_channels(cfg, c) for c in (1, 3, 4, 5, 9, 25)] == [8, 8, 8, 10, 18, 32]
    assert stem_channels(ModelConfig(width=8, stem_width=12), 9) == 12
    one, nine = build_model(cfg, 2, in_channels=1), build_model(cfg, 2, in_channels=9)
    assert (one.inc.c1.out_channels, one.inc.c2.in_channels) == (8, 8)
    assert (nine.inc.c1.in_channels, nine.inc.c1.out_channels, nine.inc.c2.in_channels, nine.inc.c2.out_channels) == (9, 18, 18, 8)
    # nothing after the first block changes
    rest = [(n, tuple(p.shape)) for n, p in one.named_parameters() if not n.startswith("inc.")]
    assert rest == [(n, tuple(p.shape)) for n, p in nine.named_parameters() if not n.startswith("inc.")]
    assert build_model(ModelConfig(arch="unet", depth=2, width=8, stem_width=12), 2).inc.c1.out_channels == 12
    from napari_xrd_denoise.config import Config, ConfigError

    with pytest.raises(ConfigError, match="model.stem_width"):
        Config().replace(stem_width=-1)


def test_padding_reflects_and_is_cropped_back():
    x = torch.arange(10.0).view(1, 1, 10)
    xp, sizes = pad_to_multiple(x, 8, 1)
    assert xp.shape[-1] == 16 and sizes == (10,)
    # reflect: the padded values mirror the end of the signal
    assert xp[0, 0, 10].item() == 8.0
    tiny = torch.ones(1, 1, 3, 3)
    tp, _ = pad_to_multiple(tiny, 8, 2)  # too short to reflect -> replicate
    assert tp.shape[-2:] == (8, 8) and torch.all(tp == 1)


def test_unet_is_translation_equivariant_in_the_interior():
    """A fully convolutional net: shifting the input by the pooling factor shifts the output."""
    torch.manual_seed(1)
    net = UNet(2, 1, depth=2, width=4, residual=False)
    x = torch.randn(1, 1, 64, 64)
    y = net(x)
    ys = net(torch.roll(x, shifts=(4, 8), dims=(2, 3)))
    torch.testing.assert_close(ys[..., 24:40, 24:40], y[..., 20:36, 16:32], atol=1e-5, rtol=1e-4)


def test_bad_arch_and_ndim():
    with pytest.raises(ValueError):
        UNet(3)
    with pytest.raises(ValueError):
        DnCNN(2, layers=1)


@pytest.mark.parametrize("arch", ["unet", "dncnn"])
def test_residual_channel_is_what_an_untrained_network_returns(arch):
    from napari_xrd_denoise.config import ModelConfig
    from napari_xrd_denoise.models import build_model

    x = torch.randn(2, 3, 20, 24)
    for ch, want in [(None, x.mean(dim=1)), (0, x[:, 0]), (2, x[:, 2]), (-1, x[:, 2])]:
        net = build_model(ModelConfig(arch=arch, depth=2, width=4, residual_channel=ch), 2, in_channels=3)
        if arch == "dncnn":
            torch.nn.init.zeros_(net.body[-1].weight)
        with torch.no_grad():
            y = net(x)
        torch.testing.assert_close(y[:, 0], want)  # the last layer starts at zero: output = the residual base
    with pytest.raises(ValueError, match="residual_channel 3"):
        build_model(ModelConfig(arch=arch, residual_channel=3), 2, in_channels=3)
