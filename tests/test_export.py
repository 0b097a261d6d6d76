"""``clusterclr export``: every format gives back the trained encoder's outputs, outside clusterclr too."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from weight_files import dinov2_checkpoint

import clusterclr
from clusterclr.build import load_model
from clusterclr.cli import main
from clusterclr.configure import build_config
from clusterclr.export import Encoder, preprocessing_path
from clusterclr.io import load_checkpoint
from clusterclr.rundir import RunDir

TINY = [
    "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.eval_every=0",
    "train.num_threads=1", "method.projection_hidden_dim=64", "method.projection_dim=32",
]


@pytest.fixture(autouse=True, scope="module")
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=["simclr", "center_predictor", "vit"])
def run(request, tmp_path_factory) -> Path:
    """A one-epoch run on digits; center_predictor's centres are set at its start, so it has a head; vit is
    SimCLR from a tiny ViT in DINOv2's official layout (its images repeated into 3 channels, at 16 px)."""
    directory = tmp_path_factory.mktemp(request.param)
    method, extra = request.param, []
    if request.param == "vit":
        torch.save(dinov2_checkpoint(64, 1, patch=4, grid=4), directory / "dinov2.pth")
        method, extra = "simclr", [f"model.weights={directory / 'dinov2.pth'}", "data.image_size=16"]
    with warnings.catch_warnings():
        # One epoch is too short for a balanced cluster head, it warns so; the weights replace model.width.
        warnings.simplefilter("ignore")
        clusterclr.train(build_config(flags={"method.name": method, "train.epochs": 1}, overrides=TINY + extra), out=directory / "run")
    return directory / "run"


def input_shape(run: Path) -> tuple[int, int, int]:
    """(channels, height, width) of the run's normalised input."""
    info = load_checkpoint(RunDir(run).checkpoint)["data_info"]
    return (info["channels"], *info["image_size"])


def reference_outputs(run: Path, images: torch.Tensor) -> list[np.ndarray]:
    """The trained method's own features and cluster probabilities, computed the way evaluation does."""
    model, _ = load_model(RunDir(run))
    model.method.eval()
    with torch.no_grad():
        features = model.method.embed(images.to(memory_format=torch.channels_last))
        probabilities = model.method.cluster_probabilities(features)
    return [t.numpy() for t in (features, probabilities) if t is not None]


# Loads each format with clusterclr made unimportable, and writes what the model returns.
OUTSIDE = textwrap.dedent("""
    import json, sys
    sys.modules["clusterclr"] = None  # any import of clusterclr now fails
    import numpy as np
    out, images = sys.argv[1], np.load(sys.argv[2])
    fmt = json.load(open(out + ".json"))["format"]
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"images": images})
    elif fmt == "torchscript":
        import torch
        with torch.no_grad():
            result = torch.jit.load(out)(torch.from_numpy(images))
        outputs = [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]
    else:
        from safetensors.numpy import load_file
        outputs = [v for _, v in sorted(load_file(out).items())][:1]  # loadable; running needs the architecture
    np.savez(sys.argv[3], *outputs)
""")


def run_outside(out: Path, images: torch.Tensor, tmp_path: Path) -> list[np.ndarray]:
    np.save(tmp_path / "images.npy", images.numpy())
    subprocess.run([sys.executable, "-c", OUTSIDE, str(out), str(tmp_path / "images.npy"), str(tmp_path / "outputs.npz")],
                   check=True, timeout=120)
    with np.load(tmp_path / "outputs.npz") as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def test_torchscript_and_onnx_give_the_models_outputs_without_clusterclr(run, tmp_path):
    pytest.importorskip("onnxruntime")
    images = torch.randn(5, *input_shape(run), generator=torch.Generator().manual_seed(0))
    expected = reference_outputs(run, images)
    assert len(expected) == (2 if "center_predictor" in str(run) else 1)
    for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
        out = tmp_path / f"encoder{suffix}"
        assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
        outputs = run_outside(out, images, tmp_path)
        assert len(outputs) == len(expected)
        for got, want in zip(outputs, expected):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_safetensors_hold_the_encoder_and_reload_into_the_architecture(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "encoder.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    state = load_checkpoint(RunDir(run).checkpoint)
    tensors = load_file(str(out))
    # The backbone, and the head where there is one; nothing of the projector.
    head = "centres." if "center_predictor" in str(run) else None
    expected = {f"backbone.{k[len('backbone.'):]}" for k in state["method"] if k.startswith("backbone.")}
    expected |= {f"head.{k[len(head):]}" for k in state["method"] if head and k.startswith(head)}
    assert set(tensors) == expected
    for key, value in tensors.items():
        original = key.replace("head.", head, 1) if key.startswith("head.") else key
        assert torch.equal(value, state["method"][original])
    with safe_open(str(out), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["config"]) == state["config"] and metadata["epoch"] == "1"
    assert json.loads(metadata["preprocessing"]) == json.loads(preprocessing_path(out).read_text())

    # A fresh encoder of the same architecture, given these tensors, computes the trained model's outputs.
    images = torch.randn(4, *input_shape(run), generator=torch.Generator().manual_seed(1))
    fresh, _ = load_model(RunDir(run))
    for parameter in fresh.method.parameters():
        parameter.data.zero_()
    encoder = Encoder(fresh)
    encoder.load_state_dict(tensors)
    with torch.no_grad():
        result = encoder(images)
    outputs = result if isinstance(result, tuple) else (result,)
    for got, want in zip(outputs, reference_outputs(run, images)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    assert outside_loads(out, tmp_path)


def outside_loads(out: Path, tmp_path: Path) -> bool:
    return len(run_outside(out, torch.zeros(1, 3, 8, 8), tmp_path)) == 1  # not run: any images will do


def test_preprocessing_json_says_how_to_feed_the_model(run, tmp_path):
    out = tmp_path / "encoder.pt"
    assert main(["export", str(run), "--format", "torchscript", "--out", str(out)]) == 0
    settings = json.loads(preprocessing_path(out).read_text())
    state = load_checkpoint(RunDir(run).checkpoint)
    assert settings["format"] == "torchscript" and settings["file"] == "encoder.pt"
    assert (settings["input"]["channels"], settings["input"]["height"], settings["input"]["width"]) == input_shape(run)
    assert settings["input"]["mean"] == state["normalisation"]["mean"]
    assert settings["input"]["std"] == state["normalisation"]["std"]
    assert settings["outputs"]["features"]["dim"] == load_model(RunDir(run))[0].method.backbone.feature_dim
    has_head = "center_predictor" in str(run)
    assert ("cluster_probabilities" in settings["outputs"]) == has_head
    if has_head:
        assert settings["outputs"]["cluster_probabilities"]["clusters"] == 10
    architecture = settings["architecture"]
    if "vit" in str(run):  # DINOv2's statistics and its ViT, as recorded from the weights
        assert settings["input"]["mean"] == [0.485, 0.456, 0.406] and settings["initial_weights"]["format"] == "dinov2"
        assert architecture["backbone"] == "vit" and architecture["patch_size"] == 4 and architecture["dim"] == 64
    else:
        assert architecture == {"backbone": "resnet18", "in_channels": 1, "stem": "cifar", "width": 0.125}


@pytest.mark.parametrize(("args", "message"), [
    (["--out", "weights.pt"], "--out must name a .safetensors file for --format safetensors"),
    (["--format", "onnx", "--out", "model.pt"], "--out must name a .onnx file for --format onnx"),
])
def test_mismatched_suffix_is_a_clear_error(run, tmp_path, capsys, args, message):
    args = [a if not a.startswith(("weights", "model")) else str(tmp_path / a) for a in args]
    assert main(["export", str(run), *args]) == 2
    assert message in capsys.readouterr().err


def test_onnx_without_the_extra_is_a_clear_error(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'clusterclr[onnx]'" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
