"""poolattn_sdpa: the matmul path computes SDPA's attention exactly, and whole backbones agree with SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poolattn import short_attention
from poolattn.backbone import load_backbone, run_backbone


def qkv(batch=3, heads=6, kv_heads=2, length=7, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, length, heads, dim, generator=g).transpose(1, 2)  # (B, H, T, D) views, as models give
    k = torch.randn(batch, length, kv_heads, dim, generator=g).transpose(1, 2)
    v = torch.randn(batch, length, kv_heads, dim, generator=g).transpose(1, 2)
    return q, k, v


def padded_causal_mask(lengths, length):
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    keys = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return (causal[None] & keys[:, None, :])[:, None]  # (B, 1, T, T), True: visible


def sdpa(q, k, v, mask=None, is_causal=False):
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal).transpose(1, 2)


@pytest.mark.parametrize("kv_heads", [1, 2, 6])
def test_matmul_attention_equals_sdpa_under_every_mask_kind(kv_heads):
    q, k, v = qkv(kv_heads=kv_heads)
    scale = q.shape[-1] ** -0.5
    boolean = padded_causal_mask([7, 5, 2], 7)
    additive = torch.zeros(boolean.shape).masked_fill(~boolean, torch.finfo(torch.float32).min)
    per_head = boolean.expand(-1, 6, -1, -1).clone()
    per_head[:, 1, :, 0] = False  # one head masks one more key
    per_head[:, :, :, :1] |= ~per_head.any(-1, keepdim=True)  # no row fully masked (SDPA would give NaN)
    causal = torch.ones(7, 7, dtype=torch.bool).tril()
    for mask, expected in [
        (boolean, sdpa(q, k, v, boolean)),
        (additive, sdpa(q, k, v, additive)),
        (per_head, sdpa(q, k, v, per_head)),
        (causal, sdpa(q, k, v, is_causal=True)),
        (None, sdpa(q, k, v)),
    ]:
        torch.testing.assert_close(short_attention.matmul_attention(q, k, v, mask, scale), expected, rtol=0, atol=1e-6)


def test_a_fully_masked_row_stays_finite():
    q, k, v = qkv(batch=1)
    mask = torch.zeros(1, 1, 7, 7, dtype=torch.bool)
    assert torch.isfinite(short_attention.matmul_attention(q, k, v, mask, 0.3)).all()


class Module(nn.Module):
    is_causal = True
    num_key_value_groups = 3


def test_matmuls_serve_short_half_precision_cpu_calls_only():
    module = Module().eval()
    short, long = qkv(length=8), qkv(length=short_attention.MAX_MATMUL_KEYS + 1)
    q, k = short[0].bfloat16(), short[1].bfloat16()
    assert short_attention.takes_matmul_path(q, k, module, 0.0)
    assert not short_attention.takes_matmul_path(short[0], short[1], module, 0.0)  # float32 keeps SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 queries (after RoPE) under bf16 autocast
        assert short_attention.takes_matmul_path(short[0], short[1], module, 0.0)
        assert not short_attention.takes_matmul_path(long[0], long[1], module, 0.0)
    assert not short_attention.takes_matmul_path(q, k, module.train(), 0.1)  # dropout in training: SDPA
    assert not short_attention.takes_matmul_path(q, k, module.eval(), 0.0, softcap=30.0)


@pytest.mark.parametrize("causal", [True, False])
def test_without_a_mask_the_modules_causal_flag_decides(causal):
    module = Module().eval()
    module.is_causal = causal
    q, k, v = (t.bfloat16() for t in qkv(length=8))
    out, _ = short_attention.attention_forward(module, q, k, v, None)
    expected = sdpa(q.float(), k.float(), v.float(), is_causal=causal)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=2e-2)  # bf16 output (8 bits of mantissa)


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("length", [9, short_attention.MAX_MATMUL_KEYS + 7])
def test_backbones_agree_with_sdpa_under_bf16_autocast(tiny_factory, matmul_attention_calls, attention, length):
    """Whole padded batches, short (matmul path) and long (SDPA path): transformers' SDPA's states, to bf16."""
    ours = load_backbone(tiny_factory("qwen2"), attn_implementation=short_attention.NAME)
    reference = load_backbone(tiny_factory("qwen2"), attn_implementation="sdpa")
    assert ours.config._attn_implementation == short_attention.NAME
    torch.manual_seed(4)
    ids = torch.randint(3, 200, (3, length))
    mask = torch.ones_like(ids)
    mask[1, length - 3 :] = 0
    mask[2, length // 2 :] = 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = run_backbone(ours, ids, mask, attention)
        b = run_backbone(reference, ids, mask, attention)
    short = length <= short_attention.MAX_MATMUL_KEYS
    assert matmul_attention_calls[0] == (ours.config.num_hidden_layers if short else 0)
    real = mask.bool()
    torch.testing.assert_close(a[real].float(), b[real].float(), rtol=0, atol=3e-2)
