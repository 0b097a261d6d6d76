"""Loading weight files of published layouts, against the reference implementations where there is one.

Reference models are transformers' (DINOv2, CLIP, ResNet), built from tiny
random configurations and saved in their own format; files of the other
layouts are written here from the names their libraries use. Nothing is
downloaded.
"""

import argparse
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from weight_files import CLIP, dinov2_checkpoint, hf_clip, hf_dinov2, hf_resnet, randomize, torchvision_layout, torchvision_resnet

from clusterclr.models.pretrained import CLIP_MEAN, IMAGENET_MEAN, load_pretrained

ATOL = 1e-5
# OpenAI's CLIP files are TorchScript archives; scripting is the only way to write one.
scripting = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def assert_features(ours: torch.Tensor, reference: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference, rtol=0, atol=ATOL)


# ---------------------------------------------------------------- transformers' DINOv2


def test_hf_dinov2_matches_transformers_at_any_size(tmp_path):
    reference = hf_dinov2()
    reference.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path / "model.safetensors")  # 128 wide: two 64-dimensional heads
    assert loaded.family == "hf-dinov2" and loaded.backbone.feature_dim == 128
    assert loaded.preprocessing.mean == IMAGENET_MEAN and loaded.preprocessing.patch_size == 7
    for size in [(28, 28), (42, 35)]:  # the second resamples the 4×4 positions to 6×5
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert_features(loaded.backbone(x), reference(pixel_values=x).pooler_output)


def test_hf_dinov2_in_memory_names_of_transformers_5(tmp_path):
    reference = hf_dinov2()
    torch.save(reference.state_dict(), tmp_path / "state.pth")  # attention.q_proj…, not attention.attention.query…
    loaded = load_pretrained(tmp_path / "state.pth")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert_features(loaded.backbone(x), reference(pixel_values=x).pooler_output)


def test_hf_dinov2_with_registers_and_cls_mean_pooling(tmp_path):
    reference = hf_dinov2(registers=3, hidden=32, heads=4)
    reference.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path / "model.safetensors", heads=4, pooling="cls+mean")
    assert loaded.spec.kwargs["registers"] == 3 and loaded.backbone.feature_dim == 64
    for size in [(28, 28), (21, 35)]:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            tokens = reference(pixel_values=x).last_hidden_state
            expected = torch.cat([tokens[:, 0], tokens[:, 4:].mean(dim=1)], dim=1)
            assert_features(loaded.backbone(x), expected)


# ---------------------------------------------------------------- the official DINOv2 layout and timm's


def saved_state(model, directory) -> dict:
    """The tensors as transformers writes them to files (its modules name some differently in memory)."""
    model.save_pretrained(directory)
    return load_file(directory / "model.safetensors")


def official_dinov2(hf_state: dict, registers: int) -> dict:
    """transformers' DINOv2 tensors under the names of facebookresearch/dinov2's checkpoints."""
    state = {
        "cls_token": hf_state["embeddings.cls_token"],
        "pos_embed": hf_state["embeddings.position_embeddings"],
        "mask_token": hf_state["embeddings.mask_token"],
        "patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": hf_state["layernorm.weight"],
        "norm.bias": hf_state["layernorm.bias"],
    }
    if registers:
        state["register_tokens"] = hf_state["embeddings.register_tokens"]
    for i in range(2):
        hf, block = f"encoder.layer.{i}.", f"blocks.{i}."
        for t in ("weight", "bias"):
            parts = [hf_state[f"{hf}attention.attention.{p}.{t}"] for p in ("query", "key", "value")]
            state[f"{block}attn.qkv.{t}"] = torch.cat(parts)
            state[f"{block}attn.proj.{t}"] = hf_state[f"{hf}attention.output.dense.{t}"]
            for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                state[f"{block}{part}.{t}"] = hf_state[f"{hf}{part}.{t}"]
        state[f"{block}ls1.gamma"] = hf_state[f"{hf}layer_scale1.lambda1"]
        state[f"{block}ls2.gamma"] = hf_state[f"{hf}layer_scale2.lambda1"]
    return state


def test_official_dinov2_checkpoint_in_a_dino_teacher_with_chunked_blocks(tmp_path):
    reference = hf_dinov2()
    state = official_dinov2(saved_state(reference, tmp_path), registers=0)
    # The training code's checkpoint: blocks in chunks (blocks.C.N), the teacher beside the student, arguments.
    into_chunks = lambda m: f"blocks.{int(m.group(1)) // 2}.{m.group(1)}."  # noqa: E731
    chunked = {re.sub(r"^blocks\.(\d+)\.", into_chunks, k): v for k, v in state.items()}
    teacher = {f"backbone.{k}": v for k, v in chunked.items()} | {"dino_head.last_layer.weight": torch.zeros(8, 128)}
    checkpoint = {"teacher": teacher, "student": {}, "iteration": 7, "args": argparse.Namespace(arch="vit_small")}
    torch.save(checkpoint, tmp_path / "teacher_checkpoint.pth")
    loaded = load_pretrained(tmp_path / "teacher_checkpoint.pth")
    assert loaded.family == "dinov2" and loaded.unwrapped == ("teacher", "backbone.")
    assert loaded.spec.kwargs["interpolate_offset"] == 0.1  # the original code's resampling of positions
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert_features(loaded.backbone(x), reference(pixel_values=x).pooler_output)


def test_dinov2_with_registers_official_and_timm_ports_agree_with_transformers(tmp_path):
    reference = hf_dinov2(registers=2, hidden=32, heads=4)
    official = official_dinov2(saved_state(reference, tmp_path), registers=2)
    save_file(official, tmp_path / "official.safetensors")
    # timm's _convert_dinov2: registers as reg_token, the class position added into the class token.
    timm = {k: v for k, v in official.items() if k not in ("register_tokens", "mask_token", "cls_token", "pos_embed")}
    timm |= {"reg_token": official["register_tokens"], "pos_embed": official["pos_embed"][:, 1:].contiguous()}
    timm |= {"cls_token": official["cls_token"] + official["pos_embed"][:, :1], "head.weight": torch.zeros(5, 32)}
    save_file(timm, tmp_path / "timm.safetensors")
    x = torch.randn(2, 3, 35, 42)
    with torch.no_grad():
        expected = reference(pixel_values=x).pooler_output
        for name, family in [("official", "dinov2"), ("timm", "timm-vit")]:
            loaded = load_pretrained(tmp_path / f"{name}.safetensors", heads=4)
            assert loaded.family == family
            assert_features(loaded.backbone(x), expected)


def timm_vit_small_patch16_224() -> dict:
    """Every tensor of timm's vit_small_patch16_224 with its shape, random values."""
    state = {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16)}
    state |= {"patch_embed.proj.bias": (384,), "norm.weight": (384,), "norm.bias": (384,)}
    state |= {"head.weight": (1000, 384), "head.bias": (1000,)}
    for i in range(12):
        shapes = {"norm1": (384,), "attn.qkv": (1152, 384), "attn.proj": (384, 384), "norm2": (384,)}
        shapes |= {"mlp.fc1": (1536, 384), "mlp.fc2": (384, 1536)}
        for part, shape in shapes.items():
            state[f"blocks.{i}.{part}.weight"] = shape
            state[f"blocks.{i}.{part}.bias"] = shape[:1]
    assert len(state) == 152
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(shape, generator=generator) for k, shape in state.items()}


def test_timm_vit_small_file_loads_strictly(tmp_path):
    state = timm_vit_small_patch16_224()
    save_file(state, tmp_path / "model.safetensors")
    loaded = load_pretrained(tmp_path / "model.safetensors", backbone="vit_small")
    assert loaded.family == "timm-vit" and loaded.spec.name == "vit_small"
    assert loaded.spec.kwargs["patch_size"] == 16 and loaded.preprocessing.resolution == 224
    ours = loaded.backbone.state_dict()
    assert torch.equal(ours["blocks.11.attn.qkv.weight"], state["blocks.11.attn.qkv.weight"])
    assert torch.equal(ours["patch_embed.weight"], state["patch_embed.proj.weight"])
    assert loaded.backbone(torch.randn(1, 3, 64, 48)).shape == (1, 384)


def test_official_dinov2_vit_s14_with_registers_loads_strictly(tmp_path):
    torch.save(dinov2_checkpoint(384, 12, patch=14, grid=37, registers=4), tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    loaded = load_pretrained(tmp_path / "dinov2_vits14_reg4_pretrain.pth")
    assert loaded.family == "dinov2" and loaded.spec.name == "vit_small"
    kwargs = loaded.spec.kwargs
    assert (kwargs["patch_size"], kwargs["image_size"], kwargs["registers"]) == (14, 518, 4)
    assert kwargs["interpolate_antialias"] and loaded.preprocessing.resolution == 224


# ---------------------------------------------------------------- CLIP


@pytest.mark.parametrize("projection", [True, False])
def test_hf_clip_matches_transformers_at_any_size(tmp_path, projection):
    reference = hf_clip("quick_gelu", projection)
    reference.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path / "model.safetensors", heads=4)
    assert loaded.family == "hf-clip" and loaded.backbone.feature_dim == (16 if projection else 32)
    assert loaded.preprocessing.mean == CLIP_MEAN and loaded.preprocessing.resolution == 28
    output = "image_embeds" if projection else "pooler_output"
    for size, resample in [(28, False), (42, True)]:
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            expected = getattr(reference(pixel_values=x, interpolate_pos_encoding=resample), output)
            assert_features(loaded.backbone(x), expected)


def open_clip_layout(hf_state: dict) -> dict:
    """transformers' CLIP vision tensors under OpenAI's and open_clip's names, with a text tower beside."""
    v = "vision_model."
    state = {
        "visual.class_embedding": hf_state[f"{v}embeddings.class_embedding"],
        "visual.conv1.weight": hf_state[f"{v}embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf_state[f"{v}embeddings.position_embedding.weight"],
        "visual.proj": hf_state["visual_projection.weight"].T.contiguous(),
        "logit_scale": torch.tensor(4.6),
        "text_projection": torch.zeros(32, 16),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(96, 32),
    }
    for ours, theirs in [("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")]:
        for t in ("weight", "bias"):
            state[f"visual.{ours}.{t}"] = hf_state[f"{v}{theirs}.{t}"]
    for i in range(2):
        hf, block = f"{v}encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for t in ("weight", "bias"):
            state[f"{block}attn.in_proj_{t}"] = torch.cat([hf_state[f"{hf}self_attn.{p}_proj.{t}"] for p in "qkv"])
            state[f"{block}attn.out_proj.{t}"] = hf_state[f"{hf}self_attn.out_proj.{t}"]
            renames = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
            for ours, theirs in renames.items():
                state[f"{block}{ours}.{t}"] = hf_state[f"{hf}{theirs}.{t}"]
    return state


def test_open_clip_checkpoint_matches_transformers(tmp_path):
    reference = hf_clip("gelu")  # open_clip's ViTs use GELU
    state = {f"module.{k}": v for k, v in open_clip_layout(reference.state_dict()).items()}
    checkpoint = {"epoch": 32, "name": "run", "state_dict": state}
    torch.save(checkpoint, tmp_path / "epoch_32.pt")
    loaded = load_pretrained(tmp_path / "epoch_32.pt", heads=4)
    assert loaded.family == "open-clip" and loaded.unwrapped == ("state_dict", "module.")
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert_features(loaded.backbone(x), reference(pixel_values=x).image_embeds)
    rebuilt = loaded.spec.build().eval()
    rebuilt.load_state_dict(loaded.backbone.state_dict())
    assert torch.equal(rebuilt(x), loaded.backbone(x))


@scripting
def test_openai_torchscript_archive_loads_without_running_it(tmp_path, monkeypatch):
    model = randomize(CLIP()).half()  # OpenAI's archives hold half-precision weights
    torch.jit.script(model).save(tmp_path / "ViT-B-32.pt")
    reference = model.float()

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load would run the archive's code")

    monkeypatch.setattr(torch.jit, "load", refuse)
    loaded = load_pretrained(tmp_path / "ViT-B-32.pt", heads=4)
    assert loaded.family == "openai-clip" and loaded.spec.kwargs["activation"] == "quick_gelu"
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        assert_features(loaded.backbone(x), reference.visual(x))


# ---------------------------------------------------------------- ResNets


@pytest.mark.parametrize("bottleneck, name", [(True, "resnet50"), (False, "resnet18")])
def test_resnets_match_transformers_in_both_layouts(tmp_path, bottleneck, name):
    reference = hf_resnet(bottleneck)
    reference.save_pretrained(tmp_path)
    torch.save(torchvision_layout(reference.state_dict()), tmp_path / "torchvision.pth")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference(pixel_values=x).pooler_output.flatten(1)
        for file, family in [("model.safetensors", "hf-resnet"), ("torchvision.pth", "torchvision-resnet")]:
            loaded = load_pretrained(tmp_path / file, backbone=name)
            assert loaded.family == family
            assert loaded.spec.kwargs == {"in_channels": 3, "stem": "imagenet", "width": 0.125}
            assert loaded.preprocessing.mean == IMAGENET_MEAN and loaded.preprocessing.patch_size is None
            assert_features(loaded.backbone.eval()(x), expected)


@pytest.mark.parametrize(
    "name, bottleneck, blocks, counters, count",
    [("resnet18", False, (2, 2, 2, 2), False, 102), ("resnet50", True, (3, 4, 6, 3), True, 320)],
)
def test_torchvision_files_load_strictly(tmp_path, name, bottleneck, blocks, counters, count):
    state = torchvision_resnet(bottleneck, blocks, counters)
    assert len(state) == count  # the real files' tensor counts (resnet18's file has no batch-norm counters)
    torch.save(state, tmp_path / f"{name}.pth")
    loaded = load_pretrained(tmp_path / f"{name}.pth")
    assert loaded.family == "torchvision-resnet" and loaded.spec.name == name
    ours = loaded.backbone.state_dict()
    assert torch.equal(ours["stem.0.weight"], state["conv1.weight"])
    assert torch.equal(ours["stem.1.running_var"], state["bn1.running_var"])
    assert torch.equal(ours["stages.3.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert torch.equal(ours["stages.1.0.shortcut.1.weight"], state["layer2.0.downsample.1.weight"])
    assert int(ours["stages.2.0.bn1.num_batches_tracked"]) == (5 if counters else 0)


def prefixed(state: dict, prefix: str) -> dict:
    return {f"{prefix}{k}": v for k, v in state.items()}


@pytest.mark.parametrize(
    "wrap, steps",
    [
        (lambda s: prefixed(s, "module."), ("module.",)),  # DistributedDataParallel
        (lambda s: prefixed(s, "_orig_mod."), ("_orig_mod.",)),  # torch.compile
        (  # MoCo: the query encoder beside the key encoder and the queue
            lambda s: {"state_dict": prefixed(s, "module.encoder_q.") | prefixed(s, "module.encoder_k.")},
            ("state_dict", "module.", "encoder_q."),
        ),
        (  # Lightning: a module holding the backbone beside a head
            lambda s: {"epoch": 3, "state_dict": prefixed(s, "model.backbone.") | {"model.head.bias": s["fc.bias"]}},
            ("state_dict", "model.", "backbone."),
        ),
        (lambda s: {"model": s, "optimizer": {}}, ("model",)),
        (lambda s: {"student": prefixed(s, "backbone.")}, ("student", "backbone.")),
    ],
)
def test_training_wrappers_come_off(tmp_path, wrap, steps):
    state = torchvision_layout(hf_resnet(bottleneck=False).state_dict())
    torch.save(wrap(state), tmp_path / "checkpoint.pth")
    loaded = load_pretrained(tmp_path / "checkpoint.pth")
    assert loaded.unwrapped == steps
    assert torch.equal(loaded.backbone.state_dict()["stages.3.1.conv2.weight"], state["layer4.1.conv2.weight"])
