"""int8 CPU inference: close to float32 for every design, invariant to batching, a copy, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from poolattn import EmbeddingModel
from poolattn.backbone import BackboneError, autocast_precision, decoder_layers
from poolattn.cli import app
from poolattn.pooling import POOLERS
from poolattn.quantize import Int8Linear, int8_copy, is_int8, linear_layers
from poolattn.serve import Batcher, Metrics, ServeSettings

TEXTS = [
    "hi",
    "The quick brown fox jumps over the lazy dog.",
    "Pooling and attention decide how a decoder becomes an embedding model, and this text is longer.",
    "",
    "a b",
    "Numbers 0123456789 and punctuation ,.;:!?'\"()[]{} appear too.",
    "Bidirectional attention removes the causal mask; the padding mask stays. " * 3,
]
#: Big enough that int8 rounding is measured as on a real model (hidden 64, 4 layers).
SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def folder(tiny_factory):
    return tiny_factory("llama", **SIZE)


@pytest.fixture(scope="module")
def make(folder):
    def build(pooling: str = "eos", attention: str = "causal") -> EmbeddingModel:
        return EmbeddingModel.from_backbone(folder, attention=attention, pooling=pooling)

    return build


def worst_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", sorted(POOLERS))
def test_int8_is_close_to_float32_and_batch_invariant(make, pooling, attention):
    model = make(pooling, attention)
    quantised = int8_copy(model)
    assert is_int8(quantised) and not is_int8(model)
    # every linear layer is int8 but the first decoder layer's MLP, which makes the massive activations
    float32 = {id(layer) for *_, layer in linear_layers(quantised.backbone)}
    first_mlp = decoder_layers(quantised.backbone)[0].mlp
    assert float32 == {id(layer) for *_, layer in linear_layers(first_mlp)} != set()
    reference, vectors = model.encode(TEXTS), quantised.encode(TEXTS)
    assert worst_cosine(reference, vectors) >= 0.99
    # per-token scales and exact int32 sums: causal vectors are as invariant as float32's; bidirectional ones
    # take float32's last-bit differences through a rounding to int8 now and then, which moves that element by a
    # level (this 64-wide model, measured: up to 6e-4)
    left = quantised.encode(TEXTS, padding_side="left")
    alone = np.stack([quantised.encode([text])[0] for text in TEXTS])
    atol = 1e-6 if attention == "causal" else 1e-3
    np.testing.assert_allclose(left, vectors, rtol=0, atol=atol)
    np.testing.assert_allclose(alone, vectors, rtol=0, atol=atol)


def test_int8_is_a_copy_and_cannot_be_saved(make, tmp_path):
    model = make("latent")
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    quantised = int8_copy(model)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert quantised.pooler is not model.pooler
    assert all(torch.equal(a, b) for a, b in zip(quantised.pooler.parameters(), model.pooler.parameters(), strict=True))
    assert quantised.fingerprint() != model.fingerprint()
    assert int8_copy(quantised) is quantised
    with pytest.raises(ValueError, match="int8 copy is for inference only"):
        quantised.save(tmp_path / "m")


def test_int8_merges_a_lora_adapter(make):
    model = make("mean", "bidirectional")
    model.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, parameter in model.backbone.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)  # a trained adapter: lora_B starts at zero
    quantised = int8_copy(model)
    assert model.has_adapter and not quantised.has_adapter
    assert worst_cosine(model.encode(TEXTS), quantised.encode(TEXTS)) >= 0.99


def test_int8_of_bfloat16_weights_computes_in_float32(folder):
    model = EmbeddingModel.from_backbone(folder, pooling="eos", dtype="bfloat16")
    assert int8_copy(model).encode(TEXTS).dtype == np.float32


def test_int8_on_a_gpu_is_a_one_line_error(make, monkeypatch):
    with pytest.raises(BackboneError, match="int8 runs on a CPU only"), autocast_precision("int8", "cuda"):
        pass
    model = make()
    monkeypatch.setattr(EmbeddingModel, "device", property(lambda _self: torch.device("cuda")))
    with pytest.raises(BackboneError, match="int8 runs on a CPU only"):
        int8_copy(model)


def test_int8_linear_matches_a_float32_linear():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48)
    x = torch.randn(3, 5, 64)
    quantised = Int8Linear.of(layer, maxima=torch.rand(64) + 0.5)
    assert len(quantised.outliers) == 1 and quantised.qweight.shape == (63, 48)
    with torch.no_grad():
        exact, approx = layer(x), quantised(x)
    assert approx.shape == exact.shape and approx.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(exact.flatten(), approx.flatten(), dim=0) > 0.999
    assert torch.equal(quantised(x[1:2]), approx[1:2])  # each row is quantised by itself


def test_server_runs_an_int8_copy(make):
    model = make()
    batcher = Batcher(model, ServeSettings(precision="int8"), Metrics())
    assert is_int8(batcher.model) and not is_int8(model)


runner = CliRunner()


def test_cli_encode_and_eval_with_int8(folder, tmp_path):
    (tmp_path / "t.txt").write_text("\n".join(text for text in TEXTS if text.strip()) + "\n")
    outs = {}
    for precision in ("fp32", "int8"):
        outs[precision] = tmp_path / f"{precision}.npy"
        args = ["encode", str(folder), "-i", str(tmp_path / "t.txt"), "-o", str(outs[precision])]
        result = runner.invoke(
            app, [*args, "--pooling", "mean", "--attention", "bidirectional", "--precision", precision]
        )
        assert result.exit_code == 0, result.output
    assert worst_cosine(np.load(outs["fp32"]), np.load(outs["int8"])) >= 0.99
    args = ["eval", str(folder), "--tasks", "NewsgroupSubjectRetrieval", "--profile", "quick", "--precision", "int8"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "eval" / "NewsgroupSubjectRetrieval.json").read_text())["precision"] == "int8"
