"""Bad data is a clear error naming the file, or, with data.skip_bad, skipped, counted and listed."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clusterclr
from clusterclr.configure import build_config
from clusterclr.data.registry import load_raw
from clusterclr.errors import UserError
from clusterclr.rundir import RunDir

RNG = np.random.default_rng(0)


def png_bytes(side: int = 12) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def good_folder(root: Path, count: int = 6) -> Path:
    root.mkdir()
    for i in range(count):
        (root / f"good_{i:02d}.png").write_bytes(png_bytes())
    return root


def make_unreadable(path: Path, monkeypatch) -> None:
    """A file whose open() fails with EACCES, also for root (whom chmod does not stop)."""
    path.write_bytes(png_bytes())
    if os.geteuid() != 0:
        path.chmod(0)
        return
    real_open = Path.open

    def refusing_open(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)


FAULTS = {
    "corrupt": (lambda p, mp: p.write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes()), "not an image Pillow can identify"),
    "truncated": (lambda p, mp: p.write_bytes(png_bytes(64)[:300]), "truncated"),
    "zero-byte": (lambda p, mp: p.write_bytes(b""), r"empty file \(0 bytes\)"),
    "unreadable": (make_unreadable, "Permission denied"),
    # Larger than Pillow's decompression-bomb limit (lowered here so the file stays small).
    "oversized": (lambda p, mp: (mp.setattr(Image, "MAX_IMAGE_PIXELS", 200), p.write_bytes(png_bytes(24))), "DecompressionBombError"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_bad_image_file_is_an_error_naming_it_or_is_skipped(fault, tmp_path, monkeypatch):
    root = good_folder(tmp_path / "images")
    bad = root / "bad.png"
    make, reason = FAULTS[fault]
    make(bad, monkeypatch)
    with pytest.raises(UserError, match=rf"folder: cannot use {bad}: .*{reason}.*--set data.skip_bad=true"):
        load_raw("folder", root, 12)
    splits = load_raw("folder", root, 12, skip_bad=True)
    assert len(splits.train) == 6 and bad.name not in " ".join(splits.train.sources)
    assert [(b.path, bool(b.reason)) for b in splits.bad_files] == [(str(bad), True)]


def test_odd_image_modes_are_converted_not_refused(tmp_path):
    root = tmp_path / "modes"
    root.mkdir()
    Image.new("1", (8, 8), 1).save(root / "bilevel.png")
    Image.new("LA", (8, 8), (200, 10)).save(root / "gray_alpha.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(root / "cmyk.tif")
    Image.new("I;16", (8, 8), 65535).save(root / "sixteen_bit.png")
    images = load_raw("folder", root, 8).train
    assert images.images.shape == (4, 3, 8, 8)
    by_name = dict(zip((Path(s).name for s in images.sources), images.images))
    assert by_name["bilevel.png"].unique().tolist() == [255]
    assert by_name["gray_alpha.png"].unique().tolist() == [200]
    assert by_name["cmyk.tif"][:, 0, 0].tolist() == [255, 0, 0]
    assert by_name["sixteen_bit.png"].unique().tolist() == [255]


def test_skipped_files_are_counted_and_listed_in_the_run_directory(tmp_path, monkeypatch):
    root = good_folder(tmp_path / "images", count=20)
    (root / "empty.png").write_bytes(b"")
    (root / "junk.jpg").write_bytes(b"not a jpeg")
    config = build_config(
        flags={"data.dataset": "folder", "data.root": str(root), "train.epochs": 1},
        overrides=[
            "data.skip_bad=true", "data.image_size=8", "model.width=0.125", "optim.batch_size=8", "clusters=2",
            "train.progress=false", "train.report=false", "train.num_threads=1", "method.projection_hidden_dim=16", "method.projection_dim=8",
        ],
    )
    threads = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match=r"folder: skipped 2 bad file\(s\) \(data.skip_bad=true\), e.g. .*empty.png"):
            metrics = clusterclr.train(config, out=tmp_path / "run").metrics
    finally:
        torch.set_num_threads(threads)
    assert metrics["num_train"] == 20
    listed = RunDir(tmp_path / "run").skipped_files.read_text().splitlines()
    assert [line.split("\t")[0] for line in listed] == [str(root / "empty.png"), str(root / "junk.jpg")]
    assert all(line.split("\t")[1] for line in listed)


# --- containers whose label file disagrees with their images: an error whatever skip_bad says -------


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist_with_short_labels(root: Path) -> Path:
    root.mkdir()
    for prefix, n in (("train", 5), ("t10k", 3)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(_idx(np.zeros((n, 28, 28)), 2051))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(n - (prefix == "t10k")), 2049)))
    return root / "t10k-labels-idx1-ubyte.gz"


def write_cifar10_with_short_labels(root: Path) -> Path:
    root.mkdir()
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 1, 2] if name != "data_batch_3" else [0, 1]
        content = {b"data": np.zeros((3, 3072), np.uint8), b"labels": labels}
        (root / name).write_bytes(pickle.dumps(content, protocol=2))
    return root / "data_batch_3"


def write_npz_with_short_labels(root: Path) -> Path:
    path = root.with_suffix(".npz")
    np.savez(path, x=np.zeros((4, 8, 8), np.uint8), y=np.arange(3))
    return path


def write_stl10_with_short_labels(root: Path) -> Path:
    root.mkdir()
    (root / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    for split in ("train", "test"):
        np.zeros((2, 3, 96, 96), np.uint8).tofile(root / f"{split}_X.bin")
        np.ones(2 - (split == "test"), np.uint8).tofile(root / f"{split}_y.bin")
    return root / "test_y.bin"


@pytest.mark.parametrize(
    "dataset, write, message",
    [
        ("mnist", write_mnist_with_short_labels, r"{bad} holds 2 labels but .*t10k-images-idx3-ubyte holds 3 images"),
        ("cifar10", write_cifar10_with_short_labels, r"{bad}: b'labels' must hold 3 integer labels"),
        ("npz", write_npz_with_short_labels, r"{bad}: 'y' must have shape \(4,\) to match its images, got \(3,\)"),
        ("stl10", write_stl10_with_short_labels, r"{bad} has 1 labels for 2 images in test_X.bin"),
    ],
)
def test_a_label_file_of_the_wrong_length_is_an_error_naming_it(dataset, write, message, tmp_path):
    bad = write(tmp_path / dataset)
    root = bad if dataset == "npz" else bad.parent
    for skip_bad in (False, True):
        with pytest.raises(UserError, match=message.format(bad=bad)):
            load_raw(dataset, root, skip_bad=skip_bad)


def test_npz_images_of_an_unexpected_mode_or_size_are_errors_naming_the_file(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((4, 8, 8, 2), np.uint8))
    with pytest.raises(UserError, match=rf"npz: {path}: 'x' must be N×H×W or N×H×W×C with C in 1, 3, 4"):
        load_raw("npz", path)
    np.savez(path, x=np.zeros((4, 8, 8), np.uint8), x_test=np.zeros((2, 9, 9), np.uint8))
    with pytest.raises(UserError, match=rf"npz: {path}: 'x_test' images are \(1, 9, 9\)"):
        load_raw("npz", path)


# --- the same bad files in every command that reads image files ----------------------------------

TINY_RUN = ["data.image_size=8", "model.width=0.125", "method.projection_hidden_dim=16", "method.projection_dim=8",
            "train.progress=false", "train.num_threads=1"]


def folder_with_three_bad_files(root: Path, monkeypatch) -> dict[Path, str]:
    """Six good images plus a decompression bomb, a zero-byte file and a truncated JPEG: {bad file: why}."""
    good_folder(root)
    jpeg = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(jpeg, "JPEG", quality=95)
    bad = {root / "bomb.png": "DecompressionBombError", root / "empty.png": "empty file", root / "cut.jpg": "truncated"}
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 32 × 32 px is then a bomb; 16 × 16 px is not
    (root / "bomb.png").write_bytes(png_bytes(32))
    (root / "empty.png").write_bytes(b"")
    (root / "cut.jpg").write_bytes(jpeg.getvalue()[:-100])
    return bad


def _listed(text: str) -> dict[str, str]:
    """{path: reason} of ``path<TAB>reason`` lines (skipped_files.txt, or the warning's indented lines)."""
    return dict(line.strip().split("\t") for line in text.splitlines() if "\t" in line)


def test_bad_files_are_named_or_skipped_and_listed_by_cluster_assign_and_embed(tmp_path, monkeypatch, capsys):
    from clusterclr.cli import main

    folder = tmp_path / "images"
    bad = folder_with_three_bad_files(folder, monkeypatch)
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        cluster = ["cluster", str(folder), "--clusters", "2", "--epochs", "1", "--out", str(run), "--set", *TINY_RUN]
        assert main(cluster) == 2
        err = capsys.readouterr().err
        assert f"cannot use {folder / 'bomb.png'}: DecompressionBombError" in err and "(and 2 more bad files)" in err
        assert "--set data.skip_bad=true" in err and not RunDir(run).holds_run()
        assert main([*cluster, "data.skip_bad=true"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert "skipped 3 unusable image file(s)" in capsys.readouterr().out
    listed = _listed(RunDir(run).skipped_files.read_text(encoding="utf-8"))
    assert sorted(listed) == sorted(map(str, bad)) and all(why in listed[str(p)] for p, why in bad.items())
    clustered = RunDir(run).clusters_csv.read_text(encoding="utf-8")
    assert clustered.count("good_") == 6 and not any(p.name in clustered for p in bad)

    # assign and embed skip as the run was trained, or as --skip-bad / --no-skip-bad say.
    for command in (["assign", str(run), str(folder)], ["embed", str(run), "--out", str(tmp_path / "e.npy")]):
        assert main([*command, "--no-skip-bad"]) == 2
        err = capsys.readouterr().err
        assert err.count("clusterclr: error:") == 1 and f"cannot use {folder / 'bomb.png'}: DecompressionBombError" in err
        assert "(and 2 more bad files); fix or remove it, or skip bad files with --skip-bad" in err
        for flags in ([], ["--skip-bad"]):
            assert main([*command, *flags]) == 0
            err = capsys.readouterr().err
            assert "skipped 3 unusable image file(s)" in err and _listed(err) == listed
    assert main(["assign", str(run), str(folder)]) == 0
    assert sorted(capsys.readouterr().out.splitlines()) == sorted(clustered.splitlines())
    assert (tmp_path / "e.csv").read_text(encoding="utf-8").count("good_") == 6
    found = clusterclr.load(run).assign([folder / "good_00.png", folder / "empty.png"], skip_bad=True)
    assert found.paths == (str(folder / "good_00.png"),) and [b.path for b in found.skipped] == [str(folder / "empty.png")]
