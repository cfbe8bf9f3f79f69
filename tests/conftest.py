from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# results must not depend on how many other poolattn processes run beside the suite (tests/test_threads.py
# turns the sharing on where it is what is tested)
os.environ.setdefault("POOLATTN_SHARE_THREADS", "0")
logging.getLogger("transformers").setLevel(logging.ERROR)

from tiny import save_tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory):
    """Build (once per session) a tiny random decoder folder: ``tiny_factory(family, **config)``."""
    cache: dict[tuple, Path] = {}

    def make(family: str = "llama", **overrides) -> Path:
        key = (family, tuple(sorted(overrides.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"tiny-{family}")
            cache[key] = save_tiny(folder, family, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama(tiny_factory) -> Path:
    return tiny_factory("llama")


@pytest.fixture
def matmul_attention_calls(monkeypatch) -> list[int]:
    """A one-element counter of calls to poolattn_sdpa's matmul path during the test."""
    from poolattn import short_attention

    calls = [0]
    real = short_attention.matmul_attention

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(short_attention, "matmul_attention", counted)
    return calls
