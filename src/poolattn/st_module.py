"""A sentence-transformers input module that embeds exactly as a poolattn model does, for the designs that the
library's own modules cannot express: bidirectional attention, trainable pooling heads, position-weighted means,
pooling that leaves the instruction out.

``poolattn export`` copies this file into the exported folder (as ``poolattn_module.py``); it depends on torch,
transformers, safetensors and sentence-transformers (6 or later) only, so poolattn need not be installed where the
folder is used. Loading it runs this file, hence ``SentenceTransformer(folder, trust_remote_code=True)``.

What it does, as poolattn does: a prompt is prepended to the text; the text is tokenised with the tokenizer's
special tokens, a trailing EOS is dropped, the ids are cut to ``max_length - 1`` and the EOS is appended; batches
are right-padded with positions counted over real tokens; under bidirectional attention every real token sees
every other; the pooler reads the final-normed last layer (and, for ``multilayer``, one vector per layer). The
next module (``Normalize``) L2-normalises the pooled vector.
"""

from __future__ import annotations

import json
import os
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

try:
    from sentence_transformers.base.modules import InputModule
except ImportError:  # sentence-transformers < 6
    from sentence_transformers.models import InputModule

CONFIG_NAME = "poolattn_module.json"
HEAD_WEIGHTS = "pooler.safetensors"
#: Poolers with trainable weights, and the Perceiver ones among them (latent queries over token or layer states).
HEADS = ("trainable", "multilayer", "latent")
#: Every pooling design, and the settings (with their values, ``None``: any) its ``head`` holds.
HEAD_SETTINGS: dict[str, dict[str, tuple[str, ...] | None]] = {
    "eos": {},
    "mean": {},
    "weighted_mean": {},
    "latent": {"size": None},
    "trainable": {"size": None, "inputs": ("eos", "tokens")},
    "multilayer": {
        "size": None,
        "layers": None,
        "layer_reduction": ("last", "mean", "mean_no_sink"),
        "layer_norm": ("rms", "none"),
    },
}
SIZE_KEYS = ("n_latents", "heads", "head_dim", "mlp_ratio")


def check_head(pooling: str, head: dict[str, Any]) -> None:
    """Refuse a pooling design or head setting this module does not implement (a newer poolattn's export)."""
    if pooling not in HEAD_SETTINGS:
        raise ValueError(f"unknown pooling {pooling!r}; this module implements {sorted(HEAD_SETTINGS)}")
    settings = HEAD_SETTINGS[pooling]
    if set(head) != set(settings):
        raise ValueError(f"pooling {pooling!r} takes the head settings {sorted(settings)}, got {sorted(head)}")
    for key, allowed in settings.items():
        if allowed is not None and head[key] not in allowed:
            raise ValueError(f"unknown {key} {head[key]!r} for pooling {pooling!r}; choose one of {allowed}")
    if "size" in head and set(head["size"]) != set(SIZE_KEYS):
        raise ValueError(f"head size needs exactly {SIZE_KEYS}, got {sorted(head['size'])}")


# ------------------------------------------------------------------------------------------------ pooling


def last_token(states: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor:
    """(B, T, H) -> the state at each row's final real token (B, H)."""
    return states[torch.arange(states.shape[0], device=states.device), last_index]


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the tokens where ``mask`` is true, in float32."""
    weights = mask.to(torch.float32)
    summed = torch.einsum("bth,bt->bh", states.to(torch.float32), weights)
    return summed / weights.sum(-1, keepdim=True).clamp(min=1.0)


def weighted_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The k-th pooled token weighs k (SGPT's position-weighted mean), in float32."""
    mask = mask.to(torch.float32)
    weights = mask.cumsum(-1) * mask
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1.0)
    return torch.einsum("bth,bt->bh", states.to(torch.float32), weights)


def without_sink(attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
    """``pool_mask`` minus each row's first real token, unless nothing would be left."""
    first = attention_mask.long().argmax(dim=1)
    trimmed = pool_mask.bool().clone()
    trimmed[torch.arange(pool_mask.shape[0], device=pool_mask.device), first] = False
    keep_all = trimmed.sum(dim=1) == 0
    return torch.where(keep_all[:, None], pool_mask.bool(), trimmed)


def reduce_layer(states, attention_mask, pool_mask, last_index, reduction: str) -> torch.Tensor:
    """One float32 vector per text from one layer's token states."""
    if reduction == "last":
        return last_token(states, last_index).float()
    if reduction == "mean":
        return masked_mean(states, pool_mask)
    return masked_mean(states, without_sink(attention_mask, pool_mask))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate)


class CrossAttentionBlock(nn.Module):
    """Pre-norm multi-head cross-attention and a GEGLU feed-forward, both residual; no projection biases."""

    def __init__(self, dim: int, n_latents: int, heads: int, head_dim: int, mlp_ratio: int) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm_queries = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        hidden = mlp_ratio * dim
        self.ff = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * hidden), GEGLU(), nn.Linear(hidden, dim))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, queries: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self._split(self.to_q(self.norm_queries(queries)))
        k, v = (self._split(t) for t in self.to_kv(self.norm_context(context)).chunk(2, dim=-1))
        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        b, _, n, _ = attended.shape
        x = self.to_out(attended.transpose(1, 2).reshape(b, n, -1)) + queries
        return self.ff(x) + x


class Pooler(nn.Module):
    """Every poolattn pooling design; the parameter names are poolattn's, so its saved head weights load as they
    are. ``head`` holds the resolved head settings: ``size`` (n_latents, heads, head_dim, mlp_ratio), ``inputs``
    (trainable: ``eos`` | ``tokens``), ``layers``, ``layer_reduction`` and ``layer_norm`` (multilayer)."""

    def __init__(self, pooling: str, hidden_size: int, head: dict[str, Any]) -> None:
        super().__init__()
        check_head(pooling, head)
        self.pooling, self.head = pooling, head
        if pooling in HEADS:
            size = head["size"]
            self.latents = nn.Parameter(torch.zeros(size["n_latents"], hidden_size))
            self.block = CrossAttentionBlock(hidden_size, **size)
        if pooling == "multilayer":
            self.layer_embedding = nn.Parameter(torch.zeros(len(head["layers"]), hidden_size))

    def attend(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        latents = self.latents.unsqueeze(0).expand(states.shape[0], -1, -1)
        return self.block(latents, states.to(self.latents.dtype), mask).mean(dim=1)

    def forward(self, hidden, attention_mask, pool_mask, last_index, layer_vectors=None) -> torch.Tensor:
        if self.pooling == "eos":
            return last_token(hidden, last_index).float()
        if self.pooling == "mean":
            return masked_mean(hidden, pool_mask)
        if self.pooling == "weighted_mean":
            return weighted_mean(hidden, pool_mask)
        if self.pooling == "latent":
            states = hidden.to(self.latents.dtype)
            context = self.latents.unsqueeze(0).expand(states.shape[0], -1, -1)
            return masked_mean(self.block(states, context), pool_mask)
        if self.pooling == "trainable":
            if self.head["inputs"] == "eos":
                states = last_token(hidden, last_index).unsqueeze(1)
                return self.attend(states, torch.ones(states.shape[:2], dtype=torch.bool, device=states.device))
            return self.attend(hidden, pool_mask)
        states = layer_vectors.to(self.layer_embedding.dtype)
        if self.head["layer_norm"] == "rms":
            states = states * torch.rsqrt(states.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        states = states + self.layer_embedding
        return self.attend(states, torch.ones(states.shape[:2], dtype=torch.bool, device=states.device))


# ------------------------------------------------------------------------------------------------ module


class PoolattnEmbedding(InputModule):
    """Tokeniser, decoder backbone (causal or bidirectional) and a poolattn pooler, as one input module."""

    config_file_name = CONFIG_NAME
    config_keys: ClassVar[list[str]] = ["attention", "pooling", "max_length", "pool_instruction", "head"]
    save_in_root = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        attention: str,
        pooling: str,
        max_length: int,
        pool_instruction: bool = True,
        head: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if attention not in ("causal", "bidirectional"):
            raise ValueError(f"unknown attention {attention!r}")
        self.model, self.tokenizer = model, tokenizer
        self.attention, self.pooling = attention, pooling
        self.max_length, self.pool_instruction = max_length, pool_instruction
        self.head = dict(head or {})
        self.pooler = Pooler(pooling, model.config.hidden_size, self.head)

    # -------------------------------------------------------------------- sentence-transformers' interface
    @property
    def max_seq_length(self) -> int:
        return self.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.max_length = int(value)

    def get_embedding_dimension(self) -> int:
        return self.model.config.hidden_size

    get_sentence_embedding_dimension = get_embedding_dimension

    def preprocess(self, inputs: list[str], prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Token ids, attention mask and the mask of poolable tokens (all but the prompt's when the model was
        made to pool without its instruction) of right-padded texts."""
        prompt = prompt or ""
        texts = [prompt + text for text in inputs]
        exclude = bool(prompt) and not self.pool_instruction
        enc = self.tokenizer(
            texts,
            add_special_tokens=True,
            truncation=False,
            return_offsets_mapping=exclude,
            return_attention_mask=False,
            verbose=False,
        )
        eos, limit = self.tokenizer.eos_token_id, self.max_length - 1
        rows = []
        for i, ids in enumerate(enc["input_ids"]):
            ids = ids[:-1] if ids and ids[-1] == eos else ids
            ids = ids[:limit]
            poolable = [s >= len(prompt) for s, _ in enc["offset_mapping"][i][: len(ids)]] if exclude else None
            rows.append(([*ids, eos], [*(poolable or [True] * len(ids)), True]))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        pool_mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for row, (ids, poolable) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
            pool_mask[row, : len(ids)] = torch.tensor(poolable)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pool_mask": pool_mask}

    def tokenize(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.preprocess(texts, **kwargs)

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last_index = (positions * attention_mask.long()).argmax(dim=1)
        layers = self.head.get("layers") if self.pooling == "multilayer" else None
        out = self.run_backbone(input_ids, attention_mask, hidden_states=layers is not None)
        hidden, layer_vectors = out.last_hidden_state, None
        if layers is not None:
            # hidden_states[i] is layer i's output; the last entry is the final-normed one
            reduction, pool_mask = self.head["layer_reduction"], features["pool_mask"]
            layer_vectors = torch.stack(
                [reduce_layer(out.hidden_states[i], attention_mask, pool_mask, last_index, reduction) for i in layers],
                dim=1,
            )
        features["token_embeddings"] = hidden
        features["sentence_embedding"] = self.pooler(
            hidden, attention_mask, features["pool_mask"], last_index, layer_vectors
        )
        return features

    def run_backbone(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden_states: bool) -> Any:
        """One forward pass with positions over real tokens; bidirectional: an additive mask that lets every real
        token see every real token (pad rows see only themselves) and the attention modules' causal flag off."""
        mask: torch.Tensor = attention_mask
        if self.attention == "bidirectional":
            dtype = next(self.model.parameters()).dtype
            keys = attention_mask.bool()[:, None, None, :]
            eye = torch.eye(attention_mask.shape[-1], dtype=torch.bool, device=attention_mask.device)
            allowed = keys | eye
            mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
            mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
        flagged = [
            m for m in self.model.modules() if m is not self.model and isinstance(getattr(m, "is_causal", None), bool)
        ]
        saved = [m.is_causal for m in flagged]
        for module in flagged:
            module.is_causal = self.attention == "causal"
        try:
            return self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=(attention_mask.long().cumsum(-1) - 1).clamp(min=0),
                use_cache=False,
                output_hidden_states=hidden_states,
            )
        finally:
            for module, flag in zip(flagged, saved, strict=True):
                module.is_causal = flag

    # -------------------------------------------------------------------- persistence
    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.model.save_pretrained(output_path, safe_serialization=safe_serialization)
        self.tokenizer.save_pretrained(output_path)
        if self.pooling in HEADS:
            state = {k: v.detach().contiguous().cpu() for k, v in self.pooler.state_dict().items()}
            save_file(state, os.path.join(output_path, HEAD_WEIGHTS))
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> PoolattnEmbedding:
        """Load from a local folder or a hub repository (``model_kwargs`` go to ``AutoModel.from_pretrained``)."""
        folder = cls.load_dir_path(
            model_name_or_path,
            subfolder=subfolder,
            token=token,
            cache_folder=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
        )
        with open(os.path.join(folder, CONFIG_NAME), encoding="utf-8") as handle:
            config = json.load(handle)
        options = {"dtype": "auto", **(model_kwargs or {})}
        options.pop("trust_remote_code", None)
        try:
            model = AutoModel.from_pretrained(folder, attn_implementation="sdpa", **options)
        except (ValueError, ImportError):  # a family without an SDPA kernel
            model = AutoModel.from_pretrained(folder, attn_implementation="eager", **options)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        module = cls(model.eval(), tokenizer, **config)
        if config["pooling"] in HEADS:
            module.pooler.load_state_dict(load_file(os.path.join(folder, HEAD_WEIGHTS)))
        return module
