"""``poolattn_sdpa``: transformers' SDPA attention, with plain batched matmuls for short sequences on a CPU.

On a CPU, SDPA's flash kernel pays a fixed cost per (text, head) that dominates at a few dozen tokens (SmolLM2's
9 heads, 36 questions of 13 tokens, bf16, one thread: 1.8 ms a layer against 1.3 ms for matmuls, 0.7 ms for
compiled matmuls). Sequences of at most :data:`MAX_MATMUL_KEYS` keys in bf16 / fp16 on a CPU (the fast encode
path, bf16 autocast) take the matmul path: grouped queries against their key/value head (no copies of the keys),
scores and softmax in float32, the same masks as SDPA (boolean, additive, or none with a causal flag).
Everything else goes to transformers' SDPA function unchanged: longer sequences, other devices, dropout in
training, position biases, soft-capping, and float32, which keeps SDPA's numerics (on the real SmolLM2, a text
alone vs in a padded batch, bidirectional: SDPA stayed within 1e-5, matmuls once reached 1.06e-5).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "poolattn_sdpa"
#: The longest key sequence that takes the matmul path (measured crossover on a CPU: 32 to 64 keys).
MAX_MATMUL_KEYS = 32


def takes_matmul_path(query: torch.Tensor, key: torch.Tensor, module: nn.Module, dropout: float, **kwargs) -> bool:
    """Whether a call runs as matmuls here rather than through SDPA."""
    return (
        query.device.type == "cpu"
        and compute_dtype(query) in (torch.bfloat16, torch.float16)
        and key.shape[2] <= MAX_MATMUL_KEYS
        and not (dropout and module.training)
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
    )


def compute_dtype(query: torch.Tensor) -> torch.dtype:
    """The dtype attention's matmuls run in: autocast's where it is on (queries are float32 after RoPE there)."""
    device = query.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype


def allowed_keys(
    attention_mask: torch.Tensor | None, causal: bool, q_length: int, kv_length: int, device: torch.device
) -> torch.Tensor | None:
    """A boolean (…, q, k) mask of the keys each query sees, or None when it sees them all."""
    if attention_mask is not None:
        return attention_mask[..., :kv_length]
    if causal and q_length > 1:
        return torch.ones(q_length, kv_length, dtype=torch.bool, device=device).tril()  # SDPA's is_causal alignment
    return None


def matmul_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """Attention of (B, H, q, D) queries over (B, KV, k, D) keys and values; returns (B, q, H, D).

    ``mask`` is boolean (True: visible) or additive, broadcastable to (B, 1 or H, q, k). Each group of H / KV query
    heads is stacked along the sequence axis and meets its own key/value head in one matmul.
    """
    batch, heads, q_length, dim = query.shape
    kv_heads, kv_length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scores = query.reshape(batch, kv_heads, groups * q_length, dim) @ key.transpose(-1, -2)
    scores = scores.view(batch, kv_heads, groups, q_length, kv_length).float() * scaling
    if mask is not None:
        if mask.dim() == 4 and mask.shape[1] == heads > 1:  # one mask per head
            mask = mask.view(mask.shape[0], kv_heads, groups, q_length, kv_length)
        elif mask.dim() == 4:
            mask = mask.unsqueeze(2)
        # boolean: True is visible; a row that sees nothing stays finite (such rows are padding, never read)
        lowest = torch.finfo(scores.dtype).min
        scores = scores.masked_fill(~mask, lowest) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(-1).to(value.dtype).view(batch, kv_heads, groups * q_length, kv_length)
    out = (weights @ value).view(batch, heads, q_length, value.shape[-1])
    return out.transpose(1, 2).contiguous()


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: matmuls for short CPU sequences, SDPA otherwise."""
    if not takes_matmul_path(query, key, module, dropout, **kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = allowed_keys(attention_mask, causal, query.shape[2], key.shape[2], query.device)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return matmul_attention(query, key, value, mask, scale), None


AttentionInterface.register(NAME, attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same masks as SDPA
