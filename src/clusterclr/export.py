"""A trained run as a model other programs can run: safetensors, TorchScript or ONNX.

What is exported is the encoder: normalised images (N × C × H × W float32)
in, backbone features (N × D) out, plus cluster probabilities (N × K) for
methods with a cluster head (cc's softmax head, center_predictor's centres).
Projection heads, momentum encoders, queues and memory banks are training
machinery and stay behind. Beside the model, ``FILE.json`` (``model.onnx.json`` for
``model.onnx``, so exports in several formats never overwrite each other's) says how to feed
it: input size, channels, the per-channel mean and std to normalise with,
output names and sizes.

- safetensors: the encoder's tensors (``backbone.*``, ``head.*``), the run's
  config and the preprocessing in the metadata; loads with the safetensors
  package alone; running it needs the architecture (clusterclr's ResNet or
  ViT, described under "architecture" in the JSON).
- torchscript: a traced module; ``torch.jit.load`` runs it without clusterclr (PyTorch deprecates
  TorchScript; libtorch and older PyTorch versions still load it).
- onnx: opset 17, dynamic batch size; runs in onnxruntime without clusterclr
  or PyTorch (needs the ``onnx`` extra: ``pip install 'clusterclr[onnx]'``).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from clusterclr.build import Model, backbone_spec
from clusterclr.errors import UserError
from clusterclr.io import atomic_write, save_safetensors, write_json
from clusterclr.version import __version__

FORMATS = {"safetensors": ".safetensors", "torchscript": ".pt", "onnx": ".onnx"}
ONNX_OPSET = 17


class Encoder(nn.Module):
    """Backbone features, and the cluster head's probabilities where the model has a head in use (a method's or a stage's)."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        method = model.method
        self.backbone = copy.deepcopy(method.backbone)
        head = model.cluster_head()
        probabilities = model.cluster_probabilities(torch.zeros(1, method.backbone.feature_dim, device=model.device))
        # A head not in use yet (centres never set) has nothing to export.
        self.head = copy.deepcopy(head) if head is not None and probabilities is not None else None
        self.clusters = None if self.head is None else probabilities.shape[1]
        self.to("cpu", memory_format=torch.contiguous_format).float().eval()

    @property
    def output_names(self) -> list[str]:
        return ["features"] + (["cluster_probabilities"] if self.head is not None else [])

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(images)
        if self.head is None:
            return features
        return features, self.head(features)


def preprocessing(model: Model, encoder: Encoder, epoch: int, fmt: str, file: Path) -> dict[str, Any]:
    """How to feed the exported model and what it returns."""
    data, cfg = model.method.data, model.config
    spec = backbone_spec(cfg.model, data.channels, data.image_size)
    outputs: dict[str, Any] = {"features": {"dim": encoder.backbone.feature_dim}}
    if encoder.head is not None:
        outputs["cluster_probabilities"] = {"clusters": encoder.clusters}
    return {
        "producer": f"clusterclr {__version__}",
        "format": fmt,
        "file": file.name,
        "method": cfg.method.name,
        "trained_on": cfg.data.dataset,
        "epoch": epoch,
        "input": {
            "name": "images",
            "layout": "NCHW",
            "dtype": "float32",
            "channels": data.channels,
            "height": data.image_size[0],
            "width": data.image_size[1],
            "mean": model.normalisation["mean"],
            "std": model.normalisation["std"],
            "normalise": "x = (pixel / 255 - mean[c]) / std[c]",
        },
        "outputs": outputs,
        # The backbone and its builder's arguments (clusterclr.models.backbone_spec.BackboneSpec).
        "architecture": {"backbone": spec.name, **spec.kwargs},
        "initial_weights": None if cfg.model.weights is None else {"file": cfg.model.weights, "format": cfg.model.weights_format},
    }


def export_model(model: Model, epoch: int, fmt: str, out: Path) -> Path:
    """Write ``model``'s encoder to ``out`` in ``fmt`` and its preprocessing beside it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if out.suffix != FORMATS[fmt]:
        raise UserError(f"--out must name a {FORMATS[fmt]} file for --format {fmt}, got {out}")
    encoder = Encoder(model)
    settings = preprocessing(model, encoder, epoch, fmt, out)
    example = torch.zeros(2, model.method.data.channels, *model.method.data.image_size)
    if fmt == "safetensors":
        metadata = {
            "producer": settings["producer"],
            "epoch": str(epoch),
            "config": json.dumps(model.config.model_dump(mode="json")),
            "preprocessing": json.dumps(settings),
        }
        save_safetensors(out, encoder.state_dict(), metadata)
    elif fmt == "torchscript":
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            # PyTorch deprecates TorchScript in favour of torch.export, but TorchScript is still what
            # C++ (libtorch) and older PyTorch versions load.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated")
            torch.jit.save(torch.jit.trace(encoder, example), buffer)
        atomic_write(out, lambda f: f.write(buffer.getbuffer()))
    else:
        atomic_write(out, lambda f: f.write(_onnx_bytes(encoder, example)))
    write_json(preprocessing_path(out), settings)
    return out


def preprocessing_path(out: Path) -> Path:
    """Where the preprocessing JSON of the model written to ``out`` goes: beside it, ``out`` + ".json"."""
    return out.with_name(out.name + ".json")


def _onnx_bytes(encoder: Encoder, example: torch.Tensor) -> bytes:
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install 'clusterclr[onnx]'") from None
    buffer = io.BytesIO()
    names = encoder.output_names
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript-based exporter is deprecated in favour of one that needs onnxscript; it serves
        # these plain convolutional graphs exactly (checked against onnxruntime in the tests).
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            encoder, (example,), buffer, input_names=["images"], output_names=names, opset_version=ONNX_OPSET,
            dynamic_axes={name: {0: "batch"} for name in ["images", *names]}, dynamo=False,
        )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    return buffer.getvalue()

