"""Methods by name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clusterclr.errors import UserError

if TYPE_CHECKING:
    from clusterclr.methods.base import Method

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    if cls.name in _METHODS:
        raise ValueError(f"method {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise UserError(f"unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def method_summaries() -> dict[str, str]:
    """Name -> the first line of the method's docstring."""
    return {name: (cls.__doc__ or "").strip().splitlines()[0] for name, cls in sorted(_METHODS.items())}


def methods_with_cluster_head() -> list[str]:
    return sorted(name for name, cls in _METHODS.items() if cls.cluster_head_attribute is not None)
