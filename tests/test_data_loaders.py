"""On-disk loaders: each test writes a tiny data set in the official format and
checks that the loader returns exactly what was written."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clusterclr.data import cifar, folder, mnist, npz, stl10
from clusterclr.data.registry import DATASETS, load_raw
from clusterclr.errors import UserError

SHARED_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-batches-py"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _pickle(path: Path, content: dict) -> None:
    with path.open("wb") as f:
        pickle.dump(content, f, protocol=2)


def _pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# --- CIFAR ---------------------------------------------------------------------------------------


def _write_cifar10(directory: Path, rows: list[int], test_rows: int, seed: int = 0) -> dict[str, tuple]:
    """Official layout; returns {file: (data N×3072, labels)}."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    _pickle(directory / "batches.meta", {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072})
    written = {}
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name, n in zip(files, rows + [test_rows]):
        data, labels = _pixels(rng, n, 3072), rng.integers(0, 10, size=n).tolist()
        _pickle(directory / name, {
            b"batch_label": name.encode(), b"labels": labels, b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        })
        written[name] = (data, labels)
    return written


def test_cifar10_reads_channel_planar_rows_of_any_count(tmp_path: Path) -> None:
    written = _write_cifar10(tmp_path / "cifar-10-batches-py", rows=[7, 5, 3, 4, 2], test_rows=6)
    # root may be the directory itself or its parent
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):
        splits = load_raw("cifar10", root)
        train, test = splits.train, splits.test
        assert splits.unlabeled is None
        assert train.images.shape == (21, 3, 32, 32) and test.images.shape == (6, 3, 32, 32)
        assert train.class_names == tuple(CIFAR10_NAMES) == test.class_names
        data = np.concatenate([written[f"data_batch_{i}"][0] for i in range(1, 6)])
        labels = sum((written[f"data_batch_{i}"][1] for i in range(1, 6)), [])
        assert train.labels.dtype == torch.int64 and train.labels.tolist() == labels
        assert test.labels.tolist() == written["test_batch"][1]
        # pixel (c, y, x) of image i is byte c*1024 + y*32 + x of row i
        for i, c, y, x in [(0, 0, 0, 1), (3, 1, 5, 30), (20, 2, 31, 0), (12, 2, 17, 9)]:
            assert int(train.images[i, c, y, x]) == data[i, c * 1024 + y * 32 + x]
        assert torch.equal(test.images.reshape(6, -1), torch.from_numpy(written["test_batch"][0]))


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    fine_names = [f"fine{i}".encode() for i in range(100)]
    coarse_names = [f"coarse{i}".encode() for i in range(20)]
    _pickle(directory / "meta", {b"fine_label_names": fine_names, b"coarse_label_names": coarse_names})
    written = {}
    for split, n in (("train", 9), ("test", 4)):
        data, fine = _pixels(rng, n, 3072), rng.integers(0, 100, size=n).tolist()
        coarse = [f % 20 for f in fine]
        _pickle(directory / split, {
            b"filenames": [b"x"] * n, b"batch_label": split.encode(),
            b"fine_labels": fine, b"coarse_labels": coarse, b"data": data,
        })
        written[split] = data, fine, coarse

    fine_splits = load_raw("cifar100", tmp_path)
    coarse_splits = load_raw("cifar100-20", directory)
    assert fine_splits.train.class_names == tuple(n.decode() for n in fine_names)
    assert coarse_splits.train.class_names == tuple(n.decode() for n in coarse_names)
    for split in ("train", "test"):
        data, fine, coarse = written[split]
        for splits, labels in ((fine_splits, fine), (coarse_splits, coarse)):
            ds = getattr(splits, split)
            assert ds.labels.tolist() == labels
            assert torch.equal(ds.images, torch.from_numpy(data).reshape(-1, 3, 32, 32))
            assert int(ds.images[1, 2, 3, 4]) == data[1, 2 * 1024 + 3 * 32 + 4]


def test_cifar_errors_name_the_problem(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    _write_cifar10(directory, rows=[2, 2, 2, 2, 2], test_rows=2)
    (directory / "data_batch_3").unlink()
    with pytest.raises(UserError, match=r"no data_batch_3 in .*cifar-10-batches-py"):
        load_raw("cifar10", tmp_path)

    _pickle(directory / "data_batch_3", {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8)})
    (directory / "test_batch").write_bytes((directory / "data_batch_1").read_bytes()[:200])
    with pytest.raises(UserError, match=r"cannot read .*test_batch"):
        cifar.load_cifar10(directory)

    _pickle(directory / "test_batch", {b"labels": [0, 1], b"data": np.zeros((2, 1000), np.uint8)})
    with pytest.raises(UserError, match=r"test_batch.*N×3072"):
        cifar.load_cifar10(directory)

    with pytest.raises(UserError, match=r"no meta in"):
        load_raw("cifar100", tmp_path)


@pytest.mark.skipif(
    not SHARED_CIFAR10.is_dir() and not os.environ.get("CI"),
    reason=f"shared CIFAR-10 subset not found at {SHARED_CIFAR10} (required under CI)",
)
def test_shared_cifar10_subset() -> None:
    splits = load_raw("cifar10", SHARED_CIFAR10)
    assert len(splits.train) == 5085 and len(splits.test) == 1017
    assert splits.train.images.shape[1:] == (3, 32, 32)
    assert splits.train.class_names == tuple(CIFAR10_NAMES) and splits.train.num_classes == 10
    counts = Counter(splits.train.labels.tolist())
    assert sorted(counts) == list(range(10))
    assert all(475 <= c <= 537 for c in counts.values()), counts


# --- STL-10 --------------------------------------------------------------------------------------


def test_stl10_column_major_images_and_one_based_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    directory = tmp_path / "stl10_binary"
    directory.mkdir()
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (directory / "class_names.txt").write_text("\n".join(names) + "\n")
    written = {}
    for split, n in (("train", 4), ("test", 3), ("unlabeled", 2)):
        images = _pixels(rng, n, 3, 96, 96)  # (c, y, x) as they should come back
        images.transpose(0, 1, 3, 2).tofile(directory / f"{split}_X.bin")  # each channel column-major
        written[split] = images
        if split != "unlabeled":
            labels = rng.integers(1, 11, size=n).astype(np.uint8)
            labels.tofile(directory / f"{split}_y.bin")
            written[f"{split}_y"] = labels

    splits = load_raw("stl10", tmp_path)
    for split in ("train", "test", "unlabeled"):
        ds = getattr(splits, split)
        assert torch.equal(ds.images, torch.from_numpy(written[split]))
    # byte offset of pixel (c, y, x) in the file is c*9216 + x*96 + y
    raw = np.fromfile(directory / "train_X.bin", dtype=np.uint8)
    assert int(splits.train.images[1, 2, 5, 70]) == raw[1 * 27648 + 2 * 9216 + 70 * 96 + 5]
    assert splits.train.labels.tolist() == (written["train_y"].astype(int) - 1).tolist()
    assert splits.test.labels.tolist() == (written["test_y"].astype(int) - 1).tolist()
    assert splits.train.class_names == tuple(names)
    assert splits.unlabeled.labels is None
    # Streamed: memory-mapped and read image by image, the same pixels; train + unlabeled joined for training.
    streamed = load_raw("stl10", tmp_path, stream=True, workers=0)
    for split in ("train", "test", "unlabeled"):
        assert torch.equal(getattr(streamed, split).images[:], torch.from_numpy(written[split]))
    from clusterclr.config import DataConfig
    from clusterclr.data.splits import load_splits

    train = load_splits(DataConfig(dataset="stl10", root=str(tmp_path), stream=True, workers=0)).train
    assert train.streamed and torch.equal(train.images[:], torch.from_numpy(np.concatenate([written["train"], written["unlabeled"]])))

    (directory / "unlabeled_X.bin").unlink()
    assert stl10.load(directory).unlabeled is None

    (directory / "test_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match=r"test_y.bin has 2 labels for 3 images"):
        stl10.load(directory)
    (directory / "test_X.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match=r"test_X.bin holds 100 bytes"):
        stl10.load(directory)
    (directory / "train_y.bin").unlink()
    with pytest.raises(UserError, match=r"no train_y.bin in .*stl10_binary"):
        stl10.load(tmp_path)


# --- MNIST ---------------------------------------------------------------------------------------


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">i{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def _write_mnist(directory: Path, gz: bool, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for prefix, n in (("train", 6), ("t10k", 4)):
        images, labels = _pixels(rng, n, 28, 28), rng.integers(0, 10, size=n).astype(np.uint8)
        files = ((f"{prefix}-images-idx3-ubyte", images, 2051), (f"{prefix}-labels-idx1-ubyte", labels, 2049))
        for name, array, magic in files:
            data = _idx(array, magic)
            if gz:
                (directory / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
        written[prefix] = images, labels
    return written


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path: Path, gz: bool) -> None:
    written = _write_mnist(tmp_path, gz)
    splits = load_raw("mnist", tmp_path)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds, (images, labels) = getattr(splits, split), written[prefix]
        assert ds.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.labels.tolist() == labels.tolist()
    assert int(splits.train.images[2, 0, 3, 20]) == written["train"][0][2, 3, 20]
    assert splits.train.class_names == tuple("0123456789")


def test_fashion_mnist_torchvision_layout(tmp_path: Path) -> None:
    written = _write_mnist(tmp_path / "FashionMNIST" / "raw", gz=True)
    splits = load_raw("fashion-mnist", tmp_path)
    assert splits.train.labels.tolist() == written["train"][1].tolist()
    assert splits.train.class_names[0] == "T-shirt/top" and splits.train.class_names[9] == "Ankle boot"
    assert len(splits.train.class_names) == 10
    _write_mnist(tmp_path / "raw", gz=False)
    assert len(mnist.load_mnist(tmp_path).test) == 4


def test_mnist_rejects_bad_idx(tmp_path: Path) -> None:
    _write_mnist(tmp_path, gz=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(_idx(np.zeros(4), 2049)[:-1])  # one label short
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte has 11 bytes, its header promises 12"):
        mnist.load_mnist(tmp_path)
    labels.write_bytes(_idx(np.zeros((4, 28, 28)), 2051))
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte is not the expected idx file.*2051, expected 2049"):
        mnist.load_mnist(tmp_path)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte has .* bytes.*truncated"):
        mnist.load_mnist(tmp_path)
    images.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros((6, 28, 28)), 2051))[:-10])
    with pytest.raises(UserError, match=r"cannot read .*train-images-idx3-ubyte.gz"):
        mnist.load_mnist(tmp_path)
    with pytest.raises(UserError, match=r"no train-images-idx3-ubyte\[.gz\] in .*empty"):
        mnist.load_mnist(tmp_path / "empty")


# --- folder --------------------------------------------------------------------------------------


def test_folder_class_tree_in_mixed_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rgb, gray, wide = _pixels(rng, 8, 8, 3), _pixels(rng, 8, 8), rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    index = rng.integers(0, 4, size=(8, 8), dtype=np.uint8)
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog" / "nested").mkdir(parents=True)
    (tmp_path / "empty").mkdir()
    Image.fromarray(gray).save(tmp_path / "cat" / "a_gray.png")  # L
    rgba = np.dstack([rgb, _pixels(rng, 8, 8)])
    Image.fromarray(rgba).save(tmp_path / "cat" / "b_rgba.PNG")
    p = Image.fromarray(index, mode="P")
    p.putpalette(palette.ravel().tolist())
    p.save(tmp_path / "dog" / "c_palette.png")
    Image.fromarray(wide).save(tmp_path / "dog" / "d_wide.png")  # I;16
    smooth = np.stack([*np.meshgrid(np.arange(8) * 30, np.arange(8) * 20), np.full((8, 8), 90)], -1).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "dog" / "nested" / "e.jpg", quality=95)
    (tmp_path / "dog" / "f_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "dog" / "notes.txt").write_text("ignored")

    with pytest.raises(UserError, match=r"cannot use .*f_corrupt.png: Truncated File Read; .*data.skip_bad=true"):
        load_raw("folder", tmp_path, image_size=8)
    splits = load_raw("folder", tmp_path, image_size=8, skip_bad=True)
    assert [Path(bad.path).name for bad in splits.bad_files] == ["f_corrupt.png"]
    ds = splits.train
    assert splits.test is None
    assert ds.class_names == ("cat", "dog")
    assert ds.images.shape == (5, 3, 8, 8) and ds.images.dtype == torch.uint8
    assert [Path(s).name for s in ds.sources] == ["a_gray.png", "b_rgba.PNG", "c_palette.png", "d_wide.png", "e.jpg"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1]
    gray_rgb = torch.from_numpy(gray).expand(3, 8, 8)
    assert torch.equal(ds.images[0], gray_rgb)
    assert torch.equal(ds.images[1], torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(ds.images[2], torch.from_numpy(palette[index]).permute(2, 0, 1))
    scaled = np.rint(wide.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert torch.equal(ds.images[3], torch.from_numpy(scaled).expand(3, 8, 8))
    jpeg_error = ds.images[4].int() - torch.from_numpy(smooth).permute(2, 0, 1).int()
    assert jpeg_error.abs().float().mean() < 8  # JPEG is lossy


def test_folder_flat_resizes_shorter_side_and_center_crops(tmp_path: Path) -> None:
    wide = np.zeros((4, 8, 3), np.uint8)  # 8 wide, 4 high: the center crop keeps columns 2..5
    wide[:, 2:6] = _pixels(np.random.default_rng(5), 4, 4, 3)
    Image.fromarray(wide).save(tmp_path / "a.png")
    tall = np.full((16, 8, 3), (200, 100, 50), np.uint8)
    Image.fromarray(tall).convert("CMYK").save(tmp_path / "b.tif")
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "c.tiff")  # mode F

    ds = folder.load(tmp_path, image_size=4).train
    assert ds.labels is None and ds.class_names is None and len(ds) == 3
    assert torch.equal(ds.images[0], torch.from_numpy(wide[:, 2:6]).permute(2, 0, 1))
    assert ds.images[1].reshape(3, -1).float().mean(1).round().tolist() == [200, 100, 50]
    assert ds.images[2].unique().tolist() == [128]
    assert folder.load(tmp_path, image_size=None).train.images.shape == (3, 3, 64, 64)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no image files .* in .*"):
        load_raw("folder", tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"none of the 1 image files in .* could be read; e.g. .*bad.jpg"):
        folder.load(tmp_path, None)
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "cls" / "x.png")
    with pytest.raises(UserError, match=r"both directly inside it and in subfolders"):
        folder.load(tmp_path, None)


# --- npz -----------------------------------------------------------------------------------------


def test_npz_with_labels_and_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x, x_test = _pixels(rng, 5, 6, 7, 3), _pixels(rng, 2, 6, 7, 3)
    y, y_test = np.array([0, 2, 1, 2, 0]), np.array([1, 1], np.int32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test, class_names=np.array(["a", "b", "c"]))
    splits = load_raw("npz", path)
    assert torch.equal(splits.train.images, torch.from_numpy(x).permute(0, 3, 1, 2))
    assert int(splits.train.images[3, 2, 5, 1]) == x[3, 5, 1, 2]
    assert splits.train.labels.tolist() == y.tolist() and splits.test.labels.tolist() == [1, 1]
    assert splits.train.class_names == ("a", "b", "c") == splits.test.class_names
    assert torch.equal(splits.test.images, torch.from_numpy(x_test).permute(0, 3, 1, 2))


def test_npz_grayscale_unlabelled_and_alpha(tmp_path: Path) -> None:
    x = _pixels(np.random.default_rng(7), 4, 5, 3)
    np.savez(tmp_path / "g.npz", x=x)
    splits = npz.load(tmp_path / "g.npz")
    assert splits.train.labels is None and splits.test is None
    assert torch.equal(splits.train.images, torch.from_numpy(x)[:, None])

    rgba = _pixels(np.random.default_rng(8), 2, 3, 3, 4)
    np.savez(tmp_path / "a.npz", x=rgba, y=np.array([0, 4]))
    with pytest.warns(UserWarning, match="alpha"):
        splits = npz.load(tmp_path / "a.npz")
    assert torch.equal(splits.train.images, torch.from_numpy(rgba[..., :3]).permute(0, 3, 1, 2))
    assert splits.train.num_classes == 5


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 4, 4), np.float32)}, r"'x' must be uint8.*float32"),
        ({"x": np.zeros((2, 4, 4, 2), np.uint8)}, r"'x' must be N×H×W or N×H×W×C"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1, 2])}, r"'y' must have shape \(2,\)"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.0, 1.0])}, r"'y' must hold integer labels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, -1])}, r"'y' has negative labels"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 3]), "class_names": np.array(["a", "b"])}, r"label 3"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "x_test": np.zeros((2, 5, 4), np.uint8)}, r"'x_test' images are"),
        ({"X": np.zeros((2, 4, 4), np.uint8)}, r"no 'x' array \(found: X\)"),
    ],
)
def test_npz_rejects_bad_arrays(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(UserError, match=message) as error:
        load_raw("npz", path)
    assert str(path) in str(error.value)


def test_npz_rejects_non_archives(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(UserError, match=r"x.npy holds a single array"):
        npz.load(tmp_path / "x.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(UserError, match=r"cannot read .*junk.npz"):
        npz.load(tmp_path / "junk.npz")


# --- digits and the registry ---------------------------------------------------------------------


def test_digits() -> None:
    ds = load_raw("digits", None).train
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == torch.uint8
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert int(ds.images.max()) == 255 and int(ds.images.min()) == 0
    assert load_raw("digits", None).test is None


def test_registry_lists_every_format() -> None:
    expected = {"digits", "cifar10", "cifar100", "cifar100-20", "stl10", "mnist", "fashion-mnist", "folder", "shards", "npz"}
    assert set(DATASETS) == expected
    assert all(spec.name == name and spec.description for name, spec in DATASETS.items())
    assert [n for n, s in DATASETS.items() if not s.needs_root] == ["digits"]


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown dataset 'imagenet'.*cifar10.*npz"):
        load_raw("imagenet", tmp_path)
    for name in DATASETS:
        if DATASETS[name].needs_root:
            with pytest.raises(UserError, match=rf"dataset '{name}' needs --data-root pointing at"):
                load_raw(name, None)
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=rf"dataset 'cifar10': --data-root {missing} does not exist"):
        load_raw("cifar10", str(missing))
    for name in ("cifar10", "stl10", "mnist"):
        with pytest.raises(UserError, match=str(tmp_path)):
            load_raw(name, tmp_path)  # exists, but holds none of the files
