"""Pieces the benchmarks share: the sentence-transformers peer, the FLOP count of a token, a warmed-up timer and the
cosine a faster variant must keep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn
from torch.profiler import ProfilerActivity, profile


def lasttoken_sentence_transformer(
    path: str,
    max_length: int,
    *,
    device: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    backend: str = "torch",
):
    """sentence-transformers' ``Transformer`` + ``Pooling("lasttoken")`` over ``path``, at its defaults except
    that the text modality is pinned to plain text (by default it would render each text through the model's
    chat template, about three times the tokens of a short question); ``backend``: torch, onnx or openvino."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    kwargs = {"max_seq_length": max_length, "model_kwargs": model_kwargs or {}, "backend": backend}
    text_only = {k: v for k, v in Transformer(path, **kwargs).modality_config.items() if k == "text"}
    transformer = Transformer(path, **kwargs, modality_config=text_only, module_output_name="token_embeddings")
    if transformer.tokenizer.pad_token is None:
        transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
    pooling = Pooling(transformer.get_embedding_dimension(), "lasttoken")
    return SentenceTransformer(modules=[transformer, pooling], device=device).eval()


def flops_per_token(backbone: nn.Module, mean_length: float = 0.0, factor: int = 2) -> float:
    """``factor`` x (non-embedding parameters + attention's 2 x layers x hidden x ``mean_length``): 2 for a
    forward pass, 4 for LoRA training (no gradients of the frozen weights), 6 for full training."""
    config = backbone.config
    params = sum(p.numel() for p in backbone.parameters()) - backbone.get_input_embeddings().weight.numel()
    return factor * (params + 2 * config.num_hidden_layers * config.hidden_size * mean_length)


def peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """Peak of live tensor bytes while ``fn`` runs (the profiler's allocation events in time order)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def timed(fn: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[np.ndarray, float]:
    """``fn(texts)`` and its seconds, after a warm-up call on the first 32 texts (allocator, kernels)."""
    fn(texts[:32])
    start = time.perf_counter()
    out = fn(texts)
    return out, time.perf_counter() - start


#: The cosine to float32 (every text) a variant must keep to count as the same model.
FAITHFUL = 0.99
