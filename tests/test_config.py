import warnings

import pytest

from clusterclr.configure import build_config, validate
from clusterclr.errors import UserError
from clusterclr.layering import parse_override


def test_defaults_are_the_digits_simclr_recipe():
    config = build_config()
    assert config.data.dataset == "digits"
    assert config.method.name == "simclr"
    assert config.augment.flip_prob == 0.0  # from the digits data set defaults
    assert config.method.options.temperature == 0.5  # method defaults are filled in


def test_layers_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ntrain: {epochs: 7}\noptim: {lr: 0.1}\nmethod: {name: simclr, temperature: 0.2}\n")
    config = build_config(path, {"train.epochs": 9, "seed": None}, ["optim.lr=0.05", "augment.crop_scale=[0.3, 0.9]"])
    assert config.seed == 3
    assert config.train.epochs == 9
    assert config.optim.lr == 0.05
    assert config.augment.crop_scale == (0.3, 0.9)
    assert config.method.options.temperature == 0.2


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
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no preset uses a renamed key
        for preset in presets:
            build_config(preset)


def test_the_number_of_clusters_has_one_key_and_the_old_ones_still_work():
    assert build_config(overrides=["clusters=7"]).clusters == 7
    for old in ("eval.clusters=7", "method.clusters=7"):
        with pytest.warns(FutureWarning, match="is now 'clusters'"):
            assert build_config(overrides=["method.name=cc", old]).clusters == 7
    with pytest.raises(UserError, match="'eval.clusters' and 'clusters' are the same setting and disagree"):
        build_config(overrides=["eval.clusters=7", "clusters=8"])
    # An old key left unset (as in configs saved before it moved) is dropped without a word.
    assert build_config({"eval": {"clusters": None}}).clusters is None


def test_renamed_method_options_move_to_their_new_names():
    with pytest.warns(FutureWarning, match="'method.num_clusters' is now 'method.pseudo_label_clusters'"):
        config = build_config(overrides=["method.name=interclr", "method.num_clusters=50"])
    assert config.method.options.pseudo_label_clusters == 50
    with pytest.warns(FutureWarning, match="'method.num_clusters' is now 'method.granularities'"):
        assert build_config(overrides=["method.name=pcl", "method.num_clusters=[10,20]"]).method.options.granularities == [10, 20]


def test_method_options_are_typed_once_and_saved_in_full():
    config = build_config(overrides=["method.name=moco_v2", "method.queue_size=64"])
    assert type(config.method.options).__name__ == "MoCoV2Options" and config.method.options.queue_size == 64
    saved = config.model_dump(mode="json")["method"]
    assert saved["name"] == "moco_v2" and saved["queue_size"] == 64 and saved["temperature"] == 0.2
    assert validate(saved and config.model_dump(mode="json")).method.options == config.method.options
