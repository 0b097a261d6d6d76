"""``clusterclr evaluate --protocol``: the protocols' options from the command line's flags, each checked
before any data or model is loaded."""

from __future__ import annotations

import argparse

from clusterclr.config import DataConfig
from clusterclr.configure import build_config
from clusterclr.errors import UserError
from clusterclr.evaluate.finetune import FinetuneOptions
from clusterclr.evaluate.protocols.options import ProtocolOptions

# (flag, argparse dest, the protocols it applies to)
PROTOCOL_FLAGS = [
    ("--knn-k", "knn_k", ("knn", "transfer")),
    ("--knn-temperature", "knn_temperature", ("knn", "transfer")),
    ("--clusters", "clusters", ("kmeans",)),
    ("--weight-decays", "weight_decays", ("linear", "transfer")),
    ("--semi-fractions", "semi_fractions", ("semi",)),
    ("--semi-epochs", "semi_epochs", ("semi",)),
    ("--semi-lr", "semi_lr", ("semi",)),
    ("--semi-batch-size", "semi_batch_size", ("semi",)),
    ("--data-config", "data_config", ("transfer",)),
    ("--set", "overrides", ("transfer",)),
]


def given_protocol_flags(args: argparse.Namespace) -> list[str]:
    return [flag for flag, dest, _ in [("--seeds", "seeds", ()), *PROTOCOL_FLAGS] if getattr(args, dest) not in (None, [])]


def protocol_options(args: argparse.Namespace, names: list[str]) -> ProtocolOptions:
    for flag, dest, protocols in PROTOCOL_FLAGS:
        if getattr(args, dest) not in (None, []) and not set(protocols) & set(names):
            raise UserError(f"{flag} applies to --protocol {' or '.join(protocols)}, which is not being run")
    positive = {
        "--knn-k": args.knn_k, "--clusters": args.clusters, "--semi-epochs": args.semi_epochs,
        "--semi-batch-size": args.semi_batch_size, "--knn-temperature": args.knn_temperature,
        "--semi-lr": args.semi_lr, "--weight-decays": args.weight_decays,
    }
    for flag, value in positive.items():
        values = value if isinstance(value, list) else [value]
        if any(v is not None and not v > 0 for v in values):
            raise UserError(f"{flag} must be positive, got {' '.join(map(str, values))}")
    if args.semi_fractions and not all(0 < f <= 1 for f in args.semi_fractions):
        raise UserError(f"--semi-fractions must lie in (0, 1], e.g. 0.01 0.1; got {' '.join(map(str, args.semi_fractions))}")
    if args.semi_batch_size == 1:
        raise UserError("--semi-batch-size must be at least 2 (batch norm trains on batches)")
    defaults = FinetuneOptions()
    finetune = FinetuneOptions(
        epochs=args.semi_epochs or defaults.epochs,
        lr=args.semi_lr or defaults.lr,
        batch_size=args.semi_batch_size or defaults.batch_size,
    )
    given = {
        "knn_k": tuple(args.knn_k) if args.knn_k else None,
        "knn_temperature": args.knn_temperature,
        "clusters": tuple(args.clusters) if args.clusters else None,
        "weight_decays": tuple(args.weight_decays) if args.weight_decays else None,
        "semi_fractions": tuple(args.semi_fractions) if args.semi_fractions else None,
        "transfer_data": _transfer_data(args) if "transfer" in names else None,
    }
    return ProtocolOptions(finetune=finetune, **{key: value for key, value in given.items() if value is not None})


def checked_seeds(seeds: list[int] | None) -> list[int]:
    seeds = seeds or [0]
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds must be distinct non-negative integers, got {' '.join(map(str, seeds))}")
    return seeds


def _transfer_data(args: argparse.Namespace) -> DataConfig:
    """Data set B of --protocol transfer: the data section of --data-config, then --set data.KEY=VALUE."""
    if not args.data_config and not args.overrides:
        raise UserError("--protocol transfer needs data set B: --set data.dataset=NAME [data.root=PATH] or --data-config FILE")
    outside = [text for text in args.overrides if not text.startswith("data.")]
    if outside:
        raise UserError(f"--set here names data set B only (data.KEY=VALUE), got {outside[0]}")
    return build_config(args.data_config, None, args.overrides).data
