"""One registry for pooling designs."""

from __future__ import annotations

from typing import Any

POOLERS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a pooler available under its ``name``."""
    POOLERS[cls.name] = cls
    return cls


def build_pooler(
    name: str, *, hidden_size: int, num_layers: int, attention: str, options: dict[str, Any] | None = None
):
    """Instantiate a registered pooler, with a clear error for unknown names or options."""
    if name not in POOLERS:
        raise ValueError(f"unknown pooling {name!r}; choose one of {sorted(POOLERS)}")
    try:
        return POOLERS[name](hidden_size=hidden_size, num_layers=num_layers, attention=attention, **(options or {}))
    except TypeError as err:
        raise ValueError(f"bad options for pooling {name!r}: {err}") from None
