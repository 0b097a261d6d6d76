"""Weight files that must not load: truncated, pickles that run code, unknown layouts, files that do not fit.

Each gets a one-line error that says what is wrong with the file; none of
them runs anything it holds.
"""

import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save_file
from weight_files import CLIP, hf_clip, hf_dinov2, hf_resnet, torchvision_layout

from clusterclr.errors import UserError
from clusterclr.models.pretrained import load_pretrained

# OpenAI's CLIP files are TorchScript archives; scripting is the only way to write one.
scripting = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def user_error(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as caught:
        call(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def resnet18_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_layout(hf_resnet(bottleneck=False).state_dict()), path)
    return path


@scripting
def test_truncated_files_are_refused(tmp_path, resnet18_file):
    hf_dinov2().save_pretrained(tmp_path / "hf")
    model = CLIP()
    torch.jit.script(model).save(tmp_path / "clip.pt")
    for path in [resnet18_file, tmp_path / "hf" / "model.safetensors", tmp_path / "clip.pt"]:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert "cannot load" in user_error(load_pretrained, path)
    (tmp_path / "empty.pth").write_bytes(b"")
    assert "cannot load" in user_error(load_pretrained, tmp_path / "empty.pth")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv1.weight": torch.zeros(1), "payload": RunsCode(marker)}, tmp_path / "evil.pth")
    message = user_error(load_pretrained, tmp_path / "evil.pth")
    assert "refused" in message and "nothing in it was run" in message
    # The same payload as the module tree of a TorchScript archive, which OpenAI's CLIP files are.
    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(RunsCode(marker), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/version", "3\n")
    message = user_error(load_pretrained, tmp_path / "evil.pt")
    assert "system" in message and "nothing in it was run" in message
    assert not marker.exists()


def test_unknown_layout_lists_its_tensors(tmp_path):
    save_file({"encoder.conv.weight": torch.zeros(2), "decoder.fc.bias": torch.zeros(2)}, tmp_path / "vae.safetensors")
    message = user_error(load_pretrained, tmp_path / "vae.safetensors")
    assert "encoder.conv.weight" in message and "decoder.fc.bias" in message and "torchvision-resnet" in message


def test_wrong_family_or_architecture_asked_for(resnet18_file):
    assert "not in the hf-clip layout: it looks like torchvision-resnet" in user_error(
        load_pretrained, resnet18_file, "hf-clip"
    )
    message = user_error(load_pretrained, resnet18_file, backbone="resnet50")
    assert "holds a resnet18, not the resnet50 asked for" in message
    assert "apply to ViTs" in user_error(load_pretrained, resnet18_file, pooling="cls+mean")
    assert "unknown weights family" in user_error(load_pretrained, resnet18_file, "keras")
    assert "no weights file" in user_error(load_pretrained, resnet18_file.with_name("absent.pth"))


def test_a_file_that_does_not_fit_names_the_tensor(tmp_path):
    base = torchvision_layout(hf_resnet(bottleneck=False).state_dict())
    cases = [
        (
            {"layer3.0.conv1.weight": torch.zeros(32, 8, 3, 3)},
            None,
            "layer3.0.conv1.weight is (32, 8, 3, 3) in the file, (32, 16, 3, 3) needed",
        ),
        ({}, "layer2.1.bn1.running_mean", "it has no layer2.1.bn1.running_mean"),
        ({"layer1.0.se.fc.weight": torch.zeros(2)}, None, "no place for: layer1.0.se.fc.weight"),
        ({"layer3.6.conv1.weight": torch.zeros(1)}, None, "ResNet of 2-2-7-2 basic blocks"),
    ]
    for changed, removed, expected in cases:
        state = base | changed
        state.pop(removed, None)
        torch.save(state, tmp_path / "edited.pth")
        assert expected in user_error(load_pretrained, tmp_path / "edited.pth")


def test_a_vit_width_without_standard_heads_needs_them(tmp_path):
    hf_clip("quick_gelu").save_pretrained(tmp_path)
    assert "give the head count" in user_error(load_pretrained, tmp_path / "model.safetensors")
    message = user_error(load_pretrained, tmp_path / "model.safetensors", heads=4, activation="relu")
    assert "unknown activation" in message
