"""Any file name the file system holds goes through ``cluster``, ``assign``, ``--copy-to`` and the report intact.

A property test over folders of drawn names (arbitrary bytes: not UTF-8,
line breaks, tabs, quotes, commas, markup, a leading ``-``, names at the
length limit, nested folders), each clustered from a tiny run trained once
(``--init RUN --epochs 0``), so an example costs no training.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, reject, settings
from hypothesis import strategies as st
from PIL import Image

import clusterclr
from clusterclr.commands.copies import NAME_MAX
from clusterclr.pathtext import path_from_text, path_text

TINY = ["model.width=0.125", "data.image_size=8", "method.projection_hidden_dim=16", "method.projection_dim=8",
        "train.progress=false", "train.num_threads=1"]
SUFFIX = b".png"
# Pieces people's folders hold, mixed with arbitrary bytes: every byte but "/" and NUL is allowed in a name.
PIECES = [b"\xff", b"\xe9", b"caf\xc3\xa9", b"\n", b"\r\n", b"\t", b'"', b"'", b",", b"<script>", b"-", b"\\", b"\\x41",
          b"\\u00e9", b"__", b" ", b"$x$", b"\xe2\x80\xa8", b"A", b"a"]
name_byte = st.integers(1, 255).filter(lambda byte: byte != ord("/"))
piece = st.one_of(st.sampled_from(PIECES), st.lists(name_byte, min_size=1, max_size=6).map(bytes))


def _name(pieces: list[bytes], fill_to_limit: bool, suffix: bytes = b"") -> bytes:
    name = b"".join(pieces)
    if name.startswith(b"."):  # hidden files are never images; the name is drawn to be one
        name = b"_" + name
    room = NAME_MAX - len(suffix)
    return (name.ljust(room, b"n") if fill_to_limit else name)[:room] + suffix


file_names = st.builds(_name, st.lists(piece, min_size=1, max_size=4), st.booleans(), st.just(SUFFIX))
folder_names = st.builds(_name, st.lists(piece, min_size=1, max_size=3), st.booleans())
# Flat: names in the folder. Nested: each file under one or two drawn folders (the class tree layout).
layouts = st.one_of(
    st.lists(file_names.map(lambda name: (name,)), min_size=2, max_size=5, unique=True),
    st.lists(st.tuples(folder_names, file_names) | st.tuples(folder_names, folder_names, file_names),
             min_size=2, max_size=5, unique=True),
)


# --- a path as text and back ------------------------------------------------------------------------

# Characters the escaping turns on, mixed into arbitrary text (lone surrogates included).
TRICKY = ["\\", "x", "X", "u", "0", "5", "c", "F", "\n", "\r", "\t", "\x0b", "\x7f", "\x85", "\u2028", "\udcff",
          "\udc80", "\udc00", "\ud800", "é"]
any_text = st.text(st.one_of(st.characters(exclude_categories=()), st.sampled_from(TRICKY)))


@settings(max_examples=300, derandomize=True, deadline=None)
@given(path=any_text)
def test_path_text_is_one_line_of_utf8_that_reads_back_exactly(path):
    text = path_text(path)
    text.encode("utf-8")  # strict: no lone surrogates left
    assert len(text.splitlines()) <= 1 and "\t" not in text
    assert path_from_text(text) == path


@settings(max_examples=300, derandomize=True, deadline=None)
@given(name=st.binary())
def test_any_bytes_read_back_as_the_same_bytes(name):
    assert os.fsencode(path_from_text(path_text(os.fsdecode(name)))) == name


@pytest.mark.parametrize(
    "path, text",
    [
        ("photos/IMG 0042 (1).jpg", "photos/IMG 0042 (1).jpg"),
        ('ümlaut, "quoted" <b>.png', 'ümlaut, "quoted" <b>.png'),
        ("C:\\photos\\xmas.jpg", "C:\\photos\\xmas.jpg"),  # a backslash stays unless it reads as an escape
        (os.fsdecode(b"caf\xe9\xff.png"), "caf\\xe9\\xff.png"),  # bytes that are not UTF-8
        ("new\nline\ttab.png", "new\\x0aline\\x09tab.png"),
        ("a\\x41.png", "a\\x5cx41.png"),  # a literal backslash-x-hex
        ("line\u2028break.png", "line\\u2028break.png"),
    ],
)
def test_names_are_written_as_documented(path, text):
    assert path_text(path) == text and path_from_text(text) == path


# --- every command, on folders of drawn names -------------------------------------------------------


@pytest.fixture(scope="module")
def init_run(tmp_path_factory):
    """A tiny run over six 8 px images, trained for one epoch: the backbone every example clusters with."""
    base = tmp_path_factory.mktemp("init")
    folder = base / "images"
    folder.mkdir()
    for i, pixels in enumerate(np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)):
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    threads = torch.get_num_threads()
    try:
        yield clusterclr.cluster(folder, clusters=2, epochs=1, out=base / "run", overrides=TINY).run.directory.path
    finally:
        torch.set_num_threads(threads)


def _write_folder(root: bytes, layout: list[tuple[bytes, ...]]) -> dict[bytes, bytes] | None:
    """Write a tiny PNG at each drawn path below ``root``; {path: its bytes}, or None if the file system refuses a name."""
    contents = {}
    rng = np.random.default_rng(len(layout))
    for parts in layout:
        path = os.path.join(root, *parts)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(buffer, "PNG")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "xb") as f:
                f.write(buffer.getvalue())
        except OSError:  # a name drawn twice as file and folder, or refused by the file system (not UTF-8 on APFS)
            return None
        contents[path] = buffer.getvalue()
    return contents


def _digests(files) -> list[str]:
    return sorted(hashlib.sha256(Path(f).read_bytes() if not isinstance(f, bytes) else f).hexdigest() for f in files)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture,
          HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(layout=layouts)
@example(layout=[(b"caf\xe9\xff.png",), (b"new\nline.png",), (b"tab\t,\"quote\".png",), (b"<script>alert(1)<\\script>.png",),
                 (b"-rf.png",)])
@example(layout=[(b"A", b"b", b"c.png"), (b"A", b"b__c.png"), (b"x", b"Q.png"), (b"x", b"q.png"), (b"x", b"\\x41.PNG")])
# ^ copy names that collide: A/b/c.png and A/b__c.png, and two that differ only in case
@example(layout=[(b"d" * 250, b"e" * 250, b"f" * 251 + SUFFIX), (b"d" * 250, b"g.png")])  # copy names too long;
# ^ one class folder of two images: too few to hold any out for scoring
def test_any_file_name_is_clustered_assigned_copied_and_reported_intact(layout, init_run, tmp_path_factory):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as work:
        root = os.fsencode(os.path.join(work, "images"))
        contents = _write_folder(root, layout)
        if contents is None:
            reject()
        expected = sorted(map(os.fsdecode, contents))
        folder, copies = os.fsdecode(root), Path(work) / "by cluster"

        found = clusterclr.cluster(folder, clusters=2, init=init_run, epochs=0, out=Path(work) / "run",
                                   copy_to=copies, overrides=TINY)
        assert sorted(found.paths) == expected and not found.skipped

        # clusters.csv: every image once, and the exact path back from each field.
        run_dir = found.run.directory
        with open(run_dir.clusters_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        assert [path_from_text(row["path"]) for row in rows] == list(found.paths)
        assert sorted(os.fsencode(path_from_text(row["path"])) for row in rows) == sorted(contents)
        assert (run_dir.clusters_csv.read_text(encoding="utf-8").count("\n")) == len(rows) + 1  # a row a line

        # assign: the same rows.
        assigned = clusterclr.load(run_dir.path).assign(folder)
        assert sorted(assigned.paths) == expected
        assert sorted(csv.reader(io.StringIO(assigned.csv()))) == sorted(csv.reader(io.StringIO(found.csv())))

        # --copy-to: every file once, in its cluster's folder, originals untouched and nothing added beside them.
        copied = [p for p in copies.rglob("*") if p.is_file()]
        assert _digests(copied) == _digests(contents.values())
        assert {p.parent.name for p in copied} <= {"cluster_0", "cluster_1"}
        assert all(Path(os.fsdecode(path)).read_bytes() == data for path, data in contents.items())
        assert sorted(os.fsencode(p) for p in Path(folder).rglob("*") if p.is_file()) == sorted(contents)

        # The report shows each name as text (valid UTF-8, escaped markup).
        page = run_dir.report.read_text(encoding="utf-8")
        assert "<script>" not in page
        assert all(html.escape(path_text(path), quote=True) in page for path in found.paths)
