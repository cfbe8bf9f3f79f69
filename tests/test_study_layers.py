"""The layer-wise analysis: linear CKA and the store that serves every layer from one forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from poolattn import EmbeddingModel
from poolattn.stats import linear_cka
from poolattn.study import LayerEncoder, LayerStore


def test_linear_cka_properties() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    layers = np.stack([x, 3.0 * x @ rotation + 1.0, rng.normal(size=(40, 6))])
    cka = linear_cka(layers)
    np.testing.assert_allclose(np.diag(cka), 1.0)
    np.testing.assert_allclose(cka, cka.T)
    assert cka[0, 1] == pytest.approx(1.0)  # invariant to rotation, scale and shift
    assert cka[0, 2] < 0.6
    # against the feature-space formula ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)
    a, b = (m - m.mean(0) for m in (x, layers[2]))
    expected = np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))
    assert cka[0, 2] == pytest.approx(expected)


def test_layer_store_serves_the_eos_embeddings(tiny_llama: Path) -> None:
    model = EmbeddingModel.from_backbone(tiny_llama, max_length=64)
    texts = ["a red fox", "the dog sleeps under the table", "cat"]
    store = LayerStore(model)
    last = LayerEncoder(store, 3, "last").encode(texts, instruction="Find it")
    np.testing.assert_array_equal(last, model.encode(texts, instruction="Find it"))
    assert store.encoded == 3
    LayerEncoder(store, 1, "first").encode(texts[:2], instruction="Find it")
    assert store.encoded == 3  # every layer came from the first forward pass
