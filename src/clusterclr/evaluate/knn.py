"""Weighted k-nearest-neighbour classifier on frozen features.

The protocol of Wu et al. (2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination"), also used by solo-learn: features
are L2-normalised, each query takes its ``k`` most cosine-similar bank
features ``s_1..s_k`` and class ``c`` scores
``sum_{i : y_i = c} exp(s_i / T)``; the prediction is the top-scoring class.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
import torch.nn.functional as F

QUERY_CHUNK = 8192  # queries scored at once by ``knn_accuracy``


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    exclude_self: bool = False,
    index: faiss.Index | None = None,
) -> torch.Tensor:
    """Class scores of each query from its weighted nearest bank neighbours.

    ``bank`` is (N, D), ``bank_labels`` (N,) integer classes, ``queries``
    (Q, D); neither feature set needs to be normalised. ``k`` is clipped to
    the number of available neighbours. ``num_classes`` defaults to
    ``max(bank_labels) + 1``.

    ``exclude_self=True`` is for scoring the bank against itself (``queries``
    row ``q`` is bank row ``q``): the search takes ``k + 1`` neighbours and
    drops index ``q``. If exact duplicates push ``q`` out of those ``k + 1``,
    the last neighbour is dropped instead, so every query keeps ``k``.

    ``index``: a faiss inner-product index already holding the normalised
    bank (to search it chunk after chunk without rebuilding it).

    Returns a float32 (Q, C) CPU tensor of summed ``exp(similarity / T)``
    weights; ``scores.topk(5)`` gives top-5 predictions.
    """
    bank_labels = _check_labels(bank_labels, "bank_labels")
    _check_features(bank, queries)
    n_bank = bank.shape[0]
    if bank_labels.shape[0] != n_bank:
        raise ValueError(f"bank has {n_bank} rows but bank_labels has {bank_labels.shape[0]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if exclude_self and queries.shape[0] != n_bank:
        raise ValueError(
            f"exclude_self needs the queries to be the bank: {queries.shape[0]} queries, "
            f"{n_bank} bank rows"
        )
    needed = int(bank_labels.max()) + 1
    if num_classes is None:
        num_classes = needed
    elif num_classes < needed:
        raise ValueError(f"num_classes={num_classes} but bank_labels contain class {needed - 1}")

    available = n_bank - 1 if exclude_self else n_bank
    if available < 1:
        raise ValueError("exclude_self with a single bank row leaves no neighbours")
    k = min(k, available)

    if index is None:
        index = faiss.IndexFlatIP(bank.shape[1])
        index.add(_normalised_numpy(bank))
    sims, ids = index.search(_normalised_numpy(queries), k + 1 if exclude_self else k)
    if exclude_self:
        sims, ids = _drop_self(sims, ids)

    weights = torch.from_numpy(sims).div_(temperature).exp_()
    neighbour_labels = bank_labels[torch.from_numpy(ids)]
    scores = torch.zeros(queries.shape[0], num_classes, dtype=torch.float32)
    return scores.scatter_add_(1, neighbour_labels, weights)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of :func:`knn_predict`, keyed ``"top1"``, ``"top5"``.

    Classes are counted over both label sets. With 5 classes or fewer every
    class is in the top 5, so ``"top5"`` is 1.0 and carries no information.
    """
    query_labels = _check_labels(query_labels, "query_labels")
    if query_labels.shape[0] != queries.shape[0]:
        raise ValueError(
            f"queries has {queries.shape[0]} rows but query_labels has {query_labels.shape[0]}"
        )
    if query_labels.shape[0] == 0:
        raise ValueError("no queries to score")
    bank_labels = _check_labels(bank_labels, "bank_labels")
    num_classes = int(torch.cat([bank_labels, query_labels]).max()) + 1
    _check_features(bank, queries)
    # Queries a chunk at a time: the (chunk × classes) score table stays small for a million queries
    # and a thousand classes, and the bank is normalised once.
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(_normalised_numpy(bank))
    top1 = top5 = 0
    for start in range(0, len(queries), QUERY_CHUNK):
        scores = knn_predict(bank, bank_labels, queries[start : start + QUERY_CHUNK], k, temperature, num_classes, index=index)
        hits = scores.topk(min(5, num_classes), dim=1).indices == query_labels[start : start + QUERY_CHUNK].unsqueeze(1)
        top1 += int(hits[:, 0].sum())
        top5 += int(hits.any(dim=1).sum())
    return {"top1": top1 / len(queries), "top5": top5 / len(queries)}


def _check_features(bank: torch.Tensor, queries: torch.Tensor) -> None:
    for name, x in (("bank", bank), ("queries", queries)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError(f"{name} must be a 2-D tensor (rows, dim)")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if bank.shape[0] == 0:
        raise ValueError("bank is empty")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"feature dims differ: bank has {bank.shape[1]}, queries have {queries.shape[1]}"
        )


def _check_labels(labels: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D tensor")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer classes, got {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return labels.detach().to("cpu", torch.int64)


def _normalised_numpy(x: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit L2 norm as the C-contiguous float32 array faiss needs."""
    x = F.normalize(x.detach().to("cpu", torch.float32), dim=1)
    return np.ascontiguousarray(x.numpy())


def _drop_self(sims: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own index from (Q, k + 1) search results, keeping k."""
    is_self = ids == np.arange(len(ids))[:, None]
    # faiss ids in a row are distinct, so this marks exactly one column per row.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    k = ids.shape[1] - 1
    return sims[keep].reshape(-1, k), ids[keep].reshape(-1, k)
