"""What one design costs on an accelerator: the accelerator table, the backbone's shape, parameter counts,
memory per device and FLOPs, before anything downloads.

The backbone's shape comes from its config alone (``transformers.AutoConfig``: the cache, the hub, or a local
folder) or from a hint (``7.2B``, or ``family=mistral,hidden=4096,layers=32``); the backbone and the pooling head
are built on PyTorch's ``meta`` device, so their parameter counts are exact and no weight is read. Costs are
estimates; :mod:`poolattn.plan` prints their assumptions:

* FLOPs: ``2·N`` per token forward-only, ``6·N`` per token for a trained part (forward + backward), ``4·N`` for a
  frozen part gradients flow through (LoRA's backbone), plus the attention term ``4·L·d·T`` per token forward;
  GradCache adds one forward pass without gradients; gradient checkpointing one more forward.
* Memory per device: weights, gradients and AdamW state of the trainable parameters (float32), and the activations
  of the largest forward chunk with gradients (``mini_batch`` texts, at most ``forward_tokens`` padded tokens).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .config import ConfigError

#: Bytes per element of each weight dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Characters per token of English text, to turn MTEB's character statistics into tokens.
CHARS_PER_TOKEN = 4.0
#: What the CUDA context, cuBLAS workspaces and the allocator's fragmentation take on top, in bytes.
RUNTIME_OVERHEAD = 2.0e9
#: A hint's keys -> the transformers config keys.
HINT_KEYS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "intermediate": "intermediate_size",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "vocab": "vocab_size",
}


class PlanError(ConfigError):
    """A plan that cannot be made, or a config that cannot fit; ``key`` names the config key to change."""


@dataclass(frozen=True)
class Accelerator:
    """One accelerator: dense bf16 tensor throughput and memory."""

    name: str
    bf16_tflops: float
    memory_gb: float


ACCELERATORS = {
    a.name: a
    for a in (
        Accelerator("h100", 989.0, 80),
        Accelerator("h100-pcie", 756.0, 80),
        Accelerator("h200", 989.0, 141),
        Accelerator("b200", 2250.0, 180),
        Accelerator("a100", 312.0, 80),
        Accelerator("a100-40gb", 312.0, 40),
        Accelerator("l40s", 362.0, 48),
        Accelerator("l4", 121.0, 24),
        Accelerator("a10", 125.0, 24),
        Accelerator("rtx4090", 165.0, 24),
        Accelerator("mi300x", 1307.0, 192),
    )
}


def accelerator(name: str) -> Accelerator:
    if name.lower() not in ACCELERATORS:
        raise PlanError(f"unknown --gpu {name!r}; choose one of {', '.join(ACCELERATORS)}")
    return ACCELERATORS[name.lower()]


# ----------------------------------------------------------------------------------------------- shape
def parse_count(text: str) -> float:
    """``7.2B``, ``494M``, ``7.24e9`` -> a number."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMbBtT]?)\s*", text)
    if not match:
        raise PlanError(f"--params {text!r} is not a parameter count (7.2B, 494M, 7.24e9) or KEY=VALUE list")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()]
    return float(match.group(1)) * scale


def hinted_config(hint: str) -> Any:
    """A transformers config from ``--params``: a count (a Llama-shaped model of about that size: hidden 128 x
    layers, vocab 32,000) or ``family=mistral,hidden=4096,layers=32,...`` (a family's defaults, overridden)."""
    from transformers import AutoConfig

    if "=" not in hint:
        n = parse_count(hint)
        layers = max(1, round((n / (12 * 128**2)) ** (1 / 3)))
        hidden = max(128, round(128 * layers / 128) * 128)
        heads = max(1, hidden // 128)
        return AutoConfig.for_model(
            "llama",
            hidden_size=hidden,
            num_hidden_layers=layers,
            intermediate_size=int(round(hidden * 8 / 3 / 256) * 256),
            num_attention_heads=heads,
            num_key_value_heads=heads,
            vocab_size=32000,
        )
    values: dict[str, Any] = {}
    family = "llama"
    for item in hint.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep:
            raise PlanError(f"--params: {item!r} is not KEY=VALUE")
        if key == "family":
            family = value
        elif key in HINT_KEYS:
            if not value.isdigit():
                raise PlanError(f"--params: {key} must be a whole number, got {value!r}")
            values[HINT_KEYS[key]] = int(value)
        else:
            raise PlanError(f"--params: unknown key {key!r}; use family, {', '.join(HINT_KEYS)}")
    try:
        return AutoConfig.for_model(family, **values)
    except ValueError as err:
        raise PlanError(f"--params: {err}") from None


def backbone_config(backbone: str, hint: str | None = None) -> Any:
    """The backbone's transformers config, from the hint, the cache, the hub or a folder (never its weights)."""
    if hint:
        return hinted_config(hint)
    from transformers import AutoConfig

    from .assets import BACKBONE_ALIASES, resolve_backbone

    spec = resolve_backbone(backbone) if backbone in BACKBONE_ALIASES else backbone
    try:
        return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PlanError(
            f"cannot read the config of {backbone!r} ({first}); offline, give its shape: --params 7.2B or "
            "--params family=mistral,hidden=4096,layers=32,intermediate=14336,heads=32,kv_heads=8,vocab=32000",
            key="model.backbone",
        ) from None


def text_config(config: Any) -> Any:
    """The decoder's own config of a multimodal one (``text_config``), else ``config``."""
    return getattr(config, "text_config", None) or config


@dataclass(frozen=True)
class Shape:
    """A decoder's sizes, as the estimates need them."""

    hidden: int
    layers: int
    q_dim: int
    kv_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config: Any) -> Shape:
        c = text_config(config)
        heads = c.num_attention_heads
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
        kv = getattr(c, "num_key_value_heads", None) or heads
        inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size
        return cls(c.hidden_size, c.num_hidden_layers, heads * head_dim, kv * head_dim, inter, c.vocab_size)


def meta_backbone(config: Any) -> nn.Module:
    """The backbone built on the meta device: exact shapes, no memory, nothing read."""
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(config)


# ---------------------------------------------------------------------------------------------- counts
@dataclass
class Params:
    """Parameter counts of one design."""

    backbone: int
    embedding: int
    adapter: int
    head: int

    @property
    def matmul(self) -> int:
        """Backbone parameters that multiply every token (all but the embedding table)."""
        return self.backbone - self.embedding


def lora_linears(backbone: nn.Module, targets: str | Sequence[str], top_layers: int | None, layers: int) -> list:
    """The ``nn.Linear`` modules a LoRA adapter wraps (``all-linear`` or by name; only the top layers if set)."""
    chosen = []
    first = layers - top_layers if top_layers else 0
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if targets != "all-linear" and name.split(".")[-1] not in targets:
            continue
        index = re.search(r"\.(\d+)\.", f".{name}.")
        if top_layers and (index is None or int(index.group(1)) < first):
            continue
        chosen.append(module)
    return chosen


def meta_pooler(design: Any, hidden: int, layers: int) -> nn.Module:
    """The design's pooler on the meta device (raises ``ValueError`` for bad options, as a run would)."""
    from .pooling.registry import build_pooler

    with torch.device("meta"):
        return build_pooler(
            design.pooling, hidden_size=hidden, num_layers=layers, attention=design.attention, options=design.options
        )


def numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------------------------------- estimates
@dataclass
class CellPlan:
    """The cost of one design (trained for ``steps`` and evaluated), on one accelerator type."""

    name: str
    params: Params
    trained: bool
    memory: dict[str, float] = field(default_factory=dict)  # bytes per device: weights, gradients, optimizer, ...
    train_flops: float = 0.0
    eval_flops: float = 0.0
    #: Memory part -> (config key, advice) when a row cannot fit; parts not named fall back to the cells' keys.
    advice: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def peak_memory(self) -> float:
        return sum(self.memory.values())


@dataclass
class Workload:
    """What a run feeds the model: tokens per text (mean, and at most), texts per step, evaluation texts."""

    mean_tokens: float
    max_length: int
    texts_per_step: int
    eval_texts: list[tuple[str, int, float]]  # (task, texts, mean tokens)


def head_geometry(pooler: nn.Module, tokens: float, shape: Shape) -> tuple[float, float]:
    """(queries, context) lengths the head's cross-attention sees per text, with ``tokens`` tokens per text."""
    size = getattr(pooler, "size", None)
    if size is None:
        return 0.0, 0.0
    name = pooler.name
    if name == "latent":
        return tokens, size.n_latents
    if name == "multilayer":
        return size.n_latents, len(pooler.selected_layers())
    return size.n_latents, 1.0 if getattr(pooler, "inputs", "tokens") == "eos" else tokens


def head_forward_flops(pooler: nn.Module, tokens: float, shape: Shape) -> float:
    """Forward FLOPs of the head for one text."""
    size = getattr(pooler, "size", None)
    if size is None:
        return 0.0
    h, inner, hid = shape.hidden, size.heads * size.head_dim, size.mlp_ratio * shape.hidden
    queries, context = head_geometry(pooler, tokens, shape)
    per_query = h * inner + inner * h + h * 2 * hid + hid * h
    return 2 * (queries * per_query + context * h * 2 * inner) + 4 * queries * context * inner


def head_activation_elements(pooler: nn.Module, tokens: float, shape: Shape) -> float:
    """Elements the head keeps for the backward pass, per text."""
    size = getattr(pooler, "size", None)
    if size is None:
        return 0.0
    h, inner, hid = shape.hidden, size.heads * size.head_dim, size.mlp_ratio * shape.hidden
    queries, context = head_geometry(pooler, tokens, shape)
    return queries * (6 * h + 3 * inner + 4 * hid) + context * (2 * h + 2 * inner)


def backbone_forward_flops(params: Params, shape: Shape, tokens: float, attention: str) -> float:
    """Forward FLOPs of the backbone for one text of ``tokens`` tokens (causal attention computes half)."""
    attn = 4 * shape.layers * shape.q_dim * tokens * tokens * (0.5 if attention == "causal" else 1.0)
    return 2 * params.matmul * tokens + attn


def layer_activation_bytes(shape: Shape, act_bytes: int, lora_inputs: int, lora_dropout: bool) -> float:
    """Bytes one decoder layer keeps per token for the backward pass: norms (with their float32 copies),
    q/k/v (before and after rotary), attention output, the gated MLP, and LoRA's dropped-out inputs."""
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.intermediate
    elements = 4 * h + 3 * q + 3 * kv + 4 * i
    lora = lora_inputs * (act_bytes + 1) if lora_dropout else 0
    return elements * act_bytes + 2 * 8 * h + lora


def plan_cell(
    name: str,
    design: Any,
    *,
    trained: bool,
    config: Any,
    recipe: Any,
    lora: Any,
    model: Any,
    workload: Workload,
    steps: int,
    gpus: int,
) -> CellPlan:
    """The cost of one design: parameters, memory per device, training and evaluation FLOPs."""
    shape = Shape.of(config)
    backbone = meta_backbone(config)
    embedding = backbone.get_input_embeddings()
    pooler = meta_pooler(design, shape.hidden, shape.layers)
    finetune = recipe.finetune if trained else "frozen"
    targets = lora_linears(backbone, lora.target_modules, lora.top_layers, shape.layers) if finetune == "lora" else []
    adapter = sum(lora.r * (m.in_features + m.out_features) for m in targets)
    params = Params(numel(backbone), numel(embedding) if embedding is not None else 0, adapter, numel(pooler))
    cell = CellPlan(name, params, trained)

    weight_bytes = DTYPE_BYTES[model.dtype]
    act_bytes = 2 if recipe.mixed_precision in ("bf16", "fp16") else weight_bytes
    trainable = params.adapter + params.head + (params.backbone if finetune == "full" else 0)
    state_bytes = 4 if finetune != "full" else weight_bytes
    cell.memory["weights"] = params.backbone * weight_bytes + (params.adapter + params.head) * 4
    if trained:
        cell.memory["gradients"] = trainable * state_bytes
        cell.memory["optimizer"] = 2 * trainable * state_bytes
        texts = recipe.mini_batch or math.ceil(workload.texts_per_step / gpus)
        chunk_tokens = min(texts * workload.max_length, recipe.forward_tokens if recipe.mini_batch else math.inf)
        texts = min(texts, max(1, chunk_tokens // 2))
        layer_inputs = sum(m.in_features for m in targets) / shape.layers
        per_layer = layer_activation_bytes(shape, act_bytes, int(layer_inputs), lora.dropout > 0)
        if finetune == "frozen":
            backbone_act = 0.0
        elif recipe.gradient_checkpointing:
            backbone_act = chunk_tokens * (shape.layers * shape.hidden * act_bytes + per_layer)
        else:
            backbone_act = chunk_tokens * shape.layers * per_layer
        head_act = texts * head_activation_elements(pooler, workload.max_length, shape) * act_bytes
        cell.memory["activations"] = backbone_act + head_act
        cell.train_flops = steps * train_step_flops(params, shape, pooler, design.attention, finetune, recipe, workload)
    cell.memory["runtime"] = RUNTIME_OVERHEAD
    per_text = [
        (n, backbone_forward_flops(params, shape, t, design.attention) + head_forward_flops(pooler, t, shape))
        for _, n, t in workload.eval_texts
    ]
    cell.eval_flops = sum(n * f for n, f in per_text)
    return cell


def train_step_flops(
    params: Params, shape: Shape, pooler: nn.Module, attention: str, finetune: str, recipe: Any, workload: Workload
) -> float:
    """FLOPs of one optimiser step over the global batch."""
    t = workload.mean_tokens
    linear = 2 * params.matmul * t
    attn = backbone_forward_flops(params, shape, t, attention) - linear
    forward = linear + attn
    backward = {"full": 2 * linear + 2 * attn, "lora": linear + 2 * attn, "frozen": 0.0}[finetune]
    backward += 6 * params.adapter * t
    recompute = forward if recipe.gradient_checkpointing and finetune != "frozen" else 0.0
    no_grad_pass = forward if recipe.mini_batch else 0.0
    head = head_forward_flops(pooler, t, shape) * (4 if recipe.mini_batch else 3)
    return workload.texts_per_step * (no_grad_pass + forward + backward + recompute + head)
