"""configs/paper.toml and configs/train_paper.toml run the paper's exact multi-layer heads (M3: each layer's last
token, M5: each layer's plain mean, no per-layer scaling); this project's variants are their own designs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from poolattn import EmbeddingModel
from poolattn.backbone import attention_inputs, attention_mode, position_ids_from_mask
from poolattn.study import load_study
from poolattn.study.conclusions import paper_exact
from poolattn.training.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["alpha beta", "the quick brown fox jumps over", "a"]


@pytest.fixture(scope="module")
def paper():
    return load_study(ROOT / "configs" / "paper.toml")


def reference_head(model: EmbeddingModel, texts: list[str], reduction: str) -> torch.Tensor:
    """The paper's head computed from ``output_hidden_states``: each layer's last real token (``last``) or plain
    mean over the real tokens (``mean``), plus the layer embedding, no scaling, then the Perceiver head."""
    batch = model.tokenize(texts)
    backbone, attention = model.backbone, model.config.attention
    mask = attention_inputs(backbone, batch.attention_mask, attention, next(backbone.parameters()).dtype)
    with torch.no_grad(), attention_mode(backbone, attention):
        out = backbone(
            input_ids=batch.input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(batch.attention_mask),
            use_cache=False,
            output_hidden_states=True,
        )
        real = batch.attention_mask.float()
        last = real.sum(1).long() - 1
        vectors = []
        for states in out.hidden_states[1:]:  # layers 1..L (the last one final-normed)
            if reduction == "last":
                vectors.append(states[torch.arange(len(texts)), last])
            else:
                vectors.append((states * real[..., None]).sum(1) / real.sum(1, keepdim=True))
        layers = torch.stack(vectors, dim=1).float() + model.pooler.layer_embedding
        return model.pooler.attend(layers, torch.ones(layers.shape[:2], dtype=torch.bool))


@pytest.mark.parametrize(("name", "reduction"), [("M3", "last"), ("M5", "mean")])
def test_paper_designs_are_the_papers_heads(paper, tiny_factory, name: str, reduction: str) -> None:
    design = paper.design(name)
    model = EmbeddingModel.from_backbone(
        tiny_factory("llama"), attention=design.attention, pooling=design.pooling, pooling_options=design.options
    ).eval()
    assert model.pooler.layer_reduction() == reduction and model.pooler.layer_norm == "none"
    assert model.pooler.selected_layers() == list(range(1, model.backbone.config.num_hidden_layers + 1))
    with torch.no_grad():
        ours = model.pool(model.tokenize(TEXTS))
    torch.testing.assert_close(ours, reference_head(model, TEXTS, reduction), rtol=1e-5, atol=1e-5)
    assert paper_exact({"attention": design.attention, "pooling": design.pooling, "options": design.options})


def test_project_variants_are_their_own_designs(paper) -> None:
    names = [d.name for d in paper.designs]
    assert names == ["M0", "M1", "M2", "M3", "M4", "M5", "M3+", "M5+", "M6"]
    signature = {d.name: (d.attention, d.pooling, d.options) for d in paper.designs}
    assert signature["M3"] == ("causal", "multilayer", {"preset": "paper", "layer_norm": "none"})
    assert signature["M5"] == (
        "bidirectional",
        "multilayer",
        {"preset": "paper", "layer_pooling": "mean", "layer_norm": "none"},
    )
    assert signature["M3+"] == ("causal", "multilayer", {"preset": "paper"})  # last token + RMS scale
    assert signature["M5+"] == ("bidirectional", "multilayer", {"preset": "paper"})  # no sink + RMS scale
    exact = {d.name: paper_exact({"attention": d.attention, "pooling": d.pooling, "options": d.options})
             for d in paper.designs}  # fmt: skip
    assert [n for n, e in exact.items() if not e] == ["M3+", "M5+"]


def test_variants_differ_from_the_papers_heads(paper, tiny_factory) -> None:
    torch.manual_seed(0)
    for exact, variant, reduction in (("M3", "M3+", "last"), ("M5", "M5+", "mean_no_sink")):
        design = paper.design(variant)
        model = EmbeddingModel.from_backbone(
            tiny_factory("llama"), attention=design.attention, pooling=design.pooling, pooling_options=design.options
        ).eval()
        assert (model.pooler.layer_reduction(), model.pooler.layer_norm) == (reduction, "rms")
        with torch.no_grad():
            ours = model.pool(model.tokenize(TEXTS))
        assert not torch.allclose(ours, reference_head(model, TEXTS, "last" if exact == "M3" else "mean"), atol=1e-4)


def test_train_paper_runs_the_exact_m5() -> None:
    config = load_train_config(ROOT / "configs" / "train_paper.toml")
    assert (config.model.attention, config.model.pooling) == ("bidirectional", "multilayer")
    assert config.model.pooling_options == {"preset": "paper", "layer_pooling": "mean", "layer_norm": "none"}
    options = {"attention": config.model.attention, "pooling": config.model.pooling}
    assert paper_exact({**options, "options": config.model.pooling_options})
    # the paper's M3, as the config's header says
    m3 = load_train_config(
        ROOT / "configs" / "train_paper.toml",
        ["model.attention=causal", "model.pooling_options.layer_pooling=last"],
    )
    assert paper_exact({"attention": "causal", "pooling": "multilayer", "options": m3.model.pooling_options})
    text = (ROOT / "configs" / "train_paper.toml").read_text()
    assert "--set model.attention=causal --set model.pooling_options.layer_pooling=last" in text
