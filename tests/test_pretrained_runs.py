"""Runs from pretrained weight files: train, cluster, evaluate, embed, assign, report and mine with them.

The files are written here in the published layouts (``weight_files.py``),
tiny: torchvision's ResNet-18 at an eighth of its width, an official DINOv2
checkpoint and OpenAI's CLIP TorchScript archive. The features a run gives
are checked against the loaded weights' own, on the run's images.
"""

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from weight_files import CLIP, dinov2_checkpoint, torchvision_resnet

import clusterclr
from clusterclr.build import build_parts
from clusterclr.cli import main
from clusterclr.configure import build_config
from clusterclr.data.streamed import FileStore, StreamedImages
from clusterclr.errors import UserError
from clusterclr.io import load_checkpoint
from clusterclr.methods.training_images import TrainingImages
from clusterclr.models.pretrained import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    load_pretrained,
)
from clusterclr.positives.semantic import mine_partners
from clusterclr.rundir import RunDir

QUIET = ["train.progress=false", "train.precision=fp32"]
TINY = QUIET + ["optim.batch_size=4", "method.projection_hidden_dim=16", "method.projection_dim=8", "train.report=false"]
# (file, family, ImageNet or CLIP statistics, image size to set: DINOv2's and the ResNet's resolution is 224,
# too large for a test; CLIP's comes from its position grid, 28 here).
LAYOUTS = {
    "resnet18.pth": ("torchvision-resnet", IMAGENET_MEAN, IMAGENET_STD, 32),
    "dinov2_vits14_pretrain.pth": ("dinov2", IMAGENET_MEAN, IMAGENET_STD, 16),
    "ViT-B-16.pt": ("openai-clip", CLIP_MEAN, CLIP_STD, None),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each layout, and a folder of 12 small photos in two class subfolders."""
    root = tmp_path_factory.mktemp("weights")
    torch.save(torchvision_resnet(False, (2, 2, 2, 2), counters=False, base=8), root / "resnet18.pth")
    torch.save(dinov2_checkpoint(64, 1, patch=4, grid=4), root / "dinov2_vits14_pretrain.pth")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script: the only way to write OpenAI's format
        torch.jit.script(CLIP(width=64, heads=1)).save(root / "ViT-B-16.pt")
    rng = np.random.default_rng(0)
    for i in range(12):
        folder = root / "photos" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return root


def pretrained_features(path, images: torch.Tensor) -> torch.Tensor:
    """The loaded weights' features of uint8 images, normalised as the weights expect."""
    loaded = load_pretrained(path)
    mean = torch.tensor(loaded.preprocessing.mean).view(1, -1, 1, 1)
    std = torch.tensor(loaded.preprocessing.std).view(1, -1, 1, 1)
    with torch.no_grad():
        return loaded.backbone.eval()((images.float() / 255 - mean) / std)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_a_run_from_weights_records_their_input_and_keeps_a_frozen_backbone(files, tmp_path, name):
    family, mean, std, size = LAYOUTS[name]
    out, weights = tmp_path / "run", tmp_path / name
    shutil.copy(files / name, weights)
    settings = [f"model.weights={weights}", "optim.backbone_lr_scale=0", *TINY] + ([f"data.image_size={size}"] if size else [])
    args = ["train", "--dataset", "folder", "--data-root", str(files / "photos"), "--epochs", "1", "--out", str(out)]
    assert main([*args, "--set", *settings]) == 0

    config, state, _ = RunDir(out).read()
    loaded = load_pretrained(weights)
    assert config.model.weights_format == family and config.model.backbone == loaded.spec.name
    assert config.model.architecture == loaded.spec.kwargs
    assert config.data.mean == list(mean) and config.data.std == list(std) and config.data.channels == 3
    assert state["normalisation"] == {"mean": list(mean), "std": list(std)}
    expected_size = size or loaded.preprocessing.resolution  # the weights' resolution unless set
    assert config.data.image_size == expected_size and tuple(state["data_info"]["image_size"]) == (expected_size,) * 2
    if family == "torchvision-resnet":
        assert config.model.stem == "imagenet" and config.model.architecture["stem"] == "imagenet"

    # The checkpoint rebuilds the architecture without the file; frozen, it gives the file's features still.
    weights.unlink()
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 3, expected_size, expected_size), dtype=np.uint8))
    features = clusterclr.load(out).embed(images).features
    torch.testing.assert_close(features, pretrained_features(files / name, images), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_cluster_a_folder_on_pretrained_features(files, tmp_path, name):
    size = LAYOUTS[name][3]
    out = tmp_path / "clusters"
    settings = QUIET + ([f"data.image_size={size}"] if size else [])
    assert main(["cluster", str(files / "photos"), "--clusters", "3", "--weights", str(files / name), "--out", str(out), "--set", *settings]) == 0
    config, state, _ = RunDir(out).read()
    assert config.train.epochs == 0 and state["epoch"] == 0  # features only
    with open(out / "clusters.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {int(r["cluster"]) for r in rows} <= {0, 1, 2}
    height = state["data_info"]["image_size"][0]
    # Upsampled to the weights' resolution where not set (the folder's images are 20 px).
    assert height == (size or load_pretrained(files / name).preprocessing.resolution)
    images = StreamedImages(FileStore.of([Path(clusterclr.path_from_text(r["path"])) for r in rows]), height)[:]
    expected = pretrained_features(files / name, images)
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_a_features_only_run_evaluates_embeds_assigns_and_reports(files, tmp_path, capsys):
    out = tmp_path / "run"
    settings = [f"model.weights={files / 'dinov2_vits14_pretrain.pth'}", "data.image_size=16", *TINY]
    args = ["train", "--dataset", "folder", "--data-root", str(files / "photos"), "--epochs", "0", "--out", str(out)]
    assert main([*args, "--set", *settings]) == 0
    metrics = clusterclr.load(out).metrics
    assert metrics["epoch"] == 0 and 0 <= metrics["kmeans_nmi"] <= 1
    assert main(["evaluate", str(out)]) == 0
    assert main(["evaluate", str(out), "--protocol", "knn", "kmeans"]) == 0
    assert main(["embed", str(out), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (12, 64)
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()  # it saves the centroids assign uses
    assert main(["assign", str(out), str(files / "photos"), "--out", str(tmp_path / "a.csv")]) == 0
    capsys.readouterr()


def test_grey_images_are_repeated_into_the_channels_the_weights_take(files, tmp_path):
    """Digits (8 px, grey) on the CLIP file: converted and resized as the recorded config says, everywhere."""
    config = build_config(overrides=[f"model.weights={files / 'ViT-B-16.pt'}", "train.epochs=0", *TINY])
    run = clusterclr.train(config, out=tmp_path / "run")
    assert run.config.data.channels == 3 and run.model.method.data.image_size == (28, 28)
    assert main(["embed", str(tmp_path / "run"), "--out", str(tmp_path / "e.npy")]) == 0
    assert np.load(tmp_path / "e.npy").shape == (1797, 16)


def test_fine_tuning_moves_the_backbone_at_its_scaled_rate(files, tmp_path):
    weights = files / "dinov2_vits14_pretrain.pth"
    config = build_config(
        flags={"method.name": "moco_v2", "data.dataset": "folder", "data.root": str(files / "photos"), "train.epochs": 1},
        overrides=[f"model.weights={weights}", "data.image_size=16", "optim.backbone_lr_scale=0.1", "method.queue_size=8", *TINY],
    )
    run = clusterclr.train(config, out=tmp_path / "run")
    original = load_pretrained(weights).backbone.state_dict()
    tuned = run.backbone.state_dict()
    assert not all(torch.equal(original[k], tuned[k]) for k in original)
    groups = load_checkpoint(RunDir(tmp_path / "run").checkpoint)["optimizer"]["param_groups"]
    assert [g["lr_scale"] for g in groups if g["groups"] == ["backbone"]] == [0.1, 0.1]


def test_semantic_partners_mined_by_a_weights_file(files):
    """The paper's setting: a pretrained encoder, at its own resolution and statistics, mines the partners once."""
    weights = files / "ViT-B-16.pt"
    config = build_config(
        flags={"method.name": "sepp_simclr"},
        overrides=[f"positives.encoder={weights}", "model.width=0.125", *TINY],
    )
    parts = build_parts(config)
    train = parts.splits.train
    images = TrainingImages(train.images, train.labels, parts.views, parts.device, 512)
    logs = parts.method.on_epoch_start(0, images)
    assert logs["pairs"] > 0 and 0 <= logs["pair_precision"] <= 1
    loaded = load_pretrained(weights)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (loaded.preprocessing.mean, loaded.preprocessing.std))
    grey_as_rgb = (train.images.expand(-1, 3, -1, -1).float() / 255 - mean) / std
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(grey_as_rgb, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        expected = loaded.backbone.eval()(resized)
    p = config.positives
    assert torch.equal(parts.method.partners, mine_partners(expected, 1, space=p.space, mutual=p.mutual, quantile=p.quantile).partners)
    assert [e for e in range(4) if parts.method.is_mining_epoch(e)] == [0]


@pytest.mark.parametrize(("settings", "message"), [
    (["model.weights=absent.pth"], "model.weights: no weights file at"),
    (["model.weights={dino}", "model.weights_format=keras"], "'model.weights_format': unknown format 'keras'"),
    (["model.weights={dino}", "model.weights_format=hf-clip"], "is not in the hf-clip layout: it looks like dinov2"),
    (["model.weights={resnet}", "model.backbone=resnet50"], "model.backbone=resnet50, but"),
    (["model.backbone=vit"], "vit is a ViT of a shape only a weights file records"),
    (["model.pooling=cls+mean"], "'model.pooling' applies to ViT backbones, not to resnet18"),
    (["model.backbone=vit_small"], "model.patch_size=16 is larger than the 8-px images"),
])
def test_bad_model_settings_are_one_line_errors(files, tmp_path, capsys, settings, message):
    named = {"dino": files / "dinov2_vits14_pretrain.pth", "resnet": files / "resnet18.pth"}
    settings = [s.format(**named) for s in settings]
    assert main(["train", "--out", str(tmp_path / "run"), "--set", *settings, *TINY]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("clusterclr: error:")]
    assert len(errors) == 1 and message in errors[0]


def test_cluster_refuses_init_with_weights(files, tmp_path, capsys):
    args = ["cluster", str(files / "photos"), "--clusters", "2", "--init", str(tmp_path), "--weights", str(files / "resnet18.pth")]
    assert main([*args, "--out", str(tmp_path / "out")]) == 2
    assert "--init and --weights both give the backbone" in capsys.readouterr().err


def test_a_torchscript_archive_is_never_loaded_as_a_checkpoint(files, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load would load the archive's code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    with pytest.raises(UserError, match="is a TorchScript archive, not a checkpoint file of tensors; it was not loaded"):
        load_checkpoint(files / "ViT-B-16.pt")


def test_resume_auto_compares_the_config_the_weights_decide(files, tmp_path, capsys):
    """A pre-emptible job's one command line: the second time it finds its run, whose config the weights filled in."""
    args = ["train", "--resume", "auto", "--out", str(tmp_path / "run"), "--dataset", "folder", "--data-root", str(files / "photos"),
            "--epochs", "0", "--set", f"model.weights={files / 'dinov2_vits14_pretrain.pth'}", "data.image_size=16", *TINY]
    assert main(args) == 0
    assert main(args) == 0
    assert "resuming" in capsys.readouterr().err
