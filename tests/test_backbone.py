"""Probe tests: bidirectional attention is real, causal attention stays causal, for every family and backend."""

from __future__ import annotations

import pytest
import torch
from tiny import EAGER_ONLY, FAMILIES

from poolattn import short_attention
from poolattn.backbone import (
    SUPPORTED_FAMILIES,
    BackboneError,
    bidirectional_mask,
    check_attention,
    load_backbone,
    run_backbone,
)

#: Every backend a CPU runs: eager, SDPA, and poolattn's SDPA (matmuls at these short lengths).
IMPLEMENTATIONS = ("eager", "sdpa", short_attention.NAME)
CASES = [(f, impl) for f in FAMILIES for impl in IMPLEMENTATIONS if impl == "eager" or f not in EAGER_ONLY]


@pytest.fixture(scope="module")
def backbones(tiny_factory):
    cache = {}

    def get(family: str, impl: str):
        if (family, impl) not in cache:
            cache[family, impl] = load_backbone(tiny_factory(family), attn_implementation=impl)
        return cache[family, impl]

    return get


def changed_later_token(ids: torch.Tensor, j: int) -> torch.Tensor:
    other = ids.clone()
    other[:, j] = (ids[:, j] + 7) % 200 + 3
    return other


def later_token_effect(model, attention: str, device: str = "cpu") -> float:
    """How far hidden state 2 moves when token 7 changes, for one 9-token text without padding (batch size 1,
    no padding: the known silent-fallback case)."""
    torch.manual_seed(1)
    ids = torch.randint(3, 200, (1, 9), device=device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        a = run_backbone(model, ids, mask, attention).float()
        b = run_backbone(model, changed_later_token(ids, 7), mask, attention).float()
    return (a[0, 2] - b[0, 2]).abs().max().item()


@pytest.mark.parametrize(("family", "impl"), CASES)
def test_probe_bidirectional_sees_later_tokens_causal_does_not(backbones, family, impl):
    model = backbones(family, impl)
    assert later_token_effect(model, "causal") == 0.0, f"{family}/{impl}: causal state 2 changed when token 7 did"
    assert later_token_effect(model, "bidirectional") > 1e-4, f"{family}/{impl}: bidirectional state 2 ignored token 7"


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in EAGER_ONLY])
def test_probe_of_the_matmul_path_under_bf16_autocast(backbones, matmul_attention_calls, family):
    """poolattn's SDPA computes short bf16 sequences as matmuls (float32 keeps SDPA): probe that path too."""
    model = backbones(family, short_attention.NAME)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert later_token_effect(model, "causal") == 0.0, f"{family}: causal state 2 changed when token 7 did"
        assert later_token_effect(model, "bidirectional") > 1e-3, f"{family}: bidirectional state 2 ignored token 7"
    assert matmul_attention_calls[0] == 4 * model.config.num_hidden_layers  # every layer of the 4 forwards


@pytest.mark.parametrize(("family", "impl"), CASES)
def test_bidirectional_equals_explicit_all_visible_mask(backbones, family, impl):
    model = backbones(family, impl)
    torch.manual_seed(2)
    ids = torch.randint(3, 200, (2, 6))
    mask = torch.ones_like(ids)
    explicit = torch.zeros(2, 1, 6, 6)  # additive, nothing masked
    with torch.no_grad():
        ours = run_backbone(model, ids, mask, "bidirectional")
        reference = model(input_ids=ids, attention_mask=explicit, use_cache=False).last_hidden_state
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("family", "impl"), CASES)
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_padding_never_leaks(backbones, family, impl, attention):
    """Real tokens' states are the same alone, right-padded and left-padded (pads are invisible)."""
    model = backbones(family, impl)
    torch.manual_seed(3)
    ids = torch.randint(3, 200, (1, 6))
    pad = torch.full((1, 3), 0)
    ones, zeros = torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        alone = run_backbone(model, ids, ones, attention)
        right = run_backbone(model, torch.cat([ids, pad], 1), torch.cat([ones, zeros], 1), attention)[:, :6]
        left = run_backbone(model, torch.cat([pad, ids], 1), torch.cat([zeros, ones], 1), attention)[:, 3:]
    torch.testing.assert_close(right, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-5)


def test_bidirectional_mask_shape_and_pad_rows():
    mask = bidirectional_mask(torch.tensor([[1, 1, 0]]), torch.float32)
    assert mask.shape == (1, 1, 3, 3)
    assert (mask[0, 0, :2, :2] == 0).all()
    assert (mask[0, 0, :, 2][:2] < -1e30).all()  # real tokens never see the pad
    assert mask[0, 0, 2, 2] == 0  # a pad row sees itself only, so no row is fully masked


def test_unsupported_family_is_refused_by_name():
    with pytest.raises(BackboneError, match=r"'falcon'.*supported families: llama"):
        check_attention("bidirectional", "falcon")
    check_attention("causal", "falcon")  # causal attention works for any decoder
    with pytest.raises(BackboneError, match="unknown attention"):
        check_attention("sideways", "llama")
    assert "gpt2" in SUPPORTED_FAMILIES


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        load_backbone(tmp_path / "nope")


def test_attention_flags_are_restored(backbones):
    model = backbones("llama", "sdpa")
    flags = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    run_backbone(model, torch.tensor([[3, 4, 5]]), torch.ones(1, 3, dtype=torch.long), "bidirectional")
    after = [m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]
    assert flags == after and all(flags)
