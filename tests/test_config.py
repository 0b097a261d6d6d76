import pytest

from clusterclr.config import build_config, parse_override
from clusterclr.errors import UserError


def test_defaults_are_the_digits_simclr_recipe():
    config = build_config()
    assert config.data.dataset == "digits"
    assert config.method.name == "simclr"
    assert config.augment.flip_prob == 0.0  # from the digits data set defaults
    assert config.method.options()["temperature"] == 0.5  # method defaults are filled in


def test_layers_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain: {epochs: 7}\noptim: {lr: 0.1}\nmethod: {name: simclr, temperature: 0.2}\n")
    config = build_config(path, {"train.epochs": 9, "seed": None}, ["optim.lr=0.05", "augment.crop_scale=[0.3, 0.9]"])
    assert config.seed == 3
    assert config.train.epochs == 9
    assert config.optim.lr == 0.05
    assert config.augment.crop_scale == (0.3, 0.9)
    assert config.method.options()["temperature"] == 0.2


def test_dataset_defaults_follow_the_chosen_dataset():
    assert build_config(flags={"data.dataset": "cifar10"}).augment.flip_prob is None
    assert build_config(overrides=["data.dataset=cifar10", "augment.flip_prob=0.3"]).augment.flip_prob == 0.3


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "unknown key 'optim.lrr'"),
        ("method.temprature=0.1", "unknown key 'method.temprature'"),
        ("optim.lr=fast", "'optim.lr'"),
        ("optim.lr=-1", "'optim.lr': Input should be greater than 0"),
        ("train.epochs=-1", "'train.epochs'"),
        ("method.temperature=0", "'method.temperature'"),
        ("augment.crop_scale=[0.9, 0.1]", "crop_scale must be"),
        ("data.holdout_fraction=1.5", "'data.holdout_fraction'"),
        ("method.name=nonexistent", "unknown method 'nonexistent'"),
        ("optim=3", "'optim'"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        build_config(overrides=[override])


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        build_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        build_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        build_config(listy)


def test_override_values_are_parsed_as_yaml():
    assert parse_override("a.b=0.5") == (["a", "b"], 0.5)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=text") == (["a"], "text")
    with pytest.raises(UserError, match="key=value"):
        parse_override("novalue")


def test_every_shipped_preset_is_valid():
    from pathlib import Path

    presets = sorted((Path(__file__).parents[1] / "configs").rglob("*.yaml"))
    assert presets, "no presets shipped"
    for preset in presets:
        build_config(preset)
