"""The ``poolattn`` command line: one typer app (:mod:`.base`) with the commands of :mod:`.models` and
:mod:`.tools` registered on it, in the order ``poolattn --help`` lists them."""

from __future__ import annotations

from . import models, tools  # noqa: F401  (registers the commands)
from .base import app


def main() -> None:  # pragma: no cover - entry point
    app()
