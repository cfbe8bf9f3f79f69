"""int8 CPU inference: the backbone's linear layers as int8 weights times int8 activations.

Each ``nn.Linear`` (and GPT-2's ``Conv1D``) of the backbone becomes an :class:`Int8Linear`: weights quantised
per output channel, activations per token at run time, products accumulated exactly in int32
(``torch._int_mm``, VNNI on CPUs that have it), then rescaled to float32. Decoder LLMs carry a few activation
channels tens of times larger than the rest; quantised as they are, they leave every other channel a handful of
levels (SmolLM2: cosine to float32 down to 0.98). So the layers are smoothed first, as in SmoothQuant: each input
channel ``j`` is divided by ``s_j = max|x_j|^0.5 / max|W_j|^0.5`` and its weight column multiplied by it (the
product is unchanged), with the activation maxima measured once on :data:`CALIBRATION_TEXTS` in float32; and
the few channels of largest activations (:data:`OUTLIER_FRACTION`) skip int8 and are multiplied in float32.

torch's own ``quantize_dynamic`` quantises a whole batch's activations with one scale: the attention sink's
massive activations then drown every other token (SmolLM2: cosine 0.21), and a text's vector depends on the
texts batched with it. Per-token scales and exact integer sums keep every text's vector independent of its
batch and padding, as in float32. Embeddings, norms, attention and the pooling heads stay float32, and so does
the first decoder layer's MLP (:data:`FLOAT32_MLP_LAYERS`): it makes the massive activations that the later layers
carry, from a token's own embedding, so a token the calibration texts never held can spike a channel that they
did not mark (SmolLM2 cut to 12 layers, trained designs, 512 TREC questions: worst cosine 0.971-0.991 -> 0.995-0.999
for one twelfth of the layers' MLP products in float32).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from .backbone import INT8_CPU_ONLY, BackboneError, decoder_layers

if TYPE_CHECKING:
    from .model import EmbeddingModel

#: SmoothQuant's migration strength: half of each channel's range moves from the activations into the weights.
SMOOTHING_ALPHA = 0.5
#: The share of each layer's input channels, those of largest activations, computed in float32 (LLM.int8's
#: decomposition: SmolLM2's worst cosine 0.9896 -> 0.997 with 4 of 576, for about 1% of a float32 product).
OUTLIER_FRACTION = 1 / 64
#: How many decoder layers, from the first, keep their MLP in float32.
FLOAT32_MLP_LAYERS = 1
#: Texts whose activations set the smoothing: questions, instructions, prose, a list, code and numbers.
CALIBRATION_TEXTS = (
    "what is the capital of France?",
    "How do I reset my password?",
    "Instruct: Given a question, retrieve passages that answer it\nQuery: why is the sky blue?",
    "Instruct: Classify the sentiment of the review\nQuery: a tedious, overlong film with one good scene.",
    "The committee approved the budget on Tuesday after a long debate about school funding and road repairs.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside the chloroplasts of "
    "plant cells; the sugar feeds the plant and the oxygen is released into the air.",
    "Shopping list: eggs, milk, two loaves of bread, apples, coffee, and batteries for the remote.",
    "def mean(xs):\n    return sum(xs) / len(xs)  # raises ZeroDivisionError on an empty list",
    "The 2019 report lists 3,482 cases, up 12.5% from 3,095 in 2018; see table 4 (p. 17).",
    "FREE entry! Text WIN to 80086 now to claim your prize. T&Cs apply.",
    "She said she would call back later, but the phone never rang that evening.",
    "Rain is expected across the north tomorrow, with strong winds along the coast and snow on high ground. "
    "Temperatures will stay below average for the rest of the week, before a milder spell arrives from the west "
    "on Sunday. Drivers are advised to allow extra time for journeys and to check for closures before leaving.",
    "ok",
    "",
)


class Int8Linear(nn.Module):
    """``x @ W.T + b`` in int8 for all input channels but ``outliers``: those in float32, the others smoothed
    (divided by ``smooth``, their weight columns multiplied by it), ``W`` quantised per output channel and ``x`` per
    token, summed exactly in int32. float32 in and out."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        smooth: torch.Tensor | None = None,
        outliers: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        weight = weight.detach().float()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        outliers = torch.zeros(0, dtype=torch.long) if outliers is None else outliers.long()
        inliers = torch.ones(self.in_features, dtype=torch.bool)
        inliers[outliers] = False
        inliers = inliers.nonzero().flatten()
        quantised = weight[:, inliers] * (1 if smooth is None else smooth[inliers])
        scale = quantised.abs().amax(dim=1).clamp(min=1e-12) / 127
        self.register_buffer("qweight", (quantised / scale[:, None]).round().clamp(-127, 127).to(torch.int8).t())
        self.register_buffer("weight_scale", scale)
        self.register_buffer("inv_smooth", None if smooth is None else (1 / smooth[inliers]).float())
        self.register_buffer("inliers", inliers if len(outliers) else None)
        self.register_buffer("outliers", outliers if len(outliers) else None)
        self.register_buffer("outlier_weight", weight[:, outliers].t().contiguous() if len(outliers) else None)
        self.register_buffer("bias", None if bias is None else bias.detach().float())

    @classmethod
    def of(cls, layer: nn.Module, maxima: torch.Tensor | None = None) -> Int8Linear:
        """The int8 twin of an ``nn.Linear`` or a GPT-2 ``Conv1D`` (whose weight is stored transposed), smoothed
        and with its :data:`OUTLIER_FRACTION` largest input channels kept in float32 when the per-channel input
        ``maxima`` are given."""
        weight = (layer.weight if isinstance(layer, nn.Linear) else layer.weight.t()).detach().float()
        if maxima is None:
            return cls(weight, layer.bias)
        outliers = maxima.topk(max(1, int(len(maxima) * OUTLIER_FRACTION))).indices.sort().values
        return cls(weight, layer.bias, smoothing(weight, maxima), outliers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        exact = None
        if self.outliers is not None:
            exact = rows.index_select(1, self.outliers) @ self.outlier_weight
            rows = rows.index_select(1, self.inliers)
        if self.inv_smooth is not None:
            rows = rows * self.inv_smooth
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
        quantised = torch.round(rows / scale).clamp_(-127, 127).to(torch.int8)
        out = torch._int_mm(quantised, self.qweight).float().mul_(scale).mul_(self.weight_scale)
        if exact is not None:
            out += exact
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kept = 0 if self.outliers is None else len(self.outliers)
        return f"in_features={self.in_features}, out_features={self.out_features}, float32_channels={kept}"


def linear_layers(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) of every ``nn.Linear`` and ``Conv1D`` under ``module``."""
    from transformers.pytorch_utils import Conv1D

    return [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear | Conv1D)
    ]


def activation_maxima(
    model: EmbeddingModel, texts: tuple[str, ...] = CALIBRATION_TEXTS
) -> dict[nn.Module, torch.Tensor]:
    """Each backbone linear layer's largest input magnitude per channel over ``texts``, in float32, one text at a
    time (no padding)."""
    maxima: dict[nn.Module, torch.Tensor] = {}

    def record(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen = args[0].detach().float().abs().reshape(-1, args[0].shape[-1]).amax(dim=0)
        maxima[layer] = torch.maximum(maxima[layer], seen) if layer in maxima else seen

    handles = [layer.register_forward_pre_hook(record) for _, _, layer in linear_layers(model.backbone)]
    try:
        with torch.autocast("cpu", enabled=False):
            model.encode(list(texts), batch_tokens=1, workers=1, show_progress=False)
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def smoothing(weight: torch.Tensor, activation_max: torch.Tensor, alpha: float = SMOOTHING_ALPHA) -> torch.Tensor:
    """SmoothQuant's per-input-channel divisors ``max|x|^alpha / max|W|^(1 - alpha)`` of a (out, in) weight."""
    weight_max = weight.abs().amax(dim=0).clamp(min=1e-5)
    return (activation_max.clamp(min=1e-5) ** alpha / weight_max ** (1 - alpha)).clamp(min=1e-5)


def quantize_backbone(model: EmbeddingModel) -> None:
    """Replace, in place, every linear layer of ``model``'s float32 CPU backbone with its smoothed
    :class:`Int8Linear`, but those of the first :data:`FLOAT32_MLP_LAYERS` layers' MLPs (``model`` is a copy: see
    :func:`int8_copy`)."""
    maxima = activation_maxima(model)
    kept = {
        id(layer)
        for block in decoder_layers(model.backbone)[:FLOAT32_MLP_LAYERS]
        for *_, layer in linear_layers(block.mlp)
    }
    for parent, name, layer in linear_layers(model.backbone):
        if id(layer) not in kept:
            setattr(parent, name, Int8Linear.of(layer, maxima.get(layer)))


def is_int8(model: EmbeddingModel) -> bool:
    """Whether ``model``'s backbone computes with int8 linear layers (:func:`int8_copy`)."""
    return any(isinstance(module, Int8Linear) for module in model.backbone.modules())


def int8_copy(model: EmbeddingModel) -> EmbeddingModel:
    """A copy of ``model`` for int8 CPU inference: LoRA merged, float32, the backbone's linear layers int8, the
    pooling head as it was; ``model`` is left untouched. Cosine to float32 >= 0.99 on trained designs."""
    if model.device.type != "cpu":
        raise BackboneError(INT8_CPU_ONLY)
    if is_int8(model):
        return model
    backbone = copy.deepcopy(model.backbone).float()
    if hasattr(backbone, "peft_config"):
        backbone = backbone.merge_and_unload()
    with torch.random.fork_rng(devices=[]):  # the head is replaced by a copy of the model's
        quantised = type(model)(model.config, backbone, model.tokenizer)
    quantised.pooler = copy.deepcopy(model.pooler).float()
    quantised.trust_remote_code = model.trust_remote_code
    for name in ("backbone_trained", "folder"):
        if hasattr(model, name):
            setattr(quantised, name, getattr(model, name))
    quantize_backbone(quantised.eval())
    quantised.quantized = True  # EmbeddingModel.save refuses it
    return quantised


def for_precision(model: EmbeddingModel, precision: str) -> EmbeddingModel:
    """``model`` as ``precision`` computes with it: an int8 copy (:func:`int8_copy`) for ``int8``,
    else itself (autocast does the rest: :func:`~poolattn.backbone.autocast_precision`)."""
    return int8_copy(model) if precision == "int8" else model
