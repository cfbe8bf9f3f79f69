"""Every pooler: output shape, pads change nothing, gradients reach the head, options are validated."""

from __future__ import annotations

import pytest
import torch

from poolattn import EmbeddingModel
from poolattn.layer_states import reduce_states
from poolattn.pooling import POOLERS, PoolInput, build_pooler
from poolattn.pooling.cross_attention import compact, paper_latent, paper_perceiver, resolve_size
from poolattn.pooling.multilayer import normalise_layers

DESIGNS = sorted(POOLERS)
TRAINABLE = {"latent", "trainable", "multilayer"}


@pytest.fixture(scope="module")
def models(tiny_factory):
    cache = {}

    def get(pooling: str, attention: str = "bidirectional", **options):
        key = (pooling, attention, repr(sorted(options.items())))
        if key not in cache:
            cache[key] = EmbeddingModel.from_backbone(
                tiny_factory("llama"), attention=attention, pooling=pooling, pooling_options=options
            )
        return cache[key]

    return get


def test_registry_has_every_design():
    assert set(DESIGNS) == {"eos", "mean", "weighted_mean", "latent", "trainable", "multilayer"}


@pytest.mark.parametrize("pooling", DESIGNS)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_output_shape_and_norm(models, pooling, attention):
    model = models(pooling, attention)
    vecs = model.encode(["one", "two words", "three short words"])
    assert vecs.shape == (3, 32) and vecs.dtype.name == "float32"
    assert abs(float((vecs**2).sum(1).mean()) - 1.0) < 1e-5


@pytest.mark.parametrize("pooling", DESIGNS)
def test_pad_token_embeddings_change_nothing(models, pooling):
    """Overwrite the hidden states at pad positions with noise: the pooled vector must not move."""
    model = models(pooling, "bidirectional")
    pooler = model.pooler
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    layers = torch.randn(2, len(pooler.selected_layers()), 32) if pooler.needs_layers else None
    inputs = PoolInput(hidden, mask, mask.bool(), torch.tensor([2, 4]), layers)
    noisy = hidden.clone()
    noisy[0, 3:] = torch.randn(2, 32) * 100
    with torch.no_grad():
        a = pooler(inputs)
        b = pooler(PoolInput(noisy, mask, mask.bool(), torch.tensor([2, 4]), layers))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooling", sorted(TRAINABLE))
def test_gradient_reaches_every_head_parameter(models, pooling):
    model = models(pooling, "bidirectional")
    model.zero_grad()
    model.train()
    loss = model(model.tokenize(["a b c", "the quick fox"])).sum()
    loss.backward()
    model.eval()
    params = dict(model.pooler.named_parameters())
    assert params, "trainable heads have parameters"
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {pooling}.{name}"
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone_grads, "gradients also flow into the backbone"
    model.zero_grad()


def test_trainable_inputs_follow_the_paper_and_can_be_overridden(models):
    assert models("trainable", "causal").pooler.inputs == "eos"
    assert models("trainable", "bidirectional").pooler.inputs == "tokens"
    assert models("trainable", "causal", inputs="tokens").pooler.inputs == "tokens"


def test_multilayer_layer_selection_and_reduction(models):
    causal = models("multilayer", "causal")
    assert causal.pooler.selected_layers() == [1, 2, 3] and causal.pooler.layer_reduction() == "last"
    bidir = models("multilayer", "bidirectional", layers=[-1, 1])
    assert bidir.pooler.selected_layers() == [1, 3] and bidir.pooler.layer_reduction() == "mean_no_sink"
    assert models("multilayer", "bidirectional", layer_pooling="mean").pooler.layer_reduction() == "mean"
    assert tuple(bidir.pooler.layer_embedding.shape) == (2, 32)
    assert normalise_layers(None, 4) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="out of range"):
        normalise_layers([0], 4)
    with pytest.raises(ValueError, match="out of range"):
        normalise_layers([5], 4)


def test_multilayer_vectors_match_hidden_states(models):
    """The hooked per-layer vectors equal those read from output_hidden_states."""
    model = models("multilayer", "causal")
    texts = ["alpha beta", "the quick brown fox jumps"]
    layers = model.encode_layers(texts)
    batch = model.tokenize(texts)
    with torch.no_grad():
        out = model.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    last = batch.attention_mask.sum(1) - 1
    for i in range(2):
        for layer in range(3):
            ref = out.hidden_states[layer + 1][i, last[i]]
            torch.testing.assert_close(torch.from_numpy(layers[i, layer]), ref / ref.norm(), rtol=0, atol=1e-5)


def test_sink_free_mean_drops_each_rows_first_real_token():
    states = torch.arange(2 * 4 * 1, dtype=torch.float32).view(2, 4, 1) + 1  # row 0: 1..4, row 1: 5..8
    attention = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])  # right- and left-padded
    pool = attention.bool()
    last = torch.tensor([2, 3])
    got = reduce_states(states, attention, pool, last, "mean_no_sink")
    assert got.squeeze(1).tolist() == [2.5, 8.0]  # mean of 2,3 and of 8 alone
    # instruction tokens excluded from pooling: the sink is still the sequence's first token, not the first pooled
    pool_no_instruction = torch.tensor([[False, True, True, False], [False, False, True, True]])
    assert reduce_states(states, attention, pool_no_instruction, last, "mean_no_sink").squeeze(1).tolist() == [2.5, 8.0]
    # a one-token text keeps its only token
    single = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]])
    assert reduce_states(states, single, single.bool(), torch.tensor([0, 3]), "mean_no_sink").squeeze(1).tolist() == [
        1.0,
        8.0,
    ]
    with pytest.raises(ValueError, match="unknown layer reduction"):
        reduce_states(states, attention, pool, last, "max")


def test_multilayer_rms_normalises_each_layer_vector_before_the_layer_embedding():
    pooler = build_pooler("multilayer", hidden_size=8, num_layers=2, attention="causal")
    vectors = torch.randn(3, 2, 8)
    inputs = PoolInput(torch.zeros(3, 1, 8), torch.ones(3, 1), torch.ones(3, 1, dtype=torch.bool), torch.zeros(3))
    inputs.layer_vectors = vectors
    out = pooler(inputs)
    inputs.layer_vectors = vectors * torch.tensor([100.0, 0.01, 7.0]).view(3, 1, 1)  # per-text scale
    torch.testing.assert_close(pooler(inputs)[[0]], out[[0]], rtol=1e-4, atol=1e-5)
    raw = build_pooler("multilayer", hidden_size=8, num_layers=2, attention="causal", options={"layer_norm": "none"})
    assert raw.layer_norm == "none"
    with pytest.raises(ValueError, match="layer_norm"):
        build_pooler("multilayer", hidden_size=8, num_layers=2, attention="causal", options={"layer_norm": "l2"})


def test_presets_and_size_options():
    assert paper_perceiver(4096).as_dict() == {"n_latents": 768, "heads": 32, "head_dim": 2048, "mlp_ratio": 4}
    assert paper_latent(4096).as_dict() == {"n_latents": 512, "heads": 8, "head_dim": 4096, "mlp_ratio": 4}
    assert compact(576).head_dim == 72
    size = resolve_size("perceiver", 64, {"preset": "paper", "heads": 2})
    assert size.heads == 2 and size.head_dim == 32
    with pytest.raises(ValueError, match="unknown head preset"):
        resolve_size("perceiver", 64, {"preset": "huge"})
    with pytest.raises(ValueError, match="positive integer"):
        resolve_size("perceiver", 64, {"heads": 0})


def test_unknown_pooling_and_options_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown pooling 'max'.*eos"):
        build_pooler("max", hidden_size=8, num_layers=2, attention="causal")
    with pytest.raises(ValueError, match="takes no options"):
        build_pooler("eos", hidden_size=8, num_layers=2, attention="causal", options={"heads": 2})
    with pytest.raises(ValueError, match=r"bad options|takes no options"):
        build_pooler("trainable", hidden_size=8, num_layers=2, attention="causal", options={"bogus": 1})


def test_paper_preset_head_parameter_count():
    pooler = build_pooler("trainable", hidden_size=64, num_layers=2, attention="causal", options={"preset": "paper"})
    n = sum(p.numel() for p in pooler.parameters())
    inner = 32 * 32
    expected_attn = 64 * inner * 4  # q, k, v, out without bias
    assert n > expected_attn


@pytest.mark.parametrize("name", ["trainable", "multilayer"])
def test_latent_init_follows_the_preset(name):
    def build(name, **options):
        return build_pooler(name, hidden_size=64, num_layers=4, attention="bidirectional", options=options)

    torch.manual_seed(0)
    compact = build(name)
    paper = build(name, preset="paper")
    chosen = build(name, preset="paper", latent_init="small")
    assert compact.latents.std().item() == pytest.approx(0.02, rel=0.2)
    assert paper.latents.std().item() == pytest.approx(1.0, rel=0.2)
    assert chosen.latents.std().item() == pytest.approx(0.02, rel=0.2)
    with pytest.raises(ValueError, match="latent_init"):
        build(name, latent_init="huge")
