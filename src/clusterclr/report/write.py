"""Put a report on disk: ``report.html`` (standalone) and its figures as PNGs in ``report/``."""

from __future__ import annotations

from pathlib import Path

from clusterclr.io import atomic_write, write_text
from clusterclr.report.content import ReportContent
from clusterclr.report.gallery import gallery_grid, most_confident, thumbnail_png
from clusterclr.report.html import LookalikeGalleries, Plot, Thumbnail, render_page
from clusterclr.report.lookalikes import (
    ATYPICAL_SHOWN,
    GROUP_IMAGES_SHOWN,
    GROUPS_SHOWN,
    find_lookalikes,
    write_lookalike_csvs,
)
from clusterclr.report.plots import (
    cluster_sizes,
    confusion_matrix,
    k_curve,
    matched_table,
    method_diagnostics,
    scatter_map,
    training_curves,
)
from clusterclr.report.projection import embedding_map
from clusterclr.rundir import RunDir


def _plots(content: ReportContent) -> list[Plot]:
    assignments = content.assignments
    plots = []
    curves = training_curves(content.log)
    if curves is not None:
        plots.append(Plot("training_curves.png", "training losses by step; online kNN and clustering scores by epoch", curves))
    diagnostics = method_diagnostics(content.log)
    if diagnostics is not None:
        plots.append(Plot(
            "method_diagnostics.png",
            "the method's own diagnostics by epoch: label precision of its positives, pseudo-label NMI, empty clusters",
            diagnostics,
        ))
    mapped = embedding_map(content.features.numpy(), content.seed)
    if mapped is not None:
        shown = f"{len(mapped.rows)} of {len(content.features)} images" if len(mapped.rows) < len(content.features) else "all images"
        cluster_names = [f"cluster {k}" for k in range(assignments.clusters)]
        plots.append(Plot(
            "map_clusters.png",
            f"{mapped.how} map of the backbone features ({shown}), coloured by cluster",
            scatter_map(mapped.xy, assignments.cluster[mapped.rows], cluster_names, f"{mapped.how}: clusters"),
        ))
        if content.labels is not None:
            plots.append(Plot(
                "map_classes.png",
                "the same map coloured by class",
                scatter_map(mapped.xy, content.labels[mapped.rows], _class_names(content), f"{mapped.how}: classes"),
            ))
    if content.labels is not None:
        table = matched_table(content.labels, assignments.cluster, len(_class_names(content)), assignments.clusters)
        plots.append(Plot(
            "confusion_matrix.png",
            "images per class and cluster; clusters in the order of the classes they are matched to (Hungarian), unmatched last",
            confusion_matrix(table, _class_names(content)),
        ))
    plots.append(Plot("cluster_sizes.png", f"images per cluster (assigned by {assignments.by})", cluster_sizes(assignments.sizes())))
    if content.choice is not None:
        choice = content.choice
        plots.append(Plot("k_choice.png", f"how K was chosen: {choice.criterion} of each K tried, K = {choice.chosen} marked",
                          k_curve(choice.scores, choice.chosen, choice.criterion)))
    return plots


def _class_names(content: ReportContent) -> list[str]:
    if content.class_names is not None:
        return list(content.class_names)
    return [str(c) for c in range(int(content.labels.max()) + 1)]


def write_report(run_dir: RunDir, content: ReportContent) -> Path:
    """Write the run's ``report.html`` and the PNGs beside it; returns the page's path."""
    plots = _plots(content)
    members = most_confident(content.assignments)
    galleries = [[_thumbnail(content, row) for row in rows] for rows in members]
    lookalikes = _lookalikes(run_dir, content)
    if len(content.images):
        plots.append(Plot("gallery.png", "the galleries below in one picture: a row per cluster", gallery_grid(content.images, members)))
    for plot in plots:
        atomic_write(run_dir.figures / plot.file, lambda f, png=plot.png: f.write(png))
    # The gallery sheet is for looking at outside the browser; the page shows the same images with captions.
    on_page = [plot for plot in plots if plot.file != "gallery.png"]
    return write_text(run_dir.report, render_page(content, on_page, galleries, lookalikes))


def _thumbnail(content: ReportContent, row: int) -> Thumbnail:
    return Thumbnail(thumbnail_png(content.images[int(row)]), int(row))


def _lookalikes(run_dir: RunDir, content: ReportContent) -> LookalikeGalleries | None:
    """Near-duplicate and atypical galleries of the shown images (and their CSVs in the run directory)."""
    found = find_lookalikes(content.features)
    if found is None:
        return None
    write_lookalike_csvs(run_dir, found, content.sources)
    groups = [([_thumbnail(content, row) for row in g.images[:GROUP_IMAGES_SHOWN]], len(g.images), g.similarity)
              for g in found.duplicates[:GROUPS_SHOWN]]
    atypical = [(_thumbnail(content, row), score) for row, score in found.atypical[:ATYPICAL_SHOWN]]
    return LookalikeGalleries(groups, len(found.duplicates), atypical)
