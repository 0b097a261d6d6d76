"""center_predictor and cc as methods: centre init, head outputs, unlabelled data, collapse guard."""

import numpy as np
import pytest
import torch

import clusterclr
from clusterclr.build import build_parts
from clusterclr.cli import main
from clusterclr.clustering.kmeans import kmeans
from clusterclr.config import OptimConfig
from clusterclr.configure import build_config
from clusterclr.errors import UserError
from clusterclr.evaluate.standard import head_cluster_sizes
from clusterclr.methods.base import Batch
from clusterclr.methods.training_images import TrainingImages
from clusterclr.optim import optimizer_groups

TINY = [
    "model.width=0.125",
    "optim.batch_size=128",
    "train.progress=false", "train.report=false",
    "train.eval_every=0",
    "train.log_every=1",
    "method.projection_hidden_dim=64",
    "method.projection_dim=32",
]


def training_images(parts, seed=0):
    return TrainingImages(
        parts.splits.train.images, parts.splits.train.labels, parts.views, parts.device, batch_size=512, seed=seed
    )


def test_centres_start_at_kmeans_of_the_untrained_clean_features():
    parts = build_parts(build_config(flags={"method.name": "center_predictor"}, overrides=TINY))
    method, images = parts.method, training_images(parts, seed=3)
    buffers = {k: v.clone() for k, v in method.backbone.named_buffers()}
    logs = method.on_epoch_start(0, images)
    features = images.encode(method.backbone, method.backbone, batch_statistics=True)
    expected = kmeans(features, 10, seed=3, restarts=method.options.init_kmeans_restarts)
    assert torch.allclose(method.centres.centres, torch.from_numpy(expected.centroids))
    assert logs["centre_init_inertia"] == pytest.approx(expected.inertia)
    assert sum(logs["centre_init_cluster_sizes"]) == len(images)
    # Encoding for the init leaves batch-norm statistics as they were.
    assert all(torch.equal(v, buffers[k]) for k, v in method.backbone.named_buffers())
    # Initialised once: a later epoch (or a resumed run) keeps the centres it has.
    method.centres.centres.data.add_(1.0)
    assert method.on_epoch_start(1, images) == {}
    assert torch.allclose(method.centres.centres, torch.from_numpy(expected.centroids) + 1.0)


def test_centres_get_no_weight_decay_and_every_loss_reaches_them():
    parts = build_parts(build_config(flags={"method.name": "center_predictor"}, overrides=TINY))
    method = parts.method
    method.on_epoch_start(0, training_images(parts))
    decayed = optimizer_groups(method, OptimConfig(weight_decay=5e-4, exclude_bias_and_norm=False))[0]["params"]
    assert all(p is not method.centres.centres for p in decayed)
    images = parts.splits.train.images[:32]
    for weights in (["cluster_weight", 1.0, "anchor_weight", 0.0], ["cluster_weight", 0.0, "anchor_weight", 1.0]):
        method.options = method.options.model_copy(update={"instance_weight": 0.0, weights[0]: weights[1], weights[2]: weights[3]})
        method.zero_grad()
        method.training_step(Batch(parts.views(images, 2), torch.arange(32), parts.views.clean(images))).loss.backward()
        assert method.centres.centres.grad.abs().sum() > 0
        projector_grad = method.projector[0].weight.grad  # the instance loss is off
        assert projector_grad is None or projector_grad.abs().sum() == 0


def test_balance_term_adds_its_weighted_marginal_entropy_gap_and_reaches_the_centres():
    from clusterclr.losses.cluster_contrast import marginal_entropy_gap

    parts = build_parts(build_config(flags={"method.name": "center_predictor"}, overrides=TINY))
    method = parts.method
    method.on_epoch_start(0, training_images(parts))
    images = parts.splits.train.images[:32]
    torch.manual_seed(0)
    batch = Batch(parts.views(images, 2), torch.arange(32), parts.views.clean(images))
    off = method.training_step(batch)
    q_clean = method.centres(method.backbone(batch.clean))
    assert off.logs["balance"] == pytest.approx(marginal_entropy_gap(q_clean).item(), abs=1e-6)
    method.options = method.options.model_copy(update={"balance_weight": 2.0})
    on = method.training_step(batch)
    assert on.loss.item() == pytest.approx(off.loss.item() + 2.0 * off.logs["balance"].item(), abs=1e-5)
    # Alone, the term moves the centres (towards an even use of the clusters).
    method.options = method.options.model_copy(update={"instance_weight": 0.0, "cluster_weight": 0.0, "anchor_weight": 0.0})
    method.zero_grad()
    method.training_step(batch).loss.backward()
    assert method.centres.centres.grad.abs().sum() > 0


def test_cc_cluster_loss_trains_the_backbone_through_the_head():
    parts = build_parts(build_config(flags={"method.name": "cc"}, overrides=TINY + ["method.cluster_hidden_dim=16"]))
    method = parts.method
    images = parts.splits.train.images[:31]  # an odd batch: nothing is built for one size
    out = method.training_step(Batch(parts.views(images, 2), torch.arange(31)))
    out.loss.backward()
    assert method.cluster_head[0][0].weight.grad.abs().sum() > 0
    assert method.backbone.stem[0].weight.grad.abs().sum() > 0
    assert 1 <= out.logs["clusters_used"] <= 10


@pytest.mark.parametrize("method", ["center_predictor", "cc"])
def test_head_scores_sizes_and_assignments_reach_metrics_and_embed(method, tmp_path):
    run = tmp_path / method
    config = build_config(flags={"method.name": method, "train.epochs": 2}, overrides=TINY)
    metrics = clusterclr.train(config, out=run).metrics
    for key in ("head_nmi", "head_acc", "head_ari"):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(metrics["head_cluster_sizes"]) == 10 and sum(metrics["head_cluster_sizes"]) == metrics["num_train"]
    out = tmp_path / "e.npy"
    assert main(["embed", str(run), "--out", str(out)]) == 0
    header, *rows = out.with_suffix(".csv").read_text().splitlines()
    assert header.endswith("head_cluster,head_confidence")
    cells = [row.split(",") for row in rows]
    assert {int(c[5]) for c in cells} <= set(range(10))
    assert all(0.1 <= float(c[6]) <= 1.0 for c in cells)  # a max over 10 probabilities is at least 1/10


def write_folder(root, count=24):
    from PIL import Image

    root.mkdir()
    generator = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(generator.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(root / f"img_{i:02d}.png")


def test_unlabelled_folder_trains_with_a_given_number_of_clusters(tmp_path):
    write_folder(tmp_path / "photos")
    flags = {"method.name": "center_predictor", "data.dataset": "folder", "data.root": str(tmp_path / "photos"), "train.epochs": 1}
    overrides = TINY + ["optim.batch_size=8"]
    with pytest.raises(UserError, match="--set clusters=K"):
        build_parts(build_config(flags=flags, overrides=overrides))
    metrics = clusterclr.train(build_config(flags=flags, overrides=overrides + ["clusters=3"]), out=tmp_path / "run").metrics
    assert metrics["clusters"] == 3 and metrics["head_nmi"] is None
    assert len(metrics["head_cluster_sizes"]) == 3


def test_collapsed_heads_are_reported_and_warned_about():
    healthy = torch.eye(4)[torch.arange(40) % 4]
    assert head_cluster_sizes(healthy) == {"head_cluster_sizes": [10] * 4, "head_empty_clusters": 0, "head_largest_cluster": 0.25}
    collapsed = torch.eye(4)[torch.tensor([0] * 35 + [1] * 5)]
    with pytest.warns(UserWarning, match="2 of its 4 clusters are empty and the largest holds 88%"):
        sizes = head_cluster_sizes(collapsed)
    assert sizes["head_empty_clusters"] == 2 and sizes["head_cluster_sizes"] == [35, 5, 0, 0]


@pytest.mark.parametrize("how", ["separate", "running", "batch", "joint"])
def test_the_clean_view_is_normalised_as_clean_view_norm_says(how):
    import copy

    from clusterclr.losses.dec import clustering_loss

    parts = build_parts(build_config(flags={"method.name": "center_predictor"}, overrides=TINY + [f"method.clean_view_norm={how}"]))
    method = parts.method
    method.on_epoch_start(0, training_images(parts))
    images = parts.splits.train.images[:32]
    torch.manual_seed(0)
    batch = Batch(parts.views(images, 2), torch.arange(32), parts.views.clean(images))
    # A copy of the backbone after a training-mode pass over ``inputs``, and the features it gave.
    def train_pass(*inputs):
        backbone = copy.deepcopy(method.backbone).train()
        with torch.no_grad():
            return backbone, backbone(torch.cat(inputs))

    after_augmented, _ = train_pass(*batch.views)
    augmented_only = after_augmented.stem[1].running_mean
    after_joint, joint_features = train_pass(*batch.views, batch.clean)
    with torch.no_grad():
        clean_features = {
            "running": after_augmented.eval()(batch.clean),  # the statistics as the augmented pass left them
            "batch": train_pass(batch.clean)[1],
            "separate": train_pass(batch.clean)[1],
            "joint": joint_features[-32:],
        }[how]
    joint = after_joint.stem[1].running_mean
    out = method.training_step(batch)
    running_mean = method.backbone.stem[1].running_mean
    if how == "joint":
        assert torch.allclose(running_mean, joint)
    elif how == "separate":  # the clean batch's statistics entered the running ones too
        assert not torch.allclose(running_mean, augmented_only)
    else:  # the clean pass left the running statistics to the augmented views
        assert torch.equal(running_mean, augmented_only)
    q = method.centres(clean_features)
    assert out.logs["clustering"].item() == pytest.approx(clustering_loss(q, q.sum(0)).item(), rel=1e-5)
