"""The study's own progress lines and its event log (``events.jsonl``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from ..io import now
from .cells import Cell
from .config import Design

console = Console(stderr=True)


class GridProgress:
    """One line per phase of the grid: cell i/N, design, phase, elapsed time and an ETA from the cells run so far.

    Lines (not a live display) so that the training and evaluation displays beneath stay intact and a log file
    reads well.
    """

    def __init__(self, cells: Sequence[Cell], events: Path, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.total = len(cells)
        self.pending = {c.name: c for c in cells}
        self.durations: dict[bool, list[float]] = {True: [], False: []}
        self.started = time.perf_counter()
        self.events = events

    def log(self, **event: Any) -> None:
        if not self.enabled:
            return
        self.events.parent.mkdir(parents=True, exist_ok=True)
        with open(self.events, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": now(), **event}) + "\n")

    def eta(self) -> str:
        known = self.durations[True] + self.durations[False]
        if not known:
            return "ETA after the first cell"
        fallback = float(np.mean(known))
        seconds = sum(
            float(np.mean(self.durations[c.design.train])) if self.durations[c.design.train] else fallback
            for c in self.pending.values()
        )
        return f"ETA {fmt_seconds(seconds)}"

    def phase(self, index: int, cell_name: str, design: Design | None, phase: str) -> None:
        what = f"{design.attention} · {design.pooling}" if design else "base model"
        elapsed = fmt_seconds(time.perf_counter() - self.started)
        if not self.enabled:
            return
        step = f"{index}/{self.total}" if index else "layers"
        console.print(
            f"[bold cyan]\\[{step}][/] [bold]{cell_name}[/] ({what}) · [magenta]{phase}[/] "
            f"· elapsed {elapsed} · {self.eta()}"
        )
        self.log(cell=cell_name, phase=phase, event="start")

    def done(self, cell: Cell, seconds: float, reused: bool) -> None:
        self.pending.pop(cell.name, None)
        if not reused:
            self.durations[cell.design.train].append(seconds)
        self.log(cell=cell.name, event="reused" if reused else "finished", seconds=round(seconds, 2), hash=cell.hash)


def fmt_seconds(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"
