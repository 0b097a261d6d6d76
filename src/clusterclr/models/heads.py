"""Heads that sit on top of backbone features."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """The MLP used as a projection head g(·) and as a prediction head q(·).

    ``num_layers`` linear layers; every hidden layer is Linear → BatchNorm →
    ReLU (``hidden_bn=False`` drops the BatchNorm, as in MoCo v2's head).
    ``last_bn`` adds an affine-free BatchNorm after the output layer, as
    SimSiam's projector does. A predictor is the two-layer case with a
    bottleneck ``hidden_dim`` (SimSiam, BYOL).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        hidden_bn: bool = True,
        last_bn: bool = False,
    ) -> None:
        if num_layers < 1:
            raise ValueError("an MLP head needs at least one layer")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers.append(nn.Linear(dim, hidden_dim, bias=not hidden_bn))
            if hidden_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
