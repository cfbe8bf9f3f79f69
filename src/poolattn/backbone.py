"""Load a Hugging Face decoder and run it causally or bidirectionally.

Bidirectional attention removes the causal mask in every decoder layer and keeps the padding mask. Eager and
SDPA backends receive an explicit additive 4D mask built from the padding mask (transformers hands a 4D mask
to every layer as-is, so no model code is patched); flash-attention ignores such masks, so there the attention
modules' ``is_causal`` flag is cleared instead. The probe tests prove both paths for every supported family.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel
from transformers import logging as hf_logging
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from . import short_attention

Attention = Literal["causal", "bidirectional"]
ATTENTION_MODES: tuple[str, ...] = ("causal", "bidirectional")

#: Families whose bidirectional mode is proven by the probe tests.
SUPPORTED_FAMILIES: tuple[str, ...] = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gpt2",
    "phi3",
)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class BackboneError(ValueError):
    """A backbone that cannot be loaded or switched as asked."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name to a torch dtype, with a clear error for unknown names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise BackboneError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def check_attention(attention: str, model_type: str) -> None:
    """Refuse unknown modes, and bidirectional attention for families the probe has not proven."""
    if attention not in ATTENTION_MODES:
        raise BackboneError(f"unknown attention {attention!r}; choose one of {list(ATTENTION_MODES)}")
    if attention == "bidirectional" and model_type not in SUPPORTED_FAMILIES:
        raise BackboneError(
            f"bidirectional attention is not supported for model family {model_type!r}; "
            f"supported families: {', '.join(SUPPORTED_FAMILIES)}"
        )


def load_backbone(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a decoder without its LM head from a hub id or a local folder."""
    path = Path(name_or_path)
    looks_local = path.is_absolute() or str(name_or_path).startswith((".", "~")) or path.exists()
    if looks_local and not (path.expanduser() / "config.json").is_file():
        raise BackboneError(f"model folder {path} not found or has no config.json")
    torch_dtype = resolve_dtype(dtype)
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        implementation = attn_implementation or default_attn_implementation()
        if implementation in ("sdpa", short_attention.NAME) and not sdpa_supported(config):
            implementation = "eager"
        model = AutoModel.from_pretrained(
            str(name_or_path),
            config=config,
            dtype=torch_dtype,
            attn_implementation=implementation,
            trust_remote_code=trust_remote_code,
        )
    except OSError as err:
        raise BackboneError(f"cannot load backbone {name_or_path!r}: {err}") from err
    model.eval()
    return model


def sdpa_supported(config) -> bool:
    """Whether transformers has an SDPA kernel for this family (Gemma-2 has none)."""
    model_class = MODEL_MAPPING.get(type(config), None)
    return bool(getattr(model_class, "_supports_sdpa", True))


def default_attn_implementation() -> str:
    """Flash-attention when installed with a GPU, else SDPA (with matmuls for short sequences on a CPU)."""
    try:
        import flash_attn  # noqa: F401

        if torch.cuda.is_available():
            return "flash_attention_2"
    except ImportError:
        pass
    return short_attention.NAME


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of any supported family (found by size, so PEFT wrapping is fine)."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise BackboneError(f"cannot find the {n_layers} decoder layers of {type(model).__name__}")


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Modules carrying the ``is_causal`` flag that flash-attention and SDPA fast paths read."""
    return [m for m in model.modules() if m is not model and isinstance(getattr(m, "is_causal", None), bool)]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so left and right padding give the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, T, T) mask: every real token sees every real token; pad rows see only themselves."""
    keys = attention_mask.bool()[:, None, None, :]
    eye = torch.eye(attention_mask.shape[-1], dtype=torch.bool, device=attention_mask.device)
    allowed = keys | eye
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)


def attention_inputs(
    model: nn.Module, attention_mask: torch.Tensor, attention: Attention, dtype: torch.dtype
) -> torch.Tensor:
    """The mask to hand the backbone for the chosen attention mode and backend."""
    if attention == "causal" or model.config._attn_implementation.startswith("flash"):
        return attention_mask
    return bidirectional_mask(attention_mask, dtype)


@contextmanager
def attention_mode(model: nn.Module, attention: Attention) -> Iterator[None]:
    """Run the backbone with the attention modules' causal flag matching ``attention``."""
    modules = attention_modules(model)
    saved = [m.is_causal for m in modules]
    for module in modules:
        module.is_causal = attention == "causal"
    try:
        yield
    finally:
        for module, flag in zip(modules, saved, strict=True):
            module.is_causal = flag


def run_backbone(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    attention: Attention,
) -> torch.Tensor:
    """One forward pass; returns the last layer's (final-normed) token states (B, T, H)."""
    dtype = next(model.parameters()).dtype
    mask = attention_inputs(model, attention_mask, attention, dtype)
    with attention_mode(model, attention):
        out = model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(attention_mask),
            use_cache=False,
        )
    return out.last_hidden_state


def native_bf16() -> bool:
    """Whether this machine computes bfloat16 natively: a CUDA device that supports it, or a CPU with AVX512-BF16
    or AMX-BF16 (elsewhere bfloat16 is emulated and slower than float32)."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = next(
            (line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), ""
        ).split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(value: str, bf16: str = "bf16", other: str = "fp32") -> str:
    """``auto`` -> ``bf16`` where :func:`native_bf16`, else ``other``; explicit values pass through."""
    if value != "auto":
        return value
    return bf16 if native_bf16() else other


@contextmanager
def autocast_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """bfloat16 autocast for ``precision == "bf16"``: float32 weights, residual stream and norms, bfloat16
    matmuls (cosine to float32 embeddings >= 0.999, where bfloat16 weights give ~0.998); else nothing."""
    if resolve_precision(precision) == "bf16":
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield
