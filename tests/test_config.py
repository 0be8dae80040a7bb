import json

import pytest

from napari_xrd_denoise.cli import build_parser, config_from_args
from napari_xrd_denoise.config import Config, parse_center, parse_shape
from napari_xrd_denoise.errors import ConfigError


def test_round_trip_json(tmp_path):
    cfg = Config().replace(method__name="n2s", epochs=7, scan_shape=[3, 4], center=[10.5, 20.25])
    p = cfg.save(tmp_path / "c.json")
    back = Config.load(p)
    assert back == cfg
    assert back.train.epochs == 7 and back.data.scan_shape == [3, 4] and back.method.center == [10.5, 20.25]


@pytest.mark.parametrize(
    "override, name",
    [
        ({"method__name": "n2x"}, "method.name"),
        ({"epochs": 0}, "train.epochs"),
        ({"lr": -1.0}, "train.lr"),
        ({"arch": "vit"}, "model.arch"),
        ({"overlap": 400, "tile": 512}, "infer.overlap"),
        ({"scan_shape": [0, 3]}, "data.scan_shape"),
        ({"neighbors": 6}, "method.neighbors"),
        ({"weight_decay": -1.0}, "train.weight_decay"),
        ({"patience": -3}, "train.patience"),
        ({"gain": float("nan")}, "data.gain"),
        ({"offset": float("nan")}, "data.offset"),
        ({"method__name": "n2s", "cycles": 3}, "method.cycles"),  # refinement is the neighbour method's
        ({"method__name": "neighbors", "cycles": 2, "combine_n2s": True}, "method.combine_n2s"),  # would leak
    ],
)
def test_invalid_values_name_the_parameter(override, name):
    with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
        Config().replace(**override)


def test_unknown_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.epoch"):
        Config.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="unknown config section"):
        Config.from_dict({"trainer": {}})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        Config.load(bad)
    with pytest.raises(ConfigError, match="missing.json"):
        Config.load(tmp_path / "missing.json")


def test_ambiguous_short_key():
    with pytest.raises(ConfigError, match="ambiguous"):
        Config().replace(batch_size=3)  # train.batch_size and infer.batch_size
    assert Config().replace(train__batch_size=3).train.batch_size == 3


def test_parsers():
    assert parse_shape("141x121") == [141, 121]
    assert parse_shape("17061") == [17061]
    assert parse_center("100.5,200") == [100.5, 200.0]
    for bad in ("axb", "0x3", "1x2x3"):
        with pytest.raises(ConfigError, match="--scan-shape"):
            parse_shape(bad)
    with pytest.raises(ConfigError, match="--center"):
        parse_center("1,2,3")


def test_cli_flags_and_config_file_make_one_config(tmp_path):
    base = Config().replace(epochs=11, lr=3e-4, method__name="n2v")
    cfile = base.save(tmp_path / "base.json")
    args = build_parser().parse_args(
        ["denoise", "in.h5", "-o", "out.h5", "--config", str(cfile), "--epochs", "5", "--scan-shape", "2x3",
         "--center", "10,12.5", "--device", "cpu", "--keep-negatives"]
    )
    cfg = config_from_args(args)
    assert cfg.train.epochs == 5  # flag wins
    assert cfg.train.lr == pytest.approx(3e-4)  # from the file
    assert cfg.method.name == "n2v"
    assert cfg.data.scan_shape == [2, 3]
    assert cfg.method.center == [10.0, 12.5]
    assert cfg.train.device == "cpu"
    assert cfg.data.keep_negatives is True
    assert cfg.train.amp is True  # not given: the file's (default) value
    json.loads(cfg.to_json())
    for flag, want in (("--no-amp", False), ("--amp", True)):
        args = build_parser().parse_args(["train", "in.h5", "-m", "m.pt", "--config", str(cfile), flag])
        assert config_from_args(args).train.amp is want


def test_stem_width_flag():
    assert Config().model.stem_width == 0  # auto
    args = build_parser().parse_args(["train", "in.h5", "-m", "m.pt", "--stem-width", "24"])
    assert config_from_args(args).model.stem_width == 24


def test_a_mistyped_parameter_attribute_is_refused():
    from napari_xrd_denoise.config import Config

    cfg = Config()
    cfg.train.epochs = 3
    assert cfg.train.epochs == 3
    with pytest.raises(AttributeError, match=r"'train' has no parameter 'epoch'; did you mean 'train.epochs'"):
        cfg.train.epoch = 2
    with pytest.raises(AttributeError, match="has no parameter"):
        cfg.infer.tiles = 256
