"""End to end on the real embedded default backbone (SmolLM2-135M from its PyPI wheel)."""

from __future__ import annotations

import numpy as np
import pytest

from poolattn import EmbeddingModel, assets

pytestmark = pytest.mark.slow

TEXTS = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
]


@pytest.fixture(scope="module")
def smollm2():
    return assets.model_path("smollm2")


@pytest.mark.parametrize(("attention", "pooling"), [("causal", "eos"), ("bidirectional", "mean")])
def test_real_model_invariances_and_semantics(smollm2, attention, pooling):
    model = EmbeddingModel.from_backbone(smollm2, attention=attention, pooling=pooling, max_length=64)
    assert model.backbone.config.num_hidden_layers == 30 and model.dim == 576
    vecs = model.encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, padding_side="left"), vecs, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.stack([model.encode([t])[0] for t in TEXTS]), vecs, rtol=0, atol=1e-5)
    if attention == "causal":  # untrained, the model is only meaningful the way it was pretrained
        sims = vecs @ vecs.T
        assert sims[0, 1] > sims[0, 2] and sims[2, 3] > sims[2, 0]  # paraphrases are closer


def test_real_model_multilayer_bf16_save_load(smollm2, tmp_path):
    model = EmbeddingModel.from_backbone(smollm2, attention="bidirectional", pooling="multilayer", max_length=64)
    fp32 = model.encode(TEXTS)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(EmbeddingModel.load(tmp_path / "m").encode(TEXTS), fp32)
    bf16 = EmbeddingModel.load(tmp_path / "m", dtype="bfloat16").encode(TEXTS)
    assert float((bf16 * fp32).sum(1).min()) > 0.99
