"""Heads that sit on top of backbone features."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP ``h -> z`` used by the contrastive losses (SimCLR's g(·)).

    ``num_layers`` linear layers; every hidden layer is Linear → BatchNorm →
    ReLU. ``last_bn`` adds an affine-free BatchNorm after the output layer,
    as MoCo v3 and SimSiam do.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        last_bn: bool = False,
    ) -> None:
        if num_layers < 1:
            raise ValueError("a projection head needs at least one layer")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
