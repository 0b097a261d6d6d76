"""The report: assignments and their confidence, gallery order, the matched confusion table, escaping, the train hook."""

import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

import clusterclr
from clusterclr.build import load_parts
from clusterclr.cli import main
from clusterclr.clustering.assignments import ClusterAssignments, assign_to_clusters
from clusterclr.clustering.metrics import cluster_accuracy
from clusterclr.configure import build_config
from clusterclr.report.content import ReportContent, run_report_content
from clusterclr.report.gallery import most_confident
from clusterclr.report.plots import matched_table, method_diagnostics
from clusterclr.report.write import write_report
from clusterclr.rundir import RunDir

# File names cannot hold "/", so no closing tags; an opening one is all an attack needs.
HOSTILE = ["<script>alert(1).png", "a\"b'c&d.png", "x<img src=x onerror=alert(2)>.png"]


def test_centroid_assignments_match_a_float64_reference():
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(200, 16)).astype(np.float32))
    centroids = rng.normal(size=(5, 16)).astype(np.float32)
    result = assign_to_clusters(features, None, centroids)
    x = features.double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = centroids.astype(np.float64)
    nearest = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    cosine = (x * (c / np.linalg.norm(c, axis=1, keepdims=True))[nearest]).sum(1)
    assert result.by == "k-means" and result.clusters == 5
    np.testing.assert_array_equal(result.cluster, nearest)
    np.testing.assert_allclose(result.confidence, cosine, atol=1e-5)


def test_head_assignments_are_the_most_probable_cluster():
    probabilities = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    result = assign_to_clusters(torch.zeros(50, 8), probabilities, None)
    assert result.by == "cluster head" and result.clusters == 4
    np.testing.assert_array_equal(result.cluster, probabilities.argmax(1).numpy())
    np.testing.assert_allclose(result.confidence, probabilities.max(1).values.numpy())
    assert result.sizes().sum() == 50


def test_gallery_takes_each_clusters_most_confident_images_in_order():
    rng = np.random.default_rng(2)
    clusters = rng.integers(0, 6, size=300)
    clusters[clusters == 5] = 4  # cluster 5 is empty
    confidence = rng.random(300).astype(np.float32)
    chosen = most_confident(ClusterAssignments(clusters, confidence, "k-means", 6), per_cluster=7)
    assert len(chosen) == 6 and len(chosen[5]) == 0
    for k, rows in enumerate(chosen[:5]):
        members = np.flatnonzero(clusters == k)
        expected = members[np.argsort(-confidence[members], kind="stable")][:7]
        np.testing.assert_array_equal(rows, expected)


@pytest.mark.parametrize("classes, clusters", [(4, 4), (3, 6), (6, 3)])
def test_matched_table_puts_the_hungarian_matching_on_its_diagonal(classes, clusters):
    rng = np.random.default_rng(classes * 10 + clusters)
    labels = rng.integers(0, classes, size=400)
    predicted = np.where(rng.random(400) < 0.6, labels % clusters, rng.integers(0, clusters, size=400))
    table = matched_table(labels, predicted, classes, clusters)
    assert sorted(table.cluster_order.tolist()) == list(range(clusters))
    assert table.counts.sum() == 400
    if clusters >= classes:  # every class has its matched cluster, on the diagonal
        assert table.matched == int(np.trace(table.counts[:, :classes]))
    assert table.matched / 400 == pytest.approx(cluster_accuracy(labels, predicted))


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.image_sources, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.image_sources.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def _hostile_content() -> ReportContent:
    rng = np.random.default_rng(3)
    n = 9
    result = assign_to_clusters(torch.zeros(n, 2), torch.softmax(torch.from_numpy(rng.normal(size=(n, 3))).float(), 1), None)
    return ReportContent(
        title='run <b>"bold"</b> & co',
        images_described="nine images",
        images=torch.from_numpy(rng.integers(0, 256, size=(n, 3, 8, 8), dtype=np.uint8)),
        features=torch.from_numpy(rng.normal(size=(n, 6)).astype(np.float32)),
        assignments=result,
        labels=np.arange(n) % 2,
        class_names=["<script>alert('class')</script>", "cats & \"dogs\" $\\frac{$"],  # bad maths for matplotlib
        sources=[f"/data/{HOSTILE[i % 3]}" for i in range(n)],
        metrics={"<i>metric</i>": 0.5, "method": "<script>x</script>"},
        settings={"data root": "/data/<script>"},
    )


def test_report_escapes_file_class_and_config_names(tmp_path):
    content = _hostile_content()
    page = write_report(RunDir(tmp_path), content).read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(page)
    # Only the page's own markup: nothing from a name became a tag.
    assert set(parser.tags) <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "table", "tr",
                                "th", "td", "div", "img", "figure", "figcaption"}
    assert "script" not in parser.tags and "b" not in parser.tags and "i" not in parser.tags
    assert "<script>" not in page and "onerror=alert(2)>" not in page
    # Every image is embedded, so the page opens standalone.
    assert parser.image_sources and all(src.startswith("data:image/png;base64,") for src in parser.image_sources)
    # The names are shown, as text.
    shown = "".join(parser.text)
    for name in HOSTILE:
        assert name in shown
    assert "cats & \"dogs\" $\\frac{$" in shown and 'run <b>"bold"</b> & co' in shown
    for png in RunDir(tmp_path).figures.iterdir():
        with Image.open(png) as image:
            image.verify()
    assert {p.name for p in RunDir(tmp_path).figures.iterdir()} >= {"map_clusters.png", "map_classes.png", "confusion_matrix.png",
                                                               "cluster_sizes.png", "gallery.png"}


def test_method_diagnostics_are_drawn_from_method_log_lines_only():
    step = {"kind": "step", "step": 1, "epoch": 0, "loss": 5.0, "positive_precision": 0.2}
    assert method_diagnostics([step]) is None  # a method without diagnostics gets no figure
    refreshes = [
        {"kind": "method", "step": 10 * e, "epoch": e, "pair_precision": 0.3 + e / 100, "pairs": 500, "clusters_empty": e % 2}
        for e in range(0, 20, 5)
    ]
    png = method_diagnostics([step, *refreshes])
    assert png is not None and png.startswith(b"\x89PNG")


TINY = [
    "model.width=0.125", "optim.batch_size=128", "train.progress=false", "train.eval_every=0",
    "train.log_every=1", "method.projection_hidden_dim=64", "method.projection_dim=32",
]


def test_training_writes_the_report_of_the_clusters_its_metrics_score(tmp_path):
    run = tmp_path / "run"
    metrics = clusterclr.train(build_config(flags={"train.epochs": 1}, overrides=TINY), out=run).metrics
    page = RunDir(run).report.read_text(encoding="utf-8")
    for figure in ("training_curves", "map_clusters", "map_classes", "confusion_matrix", "cluster_sizes"):
        assert f"{figure}.png" in page and (RunDir(run).figures / f"{figure}.png").is_file()
    assert np.load(RunDir(run).centroids).shape == (10, 64)  # 10 digit classes, width-0.125 ResNet-18 features
    # The report's clustering is the one metrics.json scores (same k-means, same split).
    parts, epoch = load_parts(RunDir(run))
    content = run_report_content(parts, RunDir(run), epoch)
    assert cluster_accuracy(content.labels, content.assignments.cluster) == pytest.approx(metrics["kmeans_acc"])
    assert json.loads((run / "metrics.json").read_text())["kmeans_acc"] == metrics["kmeans_acc"]


def test_report_can_be_turned_off_and_written_later(tmp_path, capsys):
    run = tmp_path / "run"
    clusterclr.train(build_config(flags={"train.epochs": 0}, overrides=TINY + ["train.report=false"]), out=run)
    assert (RunDir(run).checkpoint).is_file() and not RunDir(run).report.exists() and not RunDir(run).centroids.exists()
    assert main(["report", str(run)]) == 0
    assert RunDir(run).report.is_file() and RunDir(run).centroids.is_file()
    assert f"report: {RunDir(run).report}" in capsys.readouterr().out


def test_report_of_a_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("clusterclr: error:") == 1 and "run directory not found" in err
