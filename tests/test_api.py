"""The Python API: train, load, embed, assign, evaluate, export and cluster, as a notebook would call them."""

import numpy as np
import pytest
import torch
from PIL import Image

import clusterclr
from clusterclr.config import Config
from clusterclr.errors import UserError

TINY = {
    "model.width": 0.125, "optim.batch_size": 128, "train.epochs": 1, "train.progress": False,
    "train.eval_every": 0, "method.projection_hidden_dim": 32, "method.projection_dim": 16,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return clusterclr.train(overrides=TINY, out=tmp_path_factory.mktemp("api") / "run")


def _folder(root, count=6, size=8):
    root.mkdir(exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    for i, image in enumerate(pixels):
        Image.fromarray(image).save(root / f"img_{i}.png")
    return root


def test_make_config_layers_a_tree_and_overrides_of_either_kind():
    config = clusterclr.make_config({"method": {"name": "moco_v2"}}, {"method.queue_size": 64, "optim.lr": 0.1})
    assert isinstance(config, Config) and config.method.options.queue_size == 64 and config.optim.lr == 0.1
    assert clusterclr.make_config(config, ["seed=3"]).seed == 3 and config.seed == 0
    with pytest.raises(UserError, match="unknown key 'optim.lrr'"):
        clusterclr.make_config(overrides={"optim.lrr": 1})


def test_train_returns_the_run_with_its_scores_and_model(run):
    assert run.epoch == 1 and run.config.method.name == "simclr"
    assert 0 <= run.metrics["knn_acc"] <= 1 and run.metrics["clusters"] == 10
    assert run.directory.checkpoint.is_file() and run.directory.report.is_file()
    assert run.backbone is run.method.backbone


def test_a_loaded_run_holds_the_trained_weights(run):
    loaded = clusterclr.load(run.directory.path)
    assert loaded.epoch == 1
    for (name, value), trained in zip(loaded.method.state_dict().items(), run.method.state_dict().values()):
        assert torch.equal(value.cpu(), trained.cpu()), name
    with pytest.raises(UserError, match="run directory not found"):
        clusterclr.load(run.directory.path / "nowhere")


def test_embed_takes_pixels_at_any_size_and_matches_the_evaluation_features(run):
    images = run.model.splits.test.images[:5]
    embedded = clusterclr.load(run.directory.path).embed(images)
    assert embedded.features.shape == (5, run.backbone.feature_dim) and embedded.cluster_probabilities is None
    again = run.embed(images.numpy())
    torch.testing.assert_close(again.features, embedded.features)
    larger = torch.nn.functional.interpolate(images.float(), size=16).round().to(torch.uint8)
    assert run.embed(larger).features.shape == (5, run.backbone.feature_dim)
    with pytest.raises(UserError, match="images must be uint8 N×1×H×W"):
        run.embed(images.float())


def test_assign_and_embed_read_image_files(tmp_path):
    folder = _folder(tmp_path / "photos")
    found = clusterclr.cluster(folder, clusters=2, epochs=1, out=tmp_path / "run",
                               overrides=["model.width=0.125", "data.image_size=8", "train.progress=false"])
    assert len(found.paths) == 6 and found.features.shape[0] == 6 and set(found.cluster) <= {0, 1}
    assert found.sizes().sum() == 6 and found.csv().splitlines()[0] == "path,cluster,confidence"
    again = found.run.assign(folder)
    assert again.paths == found.paths
    np.testing.assert_array_equal(again.cluster, found.cluster)
    np.testing.assert_allclose(again.features, found.features, rtol=1e-5, atol=1e-6)
    assert found.run.embed([folder / "img_0.png"]).features.shape == (1, found.features.shape[1])


def test_evaluate_runs_protocols_and_export_writes_the_encoder(run, tmp_path):
    sections = run.evaluate(["knn"])
    assert "k20_top1" in sections["knn"]["metrics"] and "knn" in run.metrics
    with pytest.raises(UserError, match="unknown protocol 'bogus'"):
        run.evaluate(["bogus"])
    out = run.export(tmp_path / "encoder.safetensors")
    assert out.is_file() and out.with_name(out.name + ".json").is_file()
