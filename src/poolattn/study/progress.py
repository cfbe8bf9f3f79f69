"""The study's own progress lines and its event log (``events.jsonl``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
        self.prior: dict[bool, float] = {}
        self.started = time.perf_counter()
        self.events = events

    def log(self, **event: Any) -> None:
        if not self.enabled:
            return
        self.events.parent.mkdir(parents=True, exist_ok=True)
        with open(self.events, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"time": now(), **event}) + "\n")

    def expect(self, prior: dict[bool, float]) -> None:
        """Seconds a trained (True) and an untrained (False) cell should take here, measured before the grid."""
        self.prior = dict(prior)

    def cell_seconds(self, trained: bool) -> float | None:
        """A pending cell's expected seconds: the mean of its kind's finished cells; before any, its prior scaled
        by how far the other kind's finished cells ran from theirs (an untrained cell only evaluates, so its
        time alone says little of a trained one's)."""
        if self.durations[trained]:
            return float(np.mean(self.durations[trained]))
        other = self.durations[not trained]
        if trained in self.prior:
            if other and self.prior.get(not trained):
                return self.prior[trained] * float(np.mean(other)) / self.prior[not trained]
            return self.prior[trained]
        return float(np.mean(other)) if other else None

    def eta(self) -> str:
        expected = [self.cell_seconds(c.design.train) for c in self.pending.values()]
        if any(seconds is None for seconds in expected):
            return "ETA after the first cell"
        return f"ETA {fmt_seconds(sum(expected))}"  # type: ignore[arg-type]

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


PHASES = ("cost estimate", "mining", "adaptation", "training", "evaluation", "layer pass")


class PhaseClock:
    """Wall time per phase, each second counted once: a phase begun inside another pauses the outer one (the
    mining that the first training cell triggers counts as mining, not training)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stack: list[str] = []  # the running phase last
        self.since = time.perf_counter()  # when the running phase last started or resumed

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        self.switch()
        self.stack.append(phase)
        try:
            yield
        finally:
            self.switch()
            self.stack.pop()

    def switch(self) -> None:
        """Credit the running phase with the time since it last started or resumed."""
        at = time.perf_counter()
        if self.stack:
            self.seconds[self.stack[-1]] = self.seconds.get(self.stack[-1], 0.0) + at - self.since
        self.since = at

    def snapshot(self) -> dict[str, float]:
        """Seconds per phase so far (a running phase included), rounded, in :data:`PHASES` order."""
        self.switch()
        order = [p for p in PHASES if p in self.seconds] + sorted(set(self.seconds) - set(PHASES))
        return {name: round(self.seconds[name], 1) for name in order}


def fmt_seconds(seconds: float) -> str:
    whole = round(seconds)
    if whole >= 3600:
        return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
    return f"{whole // 60}:{whole % 60:02d}"
