import pytest
import torch

from clusterclr.build import resolve_clusters, select_precision
from clusterclr.config import DataConfig
from clusterclr.data.base import ImageDataset
from clusterclr.data.splits import holdout_indices, load_splits, resize
from clusterclr.errors import UserError


def test_holdout_is_stratified_disjoint_and_fixed():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    data = ImageDataset(torch.zeros(100, 1, 2, 2, dtype=torch.uint8), labels)
    kept, held = holdout_indices(data, 0.2, seed=0)
    assert set(kept.tolist()).isdisjoint(held.tolist()) and len(kept) + len(held) == 100
    assert torch.bincount(labels[held]).tolist() == [10, 6, 4]
    assert torch.equal(held, holdout_indices(data, 0.2, seed=0)[1])
    assert not torch.equal(held, holdout_indices(data, 0.2, seed=1)[1])


def test_digits_holds_out_a_fifth_and_trains_on_the_rest():
    splits = load_splits(DataConfig())
    assert splits.eval_split == "holdout"
    assert len(splits.test) == 359 and len(splits.train) == len(splits.bank) == 1797 - 359
    assert torch.bincount(splits.test.labels).tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]


def test_resize_keeps_uint8_and_constant_images():
    data = ImageDataset(torch.full((3, 3, 10, 12), 77, dtype=torch.uint8))
    out = resize(data, 6)
    assert out.images.dtype == torch.uint8 and out.images.shape == (3, 3, 6, 6)
    assert (out.images == 77).all()


def test_resolve_clusters():
    assert resolve_clusters(None, 10, 100, "x") == 10
    assert resolve_clusters(4, 10, 100, "x") == 4
    with pytest.raises(UserError, match="no labels"):
        resolve_clusters(None, None, 100, "x")
    with pytest.raises(UserError, match="cannot make 200 clusters"):
        resolve_clusters(200, None, 100, "x")


def test_precision_choices(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert select_precision("fp32", cpu) is None
    assert select_precision("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert select_precision("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert select_precision("auto", cuda) is torch.float16  # emulated bf16 only: use fp16 + scaler
