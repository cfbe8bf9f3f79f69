"""The same guarantees on a CUDA device (skipped without one): attention probes per backend and dtype,
padding and batch invariance, agreement with the CPU, bf16 fidelity, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_backbone import CASES, later_token_effect
from training_common import config_for, make_records

from poolattn import EmbeddingModel
from poolattn.backbone import load_backbone
from poolattn.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TEXTS = ["hi", "The quick brown fox jumps over the lazy dog.", "", "a b", "Pooling and attention, a longer text."]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("family", "impl"), CASES)
def test_probe_on_cuda(tiny_factory, family, impl, dtype):
    model = load_backbone(tiny_factory(family), attn_implementation=impl).to("cuda", dtype)
    case = f"{family}/{impl}/{dtype}"
    assert later_token_effect(model, "causal", "cuda") == 0.0, f"{case}: causal state 2 changed when token 7 did"
    assert later_token_effect(model, "bidirectional", "cuda") > 1e-3, f"{case}: bidirectional state 2 ignored token 7"


@pytest.mark.parametrize("pooling", ["eos", "mean", "latent", "multilayer"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_invariances_and_cpu_agreement_on_cuda(tiny_llama, pooling, attention):
    cpu = EmbeddingModel.from_backbone(tiny_llama, attention=attention, pooling=pooling)
    reference = cpu.encode(TEXTS)
    model = cpu.to("cuda")
    right = model.encode(TEXTS)
    np.testing.assert_allclose(model.encode(TEXTS, padding_side="left"), right, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.stack([model.encode([t])[0] for t in TEXTS]), right, rtol=0, atol=1e-5)
    np.testing.assert_allclose(right, reference, rtol=0, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16 = model.encode(TEXTS)
        serial = model.encode(TEXTS, batch_tokens=8, workers=1)
        threaded = model.encode(TEXTS, batch_tokens=8, workers=2)
    assert (bf16 * right).sum(1).min() > 0.99
    np.testing.assert_allclose(threaded, serial, rtol=0, atol=1e-5)
    assert np.abs(threaded - right).max() > 1e-6  # the worker threads kept the caller's CUDA autocast


def test_training_runs_on_cuda(tiny_llama, tmp_path):
    config = config_for(tiny_llama, tmp_path, "recipe.steps=4", "recipe.mixed_precision=bf16", "recipe.mini_batch=3")
    result = train(config, records=make_records(), progress=False)
    assert result.steps == 4 and np.isfinite(result.final_loss)
    assert result.peak_memory_bytes > 0  # CUDA's allocator peak: the model really trained on the GPU
    trained = EmbeddingModel.load(result.model_dir).to("cuda")
    assert np.isfinite(trained.encode(TEXTS)).all()
