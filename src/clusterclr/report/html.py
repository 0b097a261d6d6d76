"""The report page: one self-contained HTML file, images embedded as data URIs.

Every string that comes from outside this module (file and class names,
config values, metric names) passes through ``text`` before it reaches the
page, so a file called ``<script>…`` is shown, never run; file paths are
first made text by ``path_text`` (so a name with bytes that are not UTF-8
shows them as ``\\xHH``, as every other output writes it).
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clusterclr.pathtext import path_text
from clusterclr.report.content import ReportContent
from clusterclr.stage.duplicates import DUPLICATE_THRESHOLD

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { padding: 0.2em 0.8em; border-bottom: 1px solid #eee; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.figure { max-width: 100%; } .figure img { max-width: 100%; } .figure p { max-width: 560px; }
.note { color: #666; font-size: 0.9em; }
.cluster { margin-bottom: 1.2em; } .cluster h3 { margin: 0.4em 0; font-size: 1em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 6px; }
.thumbs figure { margin: 0; width: 88px; font-size: 0.7em; text-align: center; overflow-wrap: anywhere; }
.thumbs img { width: 88px; height: 88px; object-fit: contain; image-rendering: pixelated; background: #f4f4f4; }
"""


NUMBER = ' class="number"'


@dataclass(frozen=True)
class Plot:
    file: str  # the PNG's file name beside the report
    caption: str
    png: bytes


@dataclass(frozen=True)
class Thumbnail:
    png: bytes
    row: int  # the image's row in the report's images


@dataclass(frozen=True)
class LookalikeGalleries:
    groups: list[tuple[list[Thumbnail], int, float]]  # (shown members, group size, closest pair's similarity), first groups
    total_groups: int
    atypical: list[tuple[Thumbnail, float]]  # (image, atypicality), most atypical first


def text(value: Any) -> str:
    """Any value as HTML text, escaped (quotes too, so it is safe inside attributes)."""
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _format(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _table(rows: Sequence[tuple[Any, Any]]) -> str:
    cells = "".join(
        f"<tr><th>{text(key)}</th><td{NUMBER if isinstance(value, (int, float)) else ''}>{text(_format(value))}</td></tr>"
        for key, value in rows
    )
    return f"<table>{cells}</table>"


def _plots(plots: Sequence[Plot]) -> str:
    return '<div class="figures">' + "".join(
        f'<div class="figure"><img src="{data_uri(p.png)}" alt="{text(p.caption)}">'
        f'<p class="note">{text(p.caption)} ({text(p.file)})</p></div>'
        for p in plots
    ) + "</div>"


def _caption(content: ReportContent, row: int) -> tuple[str, str]:
    """(short caption, full description for the tooltip) of one shown image."""
    source = content.sources[row] if content.sources is not None else None
    name = path_text(os.path.basename(source)) if source else f"#{row}"
    parts = [f"{content.assignments.confidence[row]:.2f}"]
    if content.labels is not None:
        label = int(content.labels[row])
        parts.append(content.class_names[label] if content.class_names else str(label))
    return f"{name} · {' · '.join(parts)}", path_text(source) if source else name


def _cluster_heading(content: ReportContent, cluster: int) -> str:
    size = int(content.assignments.sizes()[cluster])
    total = len(content.assignments.cluster)
    heading = f"cluster {cluster}: {size} image{'s' if size != 1 else ''} ({size / max(1, total):.1%})"
    if content.labels is not None and size:
        members = content.labels[content.assignments.cluster == cluster]
        label = int(np.bincount(members).argmax())
        name = content.class_names[label] if content.class_names else str(label)
        heading += f", mostly {name} ({float(np.mean(members == label)):.0%})"
    return heading


def _figure(content: ReportContent, thumbnail: Thumbnail, caption: str | None = None) -> str:
    short, tooltip = _caption(content, thumbnail.row)
    return (
        f'<figure><img src="{data_uri(thumbnail.png)}" alt="{text(tooltip)}" title="{text(tooltip)}">'
        f"<figcaption>{text(caption or short)}</figcaption></figure>"
    )


def _gallery(heading: str, figures: Sequence[str]) -> str:
    body = "".join(figures) or '<p class="note">empty</p>'
    return f'<div class="cluster"><h3>{text(heading)}</h3><div class="thumbs">{body}</div></div>'


def _galleries(content: ReportContent, galleries: Sequence[Sequence[Thumbnail]]) -> str:
    return "".join(
        _gallery(_cluster_heading(content, cluster), [_figure(content, t) for t in thumbnails])
        for cluster, thumbnails in enumerate(galleries)
    )


def _lookalikes(content: ReportContent, found: LookalikeGalleries | None) -> list[str]:
    if found is None:
        return []
    name = lambda row: _caption(content, row)[0].split(" · ")[0]  # noqa: E731
    groups = [
        _gallery(f"group {rank}: {size} images, closest pair {similarity:.3f}", [_figure(content, t, name(t.row)) for t in shown])
        for rank, (shown, size, similarity) in enumerate(found.groups, start=1)
    ]
    atypical = [_figure(content, t, f"{name(t.row)} · {score:.2f}") for t, score in found.atypical]
    return [
        "<h2>Near-duplicates</h2>",
        f'<p class="note">{found.total_groups} group{"s" if found.total_groups != 1 else ""} of images whose features '
        f"are nearly the same (cosine similarity of centred features at least {DUPLICATE_THRESHOLD}); the first "
        f"{len(found.groups)} below, every group in near_duplicates.csv.</p>",
        "".join(groups) or '<p class="note">none found</p>',
        "<h2>Most atypical images</h2>",
        '<p class="note">Farthest from even their nearest images (atypicality: 1 − mean similarity to the 10 nearest); '
        "every image ranked in atypical.csv.</p>",
        _gallery("most atypical first", atypical),
    ]


def render_page(
    content: ReportContent, plots: Sequence[Plot], galleries: Sequence[Sequence[Thumbnail]], lookalikes: LookalikeGalleries | None = None
) -> str:
    """The whole page as a string."""
    metrics = [(key, value) for key, value in content.metrics.items() if not isinstance(value, dict)]
    confidence = "the cluster head's probability" if content.assignments.by == "cluster head" else (
        "cosine similarity to the k-means centroid"
    )
    sections = [
        f"<h1>{text(content.title)}</h1>",
        f'<p class="note">{text(content.images_described)}; {content.assignments.clusters} clusters '
        f"assigned by {text(content.assignments.by)}</p>",
        _table(list(content.settings.items())),
        "<h2>Metrics</h2>",
        _table(metrics) if metrics else '<p class="note">no metrics.json yet</p>',
        "<h2>Figures</h2>",
        _plots(plots),
        "<h2>Clusters</h2>",
        f'<p class="note">Up to {max((len(g) for g in galleries), default=0)} images per cluster, most confident first; '
        f"under each: file, confidence ({text(confidence)})"
        + (", class" if content.labels is not None else "")
        + ". Hover for the full path.</p>",
        _galleries(content, galleries),
        *_lookalikes(content, lookalikes),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{text(content.title)} · clusterclr report</title><style>{STYLE}</style></head>"
        f"<body>{''.join(sections)}</body></html>\n"
    )
