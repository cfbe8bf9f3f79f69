"""Whether a name can come from the Hugging Face hub: is it shaped like a repository id, is it cached, can the hub be
reached. Answered in milliseconds, so a missing folder or a machine without internet is reported at once instead
of after the hub client's retries (about 30 s)."""

from __future__ import annotations

import os
import re
import socket
import urllib.request
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

#: ``name`` or ``owner/name``: letters, digits, ``-``, ``_`` and ``.``.
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_repo_id(name: str) -> bool:
    """Whether ``name`` could be a hub repository id (a path with two or more slashes, or starting with ``.``, ``~``
    or ``/``, cannot)."""
    return REPO_ID.fullmatch(name) is not None and ".." not in name and "--" not in name


def endpoint() -> str:
    """The hub's base URL (``$HF_ENDPOINT`` or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline() -> bool:
    """Whether the hub client is told to stay offline (``$HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def cache_root() -> Path:
    """The hub client's cache folder."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached(repo_id: str, repo_type: str = "model") -> bool:
    """Whether a snapshot of the repository is in the local hub cache, or (a data set) prepared in the ``datasets``
    library's cache, so it loads without the network."""
    snapshots = cache_root() / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots"
    if repo_type == "dataset" and (datasets_cache() / repo_id.replace("/", "___")).is_dir():
        return True
    try:
        return any(any(snapshot.iterdir()) for snapshot in snapshots.iterdir() if snapshot.is_dir())
    except OSError:
        return False


def datasets_cache() -> Path:
    """The ``datasets`` library's cache folder (``$HF_DATASETS_CACHE``, else ``$HF_HOME/datasets``)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")


@cache
def reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub (or to the HTTPS proxy, when one is set) opens within ``timeout``."""
    if offline():
        return False
    parts = urlsplit(urllib.request.getproxies().get("https") or endpoint())
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def why_unavailable(repo_id: str, repo_type: str = "model") -> str | None:
    """``None`` when the repository is cached or the hub can be reached; else why it cannot be fetched."""
    if cached(repo_id, repo_type):
        return None
    if offline():
        return "it is not in the hub cache and HF_HUB_OFFLINE is set"
    if not reachable():
        return f"it is not in the hub cache and {urlsplit(endpoint()).hostname} cannot be reached (no internet?)"
    return None
