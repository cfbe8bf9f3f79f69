"""What a checkpoint needs besides weights and optimiser: every random number generator's state, and the listing
of a run's complete checkpoints."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: A checkpoint folder's name: ``step-`` and the step, zero-padded to 8 digits.
CHECKPOINT_NAME = re.compile(r"^step-(\d+)$")


def rng_state(device: torch.device) -> dict[str, Any]:
    """Python's, NumPy's, torch's (and the CUDA device's) RNG states, as tensors and plain values."""
    py_version, py_state, py_gauss = random.getstate()
    _, np_key, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy_key": torch.from_numpy(np_key.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    key = state["numpy_key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy_pos"], state["numpy_has_gauss"], state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with a ``state.json``) by step."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and (path / "state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)
