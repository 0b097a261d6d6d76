"""The clustering stage in use: `clusterclr stage` on a run, end to end, `cluster --clusters auto`, look-alikes, resuming."""

import csv
import io
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

import clusterclr
from clusterclr.build import build_parts, load_parts
from clusterclr.cli import main
from clusterclr.commands import stage as stage_command
from clusterclr.data.base import ImageDataset
from clusterclr.errors import Interrupted, UserError
from clusterclr.evaluate.features import embed, view_averaged_features
from clusterclr.optim import optimizer_groups
from clusterclr.rundir import RunDir
from clusterclr.stage.graph import neighbour_graph
from clusterclr.stage.store import read_stage

TINY = {
    "model.width": 0.125, "optim.batch_size": 128, "train.epochs": 2, "train.progress": False,
    "train.eval_every": 0, "method.projection_hidden_dim": 32, "method.projection_dim": 16,
}
FAST_STAGE = {"epochs": 3, "heads": 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return clusterclr.train(overrides=TINY, out=tmp_path_factory.mktemp("stage") / "run")


def test_a_stage_gives_the_run_a_cluster_head_everything_uses(trained, tmp_path):
    metrics = trained.fit_stage(4, FAST_STAGE, progress=False)
    assert {"head_nmi", "head_acc", "head_ari"} <= metrics.keys() and len(metrics["head_cluster_sizes"]) == 4
    record = read_stage(trained.directory.cluster_stage)
    assert record["clusters"] == 4 and record["kept_head"] == int(np.argmin(record["head_losses"]))
    # More of the mined neighbours share a class than chance (1 in 10) gives; the labels never reach the loss.
    assert 0.1 < metrics["stage"]["neighbour_precision"] == record["neighbour_precision"] <= 1
    assert trained.metrics["stage"]["kept_head"] == record["kept_head"]
    loaded = clusterclr.load(trained.directory.path)
    assert loaded.model.cluster_stage is not None and "4 clusters, head" in loaded.stage_summary()
    embedded = loaded.embed(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8))
    assert embedded.cluster_probabilities.shape == (6, 4)
    torch.testing.assert_close(embedded.cluster_probabilities.sum(1), torch.ones(6))
    sections = loaded.evaluate(["head"])
    assert sections["head"]["settings"]["clusters"] == 4
    out = loaded.export(tmp_path / "encoder.safetensors")
    assert out.with_name(out.name + ".json").read_text().count("cluster_probabilities") >= 1


def test_bad_stage_input_is_a_one_line_error(trained, capsys):
    assert main(["stage", str(trained.directory), "--clusters", "5000"]) == 2
    assert "cannot make 5000 clusters" in capsys.readouterr().err
    assert main(["stage", str(trained.directory), "--set", "stage.loss=kmeans"]) == 2
    assert "'stage.loss'" in capsys.readouterr().err
    assert main(["stage", str(trained.directory), "--set", "optim.lr=1"]) == 2
    assert "stage.KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(UserError, match="'eval.auto_clusters'"):
        clusterclr.make_config(overrides={"eval.auto_clusters": [3, 3]})


class _StopAfterSevenSteps:
    """A stop request that arrives after the stage's seventh step (mid-epoch: five steps make one), as a Ctrl-C would."""

    def __init__(self):
        self.checks = 0

    @property
    def signal(self):
        self.checks += 1
        return signal.SIGINT if self.checks > 7 else None

    @contextmanager
    def listening(self):
        yield


@pytest.mark.parametrize("mining_views", [0, 1])
def test_an_interrupted_stage_resumes_exactly(trained, monkeypatch, mining_views):
    settings = {**FAST_STAGE, "epochs": 4, "mining_views": mining_views}
    clusterclr.Run(trained.directory).fit_stage(3, settings, progress=False)
    expected = read_stage(trained.directory.cluster_stage)["head"]["state"]
    with monkeypatch.context() as patched:
        patched.setattr(stage_command, "StopRequest", _StopAfterSevenSteps)
        with pytest.raises(Interrupted):
            clusterclr.Run(trained.directory).fit_stage(3, settings, progress=False)
    saved = read_stage(trained.directory.cluster_stage)
    assert saved["head"] is None and (saved["progress"]["epoch"], saved["progress"]["step"]) == (1, 2)
    clusterclr.Run(trained.directory).fit_stage(resume=True, progress=False)
    resumed = read_stage(trained.directory.cluster_stage)["head"]["state"]
    for key, value in expected.items():
        assert torch.equal(resumed[key], value), key


def test_view_averaged_features_average_the_clean_view_and_seeded_training_views(trained):
    parts, _ = load_parts(trained.directory)
    images = ImageDataset(parts.splits.train.images[:300])
    clean = embed(parts, images).features
    torch.testing.assert_close(view_averaged_features(parts, images, 0, seed=0), clean)
    state = torch.get_rng_state()
    averaged = view_averaged_features(parts, images, 2, seed=5)
    assert torch.equal(torch.get_rng_state(), state), "the global random state is left as it was"
    assert torch.equal(view_averaged_features(parts, images, 2, seed=5), averaged)
    assert not torch.allclose(view_averaged_features(parts, images, 2, seed=6), averaged)
    # By hand: the same views, drawn from the seed batch by batch, averaged with the clean one.
    torch.manual_seed(5)
    expected = []
    with torch.no_grad():
        parts.method.eval()
        for rows in torch.arange(len(images)).split(parts.config.eval.batch_size):
            views = [parts.views.clean(images.images[rows]), *parts.views(images.images[rows], 2)]
            expected.append(torch.stack([parts.method.embed(v) for v in views]).mean(0))
    torch.testing.assert_close(averaged, torch.cat(expected), rtol=1e-5, atol=1e-5)


def test_neighbours_are_mined_on_view_averaged_features(trained):
    metrics = clusterclr.Run(trained.directory).fit_stage(4, {**FAST_STAGE, "mining_views": 1}, progress=False)
    parts, _ = load_parts(trained.directory)
    labels = parts.splits.train.labels

    def precision(features):
        graph = neighbour_graph(features, 20)
        return float((labels[graph.indices] == labels[:, None]).double().mean())

    averaged = precision(view_averaged_features(parts, parts.splits.train, 1, parts.config.seed))
    assert metrics["stage"]["neighbour_precision"] == pytest.approx(averaged)
    assert averaged != pytest.approx(precision(embed(parts, parts.splits.train).features)), "the clean view's neighbours differ"
    assert read_stage(trained.directory.cluster_stage)["settings"]["mining_views"] == 1


def test_end_to_end_fine_tunes_a_new_run_with_a_head(trained, tmp_path):
    tuned = trained.fit_stage_end_to_end(tmp_path / "scan", epochs=1, self_label_epochs=1, clusters=4, settings={"heads": 2, "lr": 5e-3})
    assert tuned.config.method.name == "scan" and tuned.config.positives.encoder == str(trained.directory.path)
    # The backbone at the paper's Adam rate, the fresh heads at the stage's.
    method = build_parts(tuned.config).method
    scale_of = {id(p): group["lr_scale"] for group in optimizer_groups(method, tuned.config.optim) for p in group["params"]}
    assert tuned.config.optim.lr == 1e-4
    assert {round(scale_of[id(p)], 9) for p in method.heads.parameters()} == {50.0}
    assert {scale_of[id(p)] for p in method.backbone.parameters()} == {1.0}
    assert tuned.metrics["epoch"] == 2 and "head_nmi" in tuned.metrics
    initial = trained.backbone.state_dict()
    moved = [name for name, value in tuned.backbone.state_dict().items() if not torch.equal(value.cpu(), initial[name].cpu())]
    assert moved, "the backbone was fine-tuned"


def _colour_folder(root, colours, per_colour=12, size=16, duplicates=0):
    """Flat images of a few plain colours with noise (planted clusters), plus exact copies of the first few."""
    root.mkdir()
    g = np.random.default_rng(0)
    for c, colour in enumerate(colours):
        for i in range(per_colour):
            pixels = np.clip(np.array(colour) + g.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}_{i:02d}.png")
    for i in range(duplicates):
        (root / f"copy_{i}.png").write_bytes((root / f"c0_{i:02d}.png").read_bytes())
    return root


def test_cluster_auto_finds_the_planted_number_of_clusters_and_its_report_shows_the_curve(tmp_path):
    folder = _colour_folder(tmp_path / "colours", [(230, 30, 30), (30, 200, 40), (40, 60, 230)])
    found = clusterclr.cluster(folder, "auto", epochs=1, out=tmp_path / "run", overrides=[
        "model.width=0.125", "eval.auto_clusters=[2,6]", "stage.epochs=5", "train.progress=false"])
    assert found.assignments.clusters == 3
    page = RunDir(tmp_path / "run").report.read_text(encoding="utf-8")
    assert "k_choice.png" in page and "K chosen by silhouette" in page
    truth = np.array([int(p.rsplit("/", 1)[1][1]) for p in found.paths])
    assert max(np.mean(found.cluster[truth == c] == np.bincount(found.cluster[truth == c]).argmax()) for c in range(3)) == 1.0


def test_planted_near_duplicates_are_grouped_in_the_report_and_csv(tmp_path):
    folder = _colour_folder(tmp_path / "photos", [(200, 40, 40), (40, 40, 200)], per_colour=10, duplicates=2)
    clusterclr.cluster(folder, 2, epochs=1, out=tmp_path / "run",
                       overrides=["model.width=0.125", "stage=null", "train.progress=false"])
    run = RunDir(tmp_path / "run")
    rows = list(csv.DictReader(io.StringIO(run.near_duplicates_csv.read_text(encoding="utf-8"))))
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], set()).add(row["source"].rsplit("/", 1)[1])
    for i in range(2):
        assert any({f"c0_{i:02d}.png", f"copy_{i}.png"} <= members for members in groups.values())
    assert "Near-duplicates" in run.report.read_text(encoding="utf-8") and run.atypical_csv.is_file()
