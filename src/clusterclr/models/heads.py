"""Heads that sit on top of backbone features, named for the paper each comes from.

Every head is one ``MLPHead``; the named classes fix its shape as their
paper does, so a method file reads ``SimCLRProjector(...)`` rather than a
list of flags. State-dict keys are those of the MLP (``0.weight``, ...).
"""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """``num_layers`` linear layers; every hidden layer is Linear → BatchNorm → ReLU.

    ``hidden_bn=False`` drops the hidden BatchNorm (Linear → ReLU);
    ``last_bn`` adds an affine-free BatchNorm after the output layer.
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


class SimCLRProjector(MLPHead):
    """SimCLR's g(·) (Chen et al., 2020): Linear → BN → ReLU → Linear (also the centre predictor's)."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim)


class MoCoV2Projector(MLPHead):
    """MoCo v2's MLP head (Chen et al., 2020): Linear → ReLU → Linear, no batch norm."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, hidden_bn=False)


class CCInstanceProjector(MoCoV2Projector):
    """Contrastive Clustering's instance projector (Li et al., 2021): MoCo v2's shape, Linear → ReLU → Linear."""


class SimSiamProjector(MLPHead):
    """SimSiam's projector (Chen & He, 2021): three layers, batch norm after every one, the last without affine."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048) -> None:
        super().__init__(in_dim, hidden_dim, out_dim, num_layers=3, last_bn=True)


class SimSiamPredictor(MLPHead):
    """SimSiam's predictor h(·): a two-layer bottleneck, Linear → BN → ReLU → Linear."""

    def __init__(self, dim: int = 2048, hidden_dim: int = 512) -> None:
        super().__init__(dim, hidden_dim, dim)


class BYOLProjector(MLPHead):
    """BYOL's projector (Grill et al., 2020): Linear → BN → ReLU → Linear."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256) -> None:
        super().__init__(in_dim, hidden_dim, out_dim)


class BYOLPredictor(MLPHead):
    """BYOL's predictor q(·): the projector's shape, from and to the projection space."""

    def __init__(self, dim: int = 256, hidden_dim: int = 4096) -> None:
        super().__init__(dim, hidden_dim, dim)
