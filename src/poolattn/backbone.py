"""Load a Hugging Face decoder and run it causally or bidirectionally.

Bidirectional attention removes the causal mask in every decoder layer and keeps the padding mask. Eager and
SDPA backends receive an explicit additive 4D mask built from the padding mask (transformers hands a 4D mask
to every layer as-is, so no model code is patched); flash-attention ignores such masks, so there the attention
modules' ``is_causal`` flag is cleared instead. The probe tests prove both paths for every supported family.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers import logging as hf_logging
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from . import hub, short_attention

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


def check_source(name_or_path: str | Path) -> None:
    """Fail at once, before anything loads, on a model that cannot be opened: a folder that does not exist (a
    path is a hub id only when shaped like one and not inside an existing folder), a damaged weights file, or a hub
    id that is neither cached nor reachable."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        check_weight_files(path)
        return
    if path.exists():
        raise BackboneError(f"{text} is a file, not a model folder")
    if not hub.looks_like_repo_id(text) or ("/" in text and Path(text.split("/")[0]).is_dir()):
        raise BackboneError(f"model folder {text} not found")
    if reason := hub.why_unavailable(text):
        raise BackboneError(f"model folder {text} not found (and as a hub model id, {reason})")


def check_weight_files(folder: Path) -> None:
    """Refuse a folder holding a truncated or damaged ``.safetensors`` file, naming it (only headers are read)."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(folder.rglob("*.safetensors")):
        try:
            with safe_open(str(path), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise BackboneError(f"{path}: damaged or truncated weights file ({err})") from None


def check_decoder(config, source: str | Path) -> None:
    """Refuse encoder-decoder models (T5, BART...): poolattn embeds with a decoder-only LLM."""
    if getattr(config, "is_encoder_decoder", False):
        raise BackboneError(
            f"{source} is a {config.model_type} encoder-decoder model; poolattn needs a decoder-only LLM "
            f"(families: {', '.join(SUPPORTED_FAMILIES)})"
        )


def ships_code(folder: str | Path) -> bool:
    """Whether a local model or tokenizer folder names Python code of its own (``auto_map`` in its config files)."""
    import json

    for name in ("config.json", "tokenizer_config.json"):
        try:
            if "auto_map" in json.loads((Path(folder) / name).read_text(encoding="utf-8")):
                return True
        except (OSError, ValueError, TypeError):
            continue
    return False


def remote_code_refused(what: str) -> str:
    """Why a model that ships its own code was not loaded, and the one way to allow it."""
    return (
        f"{what} ships Python code that would run on loading it; refused. Pass --trust-remote-code "
        "(trust_remote_code=True in Python) only if you trust its source"
    )


def refuse_remote_code(what: str, *folders: Path, declared: bool = False, trusted: bool = False) -> None:
    """Raise :class:`BackboneError` unless ``trusted`` when the model is ``declared`` to need its own code or one
    of ``folders`` ships some. Only the caller's ``trusted`` allows code: nothing read from a folder does."""
    if not trusted and (declared or any(ships_code(folder) for folder in folders)):
        raise BackboneError(remote_code_refused(what))


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
    causal_lm: bool = False,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """Load a decoder without its LM head (``causal_lm``: with it) from a hub id or a local folder;
    ``num_layers``: only its first N decoder layers (the others are not even read), then its final norm.

    A folder holding a LoRA adapter (``adapter_config.json``, no ``config.json``; as ``poolattn adapt`` writes with
    ``merge = false``) loads its base (``base_model_name_or_path``, relative to the folder when it names a
    subfolder) and folds the adapter in.
    """
    check_source(name_or_path)
    path = Path(name_or_path)
    looks_local = path.is_absolute() or str(name_or_path).startswith((".", "~")) or path.exists()
    folder = path.expanduser()
    if looks_local and (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        return load_adapter_folder(folder, dtype, attn_implementation, trust_remote_code, causal_lm, num_layers)
    if looks_local and not (folder / "config.json").is_file():
        raise BackboneError(f"model folder {path} not found or has no config.json")
    if looks_local:
        refuse_remote_code(str(path), folder, trusted=trust_remote_code)
    torch_dtype = resolve_dtype(dtype)
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
        check_decoder(config, name_or_path)
        if num_layers is not None:
            cut_layers(config, num_layers, name_or_path)
        implementation = attn_implementation or default_attn_implementation()
        if implementation in ("sdpa", short_attention.NAME) and not sdpa_supported(config):
            implementation = "eager"
        with quiet_load_report(num_layers is not None):  # the layers left out are "unexpected" weights
            model, info = (AutoModelForCausalLM if causal_lm else AutoModel).from_pretrained(
                str(name_or_path),
                config=config,
                dtype=torch_dtype,
                attn_implementation=implementation,
                trust_remote_code=trust_remote_code,
                output_loading_info=True,
            )
    except OSError as err:
        raise BackboneError(f"cannot load backbone {name_or_path!r}: {err}") from err
    except ValueError as err:  # transformers refuses a hub repository whose code it was not allowed to run
        if "trust_remote_code" in str(err):
            raise BackboneError(remote_code_refused(repr(str(name_or_path)))) from None
        raise
    if causal_lm and info["missing_keys"]:  # e.g. a folder saved without its (untied) LM head
        missing = sorted(info["missing_keys"])
        raise BackboneError(f"{name_or_path} lacks the causal LM's weights {missing[:3]}; it cannot predict tokens")
    model.eval()
    return model


#: The file that marks a folder as a PEFT adapter.
ADAPTER_CONFIG = "adapter_config.json"
#: The deprecation notice transformers gives when PEFT reads ``is_gradient_checkpointing`` while wrapping a model.
PEFT_NOTICE = r"`is_gradient_checkpointing` is deprecated"


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide :data:`PEFT_NOTICE` (and only it) while PEFT wraps a model: a library's call, not the user's to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PEFT_NOTICE, category=FutureWarning)
        yield


def add_lora_adapter(
    model: nn.Module,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: str | list[str],
    top_layers: int | None = None,
) -> nn.Module:
    """``model`` wrapped with a new PEFT LoRA adapter (no bias); ``top_layers``: only the last N decoder layers."""
    from peft import LoraConfig, get_peft_model

    if top_layers is not None:
        target_modules = top_layer_modules(model, top_layers, target_modules)
    lora = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        bias="none",
    )
    with quiet_peft():
        return get_peft_model(model, lora)


def top_layer_modules(model: nn.Module, top_layers: int, target_modules: str | list[str]) -> list[str]:
    """Full names of the Linear modules (all, or those named in ``target_modules``) of the last ``top_layers``
    decoder layers, as peft matches them."""
    layers = decoder_layers(model)
    n = len(layers)
    if not 1 <= top_layers <= n:
        raise ValueError(f"lora.top_layers = {top_layers}: the backbone has {n} decoder layers")
    prefix = next(name for name, module in model.named_modules() if module is layers)
    wanted = (
        None
        if target_modules == "all-linear"
        else {target_modules}
        if isinstance(target_modules, str)
        else set(target_modules)
    )
    return [
        f"{prefix}.{i}.{name}"
        for i in range(n - top_layers, n)
        for name, module in layers[i].named_modules()
        if isinstance(module, nn.Linear) and (wanted is None or name.rsplit(".", 1)[-1] in wanted)
    ]


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """``model`` with the PEFT adapter saved in ``folder``, in eval mode."""
    from peft import PeftModel

    with quiet_peft():
        return PeftModel.from_pretrained(model, str(folder)).eval()


def adapter_base(folder: Path) -> str:
    """The base model an adapter folder was trained on: a subfolder of it, a local folder or a hub id."""
    import json

    try:
        base = json.loads((folder / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BackboneError(f"{folder / ADAPTER_CONFIG}: no readable base_model_name_or_path ({err})") from None
    return str((folder / base).resolve()) if base and (folder / base).is_dir() else str(base)


def load_adapter_folder(
    folder: Path,
    dtype: str | torch.dtype,
    attn_implementation: str | None,
    trust_remote_code: bool,
    causal_lm: bool,
    num_layers: int | None = None,
) -> PreTrainedModel:
    """The base of an adapter folder with the adapter folded into its weights (the adapter of layers past
    ``num_layers`` is left out with them)."""
    base = load_backbone(
        adapter_base(folder),
        dtype=dtype,
        attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
        causal_lm=causal_lm,
        num_layers=num_layers,
    )
    # the adapter was trained on the decoder without its head: attach it there
    inner = base.base_model if causal_lm else base
    merged = load_adapter(inner, folder).merge_and_unload()
    if causal_lm:
        setattr(base, base.base_model_prefix, merged)
        return base.eval()
    return merged.eval()


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


@contextmanager
def quiet_load_report(quiet: bool) -> Iterator[None]:
    """transformers' loading report at error level only, for the block (when ``quiet``)."""
    if not quiet:
        yield
        return
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def cut_layers(config: PretrainedConfig, num_layers: int, source: str | Path) -> None:
    """Keep the first ``num_layers`` decoder layers of ``config`` (and their per-layer settings)."""
    total = int(config.num_hidden_layers)
    if not 1 <= num_layers <= total:
        raise BackboneError(f"num_layers = {num_layers}: {source} has {total} decoder layers (use 1..{total})")
    config.num_hidden_layers = num_layers
    for key in ("layer_types", "sliding_window_pattern_list"):
        value = getattr(config, key, None)
        if isinstance(value, list) and len(value) == total:
            setattr(config, key, value[:num_layers])


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


def bf16_is_faster() -> bool:
    """Whether bfloat16 autocast runs faster than float32 here: on a CUDA device that supports it, or on a CPU
    whose measured bfloat16 matmuls beat float32 ones (:func:`poolattn.machine.bf16_pays`; a flag alone does
    not tell: ``avx512_bf16`` without AMX often computes no faster)."""
    from .machine import bf16_pays

    return bf16_pays("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = ("auto", "fp32", "bf16", "int8")
INT8_CPU_ONLY = "precision int8 runs on a CPU only; on a GPU use bf16 (or fp32)"


def resolve_precision(value: str, bf16: str = "bf16", other: str = "fp32") -> str:
    """``auto`` -> ``bf16`` where :func:`bf16_is_faster`, else ``other``; explicit values pass through (``int8``:
    never chosen by ``auto``, whose embeddings stay within 0.999 of float32's)."""
    if value != "auto":
        return value
    return bf16 if bf16_is_faster() else other


@contextmanager
def autocast_precision(precision: str, device: torch.device | str) -> Iterator[None]:
    """bfloat16 autocast for ``precision == "bf16"``: float32 weights, residual stream and norms, bfloat16
    matmuls (cosine to float32 embeddings >= 0.999, where bfloat16 weights give ~0.998); else nothing. ``int8``
    computes in the model's int8 copy (:meth:`poolattn.model.EmbeddingModel.int8`), on a CPU only."""
    if precision == "int8" and torch.device(device).type != "cpu":
        raise BackboneError(INT8_CPU_ONLY)
    if resolve_precision(precision) == "bf16":
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            yield
    else:
        yield
