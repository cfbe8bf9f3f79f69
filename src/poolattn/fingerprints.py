"""Fingerprints of the exact weights behind a result: a module's tensors, or the files of a model folder.

A fingerprint is the first 16 hex digits of a SHA-256 over names and bytes, so two models share one only when
every tensor (or file) is bit-identical. Hashing SmolLM2-135M's float32 weights (540 MB) takes about half a
second on one core; :class:`ModuleFingerprint` computes it again only after a tensor changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

_CHUNK = 1 << 24


def tensors_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """Fingerprint of named tensors: every name, dtype, shape and the raw bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        digest.update(f"{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        flat = tensor.contiguous().reshape(-1).cpu()
        if flat.numel():
            digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()[:16]


def files_fingerprint(folder: str | os.PathLike[str]) -> str:
    """Fingerprint of a folder's files: every relative path and its bytes, in path order."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(root).as_posix()}\x00".encode())
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()[:16]


class ModuleFingerprint:
    """:func:`tensors_fingerprint` of a module's state dict, cached until a tensor is replaced (another address,
    device, dtype or shape) or changed in place (autograd's version counter; writes through ``.data`` bypass it)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value = ""

    def __call__(self, module: nn.Module) -> str:
        state = module.state_dict()
        key = tuple(
            (name, t.data_ptr(), t._version, t.dtype, tuple(t.shape), str(t.device)) for name, t in state.items()
        )
        if key != self._key:
            self._value, self._key = tensors_fingerprint(state), key
        return self._value
