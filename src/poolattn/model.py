"""EmbeddingModel: a decoder backbone, an attention mode and a pooler — tokenise, encode, save, load."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from ._version import __version__
from .backbone import (
    check_attention,
    decoder_layers,
    load_backbone,
    refuse_remote_code,
    resolve_dtype,
    run_backbone,
)
from .config import build_from
from .dropout import speed_up_dropout
from .fingerprints import ModuleFingerprint
from .io import load_json_object
from .layer_states import last_real_index, reduce_states, stack_layers
from .outputs import replace_dir
from .pooling import PoolInput, build_pooler
from .targets import make_temp
from .threads import apply_budget
from .workers import balance_tail, default_workers, map_in_threads

log = logging.getLogger(__name__)

CONFIG_FILE = "poolattn.json"
POOLER_FILE = "pooler.safetensors"
DEFAULT_TEMPLATE = "Instruct: {instruction}\nQuery: {text}"


#: The attention implementations a saved folder may name (anything else needs ``trust_remote_code``).
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "poolattn_sdpa")


def check_template(template: str) -> None:
    """Refuse an instruction template unless its only fields are ``{instruction}`` and ``{text}``, each once."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise ValueError(f"instruction_template {template!r}: {err}") from None
    if sorted(names) != ["instruction", "text"]:
        raise ValueError(
            f"instruction_template {template!r} must hold '{{instruction}}' and '{{text}}' once each and no other "
            "field (write a literal brace as '{{' or '}}')"
        )


@dataclass
class EmbeddingConfig:
    """Everything that defines an embedding model (saved as ``poolattn.json``)."""

    backbone: str
    attention: str = "causal"
    pooling: str = "eos"
    pooling_options: dict[str, Any] = field(default_factory=dict)
    dtype: str = "float32"
    attn_implementation: str | None = None
    max_length: int = 512
    instruction_template: str = DEFAULT_TEMPLATE
    pool_instruction: bool = True
    #: Only the backbone's first N decoder layers (then its final norm); None: all of them.
    num_layers: int | None = None

    def __post_init__(self) -> None:
        if self.num_layers is not None and (isinstance(self.num_layers, bool) or self.num_layers < 1):
            raise ValueError(f"num_layers must be a positive number of decoder layers, got {self.num_layers!r}")
        check_template(self.instruction_template)
        if self.max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {self.max_length}")
        resolve_dtype(self.dtype)

    def hash(self) -> str:
        """A short stable hash of the design (what changes the embeddings); an unset ``num_layers`` leaves it as
        it was before that option existed."""
        fields_ = asdict(self)
        if fields_["num_layers"] is None:
            del fields_["num_layers"]
        payload = json.dumps(fields_, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Batch:
    """A padded batch ready for the backbone."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pool_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.pool_mask)))

    def __getitem__(self, rows: slice | torch.Tensor) -> Batch:
        return Batch(self.input_ids[rows], self.attention_mask[rows], self.pool_mask[rows])

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Tokenized:
    """One text's token ids and which of them may be pooled."""

    ids: list[int]
    poolable: list[bool]


class EmbeddingModel(nn.Module):
    """A text-embedding model made from a decoder LLM.

    >>> m = EmbeddingModel.from_backbone("HuggingFaceTB/SmolLM2-135M", attention="bidirectional", pooling="mean")
    >>> vecs = m.encode(["a text", "another"])        # (2, 576) float32, L2-normalised
    """

    def __init__(self, config: EmbeddingConfig, backbone: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        check_attention(config.attention, backbone.config.model_type)
        self.config = config
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooler = build_pooler(
            config.pooling,
            hidden_size=backbone.config.hidden_size,
            num_layers=backbone.config.num_hidden_layers,
            attention=config.attention,
            options=dict(config.pooling_options),
        )
        self._warned_truncation = False
        self._compiled: nn.Module | None = None  # see compile_backbone; kept out of the module tree
        self._fingerprint = ModuleFingerprint()
        self.trust_remote_code = False  # the caller's word (from_backbone, load), never read from a folder

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        attention: str = "causal",
        pooling: str = "eos",
        pooling_options: dict[str, Any] | None = None,
        dtype: str = "float32",
        seed: int = 0,
        trust_remote_code: bool = False,
        **config: Any,
    ) -> EmbeddingModel:
        """Build a model from a hub id or local folder; trainable heads are initialised from ``seed``. A backbone
        that ships its own code is refused unless ``trust_remote_code``."""
        known = {f.name for f in fields(EmbeddingConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; known: {sorted(known)}")
        local = Path(name_or_path).expanduser()
        cfg = EmbeddingConfig(
            backbone=str(local.resolve()) if local.exists() else str(name_or_path),
            attention=attention,
            pooling=pooling,
            pooling_options=dict(pooling_options or {}),
            dtype=dtype,
            **config,
        )
        backbone = load_backbone(
            name_or_path,
            dtype=dtype,
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=trust_remote_code,
            num_layers=cfg.num_layers,
        )
        tokenizer = load_tokenizer(str(name_or_path), trust_remote_code)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(cfg, backbone, tokenizer)
        model.trust_remote_code = trust_remote_code
        return model

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dim(self) -> int:
        return self.pooler.output_dim

    @property
    def name(self) -> str:
        return f"{Path(self.config.backbone).name}:{self.config.attention}:{self.config.pooling}"

    def config_hash(self) -> str:
        return self.config.hash()

    def fingerprint(self) -> str:
        """A hash of every weight (backbone, adapter, head): equal only for bit-identical models (cached)."""
        return self._fingerprint(self)

    # ------------------------------------------------------------------ tokenisation
    def format(self, text: str, instruction: str | None) -> tuple[str, int]:
        """The text with its instruction, and the number of leading characters that are instruction."""
        if not instruction:
            return text, 0
        prefix = self.config.instruction_template.split("{text}")[0].format(instruction=instruction)
        return self.config.instruction_template.format(instruction=instruction, text=text), len(prefix)

    def tokenize_texts(self, texts: Sequence[str], instruction: str | None = None) -> list[Tokenized]:
        """Token ids per text: instruction formatted in, truncated to ``max_length`` with the EOS kept last."""
        validate_texts(texts)
        if not texts:
            return []
        formatted = [self.format(t, instruction) for t in texts]
        if instruction:
            self.check_instruction_fits(instruction)
        exclude = instruction is not None and not self.config.pool_instruction
        enc = self.tokenizer(
            [f for f, _ in formatted],
            add_special_tokens=True,
            truncation=False,
            return_offsets_mapping=exclude,
            return_attention_mask=False,
            verbose=False,
        )
        eos = self.tokenizer.eos_token_id
        limit = self.config.max_length - 1
        out = []
        for i, ids in enumerate(enc["input_ids"]):
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            if len(ids) > limit:
                self._warn_truncation(len(ids) + 1)
                ids = ids[:limit]
            if exclude:
                prefix_chars = formatted[i][1]
                poolable = [start >= prefix_chars for start, _ in enc["offset_mapping"][i][: len(ids)]]
            else:
                poolable = [True] * len(ids)
            out.append(Tokenized([*ids, eos], [*poolable, True]))
        return out

    def check_instruction_fits(self, instruction: str) -> None:
        """Refuse an instruction that leaves no token of ``max_length`` to the text: truncation would then cut every
        text away, so all texts would get the instruction's embedding (and rank correlations would be undefined)."""
        prefix = self.config.instruction_template.split("{text}")[0].format(instruction=instruction)
        ids = self.tokenizer(prefix, add_special_tokens=True, verbose=False)["input_ids"]
        n = len(ids) - (bool(ids) and ids[-1] == self.tokenizer.eos_token_id)
        if n >= self.config.max_length - 1:
            raise ValueError(
                f"the instruction {instruction!r} takes {n} tokens with its template, leaving no room for the text "
                f"under max_length={self.config.max_length} (the EOS token is kept last): every text would be cut "
                "away; raise model.max_length or shorten the instruction"
            )

    def _warn_truncation(self, n_tokens: int) -> None:
        if not self._warned_truncation:
            log.warning(
                "a text of %d tokens was truncated to max_length=%d (the EOS token is kept); "
                "further truncations are not reported",
                n_tokens,
                self.config.max_length,
            )
            self._warned_truncation = True

    def collate(self, items: Sequence[Tokenized], padding_side: str = "right") -> Batch:
        """Pad a list of tokenised texts into a batch."""
        length = max(len(it.ids) for it in items)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(items), length), pad, dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        pool = torch.zeros((len(items), length), dtype=torch.bool)
        for row, it in enumerate(items):
            n = len(it.ids)
            cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
            ids[row, cols] = torch.tensor(it.ids)
            mask[row, cols] = 1
            pool[row, cols] = torch.tensor(it.poolable)
        return Batch(ids, mask, pool)

    def tokenize(self, texts: Sequence[str], instruction: str | None = None, padding_side: str = "right") -> Batch:
        """Tokenise and pad texts into one batch (for training and tests)."""
        return self.collate(self.tokenize_texts(texts, instruction), padding_side)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Batch) -> torch.Tensor:
        """Embeddings of a batch, L2-normalised, float32, with gradients when enabled."""
        return F.normalize(self.pool(batch), dim=-1)

    def pool(self, batch: Batch) -> torch.Tensor:
        """Unnormalised pooled vectors of a batch."""
        batch = batch.to(self.device)
        last_index = last_real_index(batch.attention_mask)
        pooled_layers = self.pooler.selected_layers()
        compiled = self._compiled is not None and torch.is_inference_mode_enabled() and not pooled_layers
        backbone = self._compiled if compiled else self.backbone
        with (
            self.collect_layers(batch, last_index, pooled_layers, self.pooler.layer_reduction()) as collected,
            compile_settings() if compiled else nullcontext(),
        ):
            hidden = run_backbone(backbone, batch.input_ids, batch.attention_mask, self.config.attention)
        inputs = PoolInput(hidden, batch.attention_mask, batch.pool_mask, last_index)
        if pooled_layers:
            inputs.layer_vectors = stack_layers(collected, pooled_layers, hidden, inputs, self.pooler.layer_reduction())
        return self.pooler(inputs)

    @contextmanager
    def collect_layers(
        self, batch: Batch, last_index: torch.Tensor, layers: Sequence[int], reduction: str
    ) -> Iterator[dict[int, torch.Tensor]]:
        """Reduce each wanted layer's output to one vector per text as the layer runs (no states are kept).

        The final layer is taken from the final-normed output afterwards, as ``output_hidden_states`` does.
        The hooks serve the calling thread only (encode may run several batches at once in threads).
        """
        collected: dict[int, torch.Tensor] = {}
        owner = threading.get_ident()
        n_layers = self.backbone.config.num_hidden_layers
        blocks = decoder_layers(self.backbone) if layers else []
        handles = []
        for layer in layers:
            if layer == n_layers:
                continue

            def hook(_module: nn.Module, _args: Any, output: Any, layer: int = layer) -> None:
                if threading.get_ident() != owner:
                    return
                states = output[0] if isinstance(output, tuple) else output
                collected[layer] = reduce_states(states, batch.attention_mask, batch.pool_mask, last_index, reduction)

            handles.append(blocks[layer - 1].register_forward_hook(hook))
        try:
            yield collected
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        *,
        batch_tokens: int | None = None,
        max_batch_size: int = 256,
        show_progress: bool | None = None,
        padding_side: str = "right",
        workers: int | None = None,
    ) -> np.ndarray:
        """Embed texts: (N, dim) float32, L2-normalised, in input order.

        Texts are sorted by token length and packed into batches of at most ``batch_tokens`` padded tokens
        (default :func:`default_batch_tokens`), so little compute is spent on padding. Empty texts are embedded
        from their EOS token alone. On a CPU, ``workers`` threads (default: torch's thread count) each run whole
        batches on one intra-op thread (see :mod:`poolattn.workers`); ``workers=1`` runs them one by one.
        """
        return self._encode(
            texts, instruction, self.forward, batch_tokens, max_batch_size, show_progress, padding_side, workers
        )

    def encode_layers(
        self,
        texts: Sequence[str],
        instruction: str | None = None,
        *,
        reduction: str | None = None,
        batch_tokens: int | None = None,
        show_progress: bool | None = None,
        workers: int | None = None,
    ) -> np.ndarray:
        """One L2-normalised vector per text per layer 1..L from one forward pass: (N, L, H) float32."""
        reduction = reduction or ("last" if self.config.attention == "causal" else "mean")
        layers = list(range(1, self.backbone.config.num_hidden_layers + 1))

        def all_layers(batch: Batch) -> torch.Tensor:
            batch = batch.to(self.device)
            last_index = last_real_index(batch.attention_mask)
            with self.collect_layers(batch, last_index, layers, reduction) as collected:
                hidden = run_backbone(self.backbone, batch.input_ids, batch.attention_mask, self.config.attention)
            inputs = PoolInput(hidden, batch.attention_mask, batch.pool_mask, last_index)
            return F.normalize(stack_layers(collected, layers, hidden, inputs, reduction), dim=-1)

        return self._encode(texts, instruction, all_layers, batch_tokens, 256, show_progress, "right", workers)

    def _encode(
        self,
        texts: Sequence[str],
        instruction: str | None,
        embed: Any,
        batch_tokens: int | None,
        max_batch_size: int,
        show_progress: bool | None,
        padding_side: str,
        workers: int | None,
    ) -> np.ndarray:
        from .progress import progress_bar

        items = self.tokenize_texts(texts, instruction)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        order = sorted(range(len(items)), key=lambda i: len(items[i].ids), reverse=True)
        budget = batch_tokens or default_batch_tokens(self.device)
        batches = plan_batches([len(items[i].ids) for i in order], budget, max_batch_size)
        results: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
        show = len(items) >= 512 if show_progress is None else show_progress
        if self.device.type == "cpu":
            apply_budget()
        workers = default_workers(self.device, len(batches)) if workers is None else workers

        def embed_rows(rows: list[int]) -> np.ndarray:
            return embed(self.collate([items[i] for i in rows], padding_side)).float().cpu().numpy()

        jobs = balance_tail([order[start:stop] for start, stop in batches], workers)
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode(), progress_bar(len(items), "encoding", enabled=show) as advance:
                for index, vecs in map_in_threads(embed_rows, jobs, workers, self.device.type):
                    for row, vec in zip(jobs[index], vecs, strict=True):
                        results[row] = vec
                    advance(len(vecs))
        finally:
            self.train(was_training)
        return np.stack(results).astype(np.float32, copy=False)

    def compile_backbone(self) -> EmbeddingModel:
        """Encode through a ``torch.compile``d backbone (inductor, dynamic shapes, weights frozen into the graph).

        For a finished model: the weights become constants of the compiled graph (later changes are not seen).
        It serves forwards under ``torch.inference_mode`` (``encode``) with poolers that read the last layer
        only; training, gradients and per-layer collection (``multilayer``, ``encode_layers``) run the eager
        backbone. The first batches pay the compilation (minutes on a small CPU; inductor caches it on disk for
        later processes; with the default attention, sequences over 32 tokens get a second graph), so it pays off
        on large inputs. Under bf16 autocast the frozen weights are cast to bf16 once, at compilation.
        Compiled CPU kernels keep the thread count they were compiled under: encode with the same ``workers``
        setting as the first call (by default one intra-op thread per worker).
        """
        if self.device.type == "cpu" and not cpp_compiler():
            raise RuntimeError("compiling for a CPU needs a C++ compiler (g++, or $CXX); none was found on PATH")
        if self.pooler.selected_layers():
            log.warning(
                "pooling %r reads every layer's output: encoding runs the eager backbone, compiling changes nothing",
                self.config.pooling,
            )
        compiled = torch.compile(self.backbone, dynamic=True)
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: state_dict and save stay as they were
        return self

    # ------------------------------------------------------------------ adapters
    def add_lora(
        self,
        r: int = 16,
        alpha: int = 32,
        dropout: float = 0.1,
        target_modules: str | list[str] = "all-linear",
        top_layers: int | None = None,
    ) -> None:
        """Wrap the backbone with a PEFT LoRA adapter: only it and the pooler then train (``top_layers``: only the
        last N layers', so backward stops there); its CPU dropout is :class:`~poolattn.dropout.FastDropout`."""
        from .backbone import add_lora_adapter

        self.backbone = add_lora_adapter(self.backbone, r, alpha, dropout, target_modules, top_layers)
        for module in self.backbone.modules():
            if isinstance(getattr(module, "lora_dropout", None), nn.ModuleDict):
                speed_up_dropout(module.lora_dropout)

    @property
    def has_adapter(self) -> bool:
        return hasattr(self.backbone, "peft_config")

    def merge_adapter(self) -> None:
        """Fold a LoRA adapter into the backbone weights."""
        if self.has_adapter:
            self.backbone = self.backbone.merge_and_unload()

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike[str], *, backbone_weights: bool | None = None) -> Path:
        """Write config, pooler weights, tokenizer, and the backbone (by reference, adapter, or full weights).

        ``backbone_weights=None`` stores full weights only when they may differ from the referenced backbone
        (i.e. they were trained without an adapter). The folder is written next to its target and renamed.
        """
        if getattr(self, "quantized", False):  # set by poolattn.quantize.int8_copy
            raise ValueError("an int8 copy is for inference only: save the float32 model it was made from")
        target = Path(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp(target, folder=True)
        try:
            config = asdict(self.config)
            full = backbone_weights if backbone_weights is not None else self._backbone_changed()
            if self.has_adapter:
                self.backbone.save_pretrained(tmp / "adapter")
                config["backbone_storage"] = "adapter"
            elif full:
                self.backbone.save_pretrained(tmp / "backbone")
                config["backbone_storage"] = "weights"
            else:
                config["backbone_storage"] = "reference"
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            state = {k: v.detach().contiguous().cpu() for k, v in self.pooler.state_dict().items()}
            save_file(state, tmp / POOLER_FILE)
            config["poolattn_version"] = __version__
            config["trust_remote_code"] = self.trust_remote_code  # informs load's refusal; never enables code
            config["config_hash"] = self.config.hash()
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
            replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def _backbone_changed(self) -> bool:
        return getattr(self, "backbone_trained", False)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        *,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        **overrides: Any,
    ) -> EmbeddingModel:
        """Load a folder written by ``save``; embeddings are identical to the saved model's. ``overrides`` (e.g.
        ``max_length=256``) replace saved settings and are checked like new ones. A folder whose backbone or
        tokenizer ships its own code is refused unless the caller passes ``trust_remote_code``."""
        folder = Path(folder)
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a poolattn model folder (no {CONFIG_FILE})")
        raw = load_json_object(path, required=("backbone",))
        storage = raw.pop("backbone_storage", "reference")
        declared = bool(raw.pop("trust_remote_code", False))
        refuse_remote_code(str(folder), folder / "tokenizer", declared=declared, trusted=trust_remote_code)
        known = {f.name for f in fields(EmbeddingConfig)}
        saved = build_from(EmbeddingConfig, {k: v for k, v in raw.items() if k in known}, str(path))
        if saved.attn_implementation not in (None, *ATTN_IMPLEMENTATIONS) and not trust_remote_code:
            raise ValueError(
                f"{path}: attn_implementation = {saved.attn_implementation!r} is none of "
                f"{', '.join(ATTN_IMPLEMENTATIONS)}; a kernel from the hub runs downloaded code: only with "
                "--trust-remote-code"
            )
        config = replace(saved, **(overrides | ({"dtype": dtype} if dtype else {})))  # checked like new values
        source = folder / "backbone" if storage == "weights" else config.backbone
        backbone = load_backbone(
            source,
            dtype=config.dtype,
            attn_implementation=config.attn_implementation,
            trust_remote_code=trust_remote_code,
            num_layers=config.num_layers,
        )
        if storage == "adapter":
            from .backbone import load_adapter

            backbone = load_adapter(backbone, folder / "adapter")
        tokenizer = load_tokenizer(str(folder / "tokenizer"), trust_remote_code)
        model = cls(config, backbone, tokenizer)
        model.trust_remote_code = trust_remote_code
        model.pooler.load_state_dict(load_file(folder / POOLER_FILE))
        model.backbone_trained, model.folder = storage == "weights", folder  # folder: where its records are
        return model.eval()


# ---------------------------------------------------------------------- helpers
def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A fast tokenizer with a pad token (the EOS when the model has none)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"tokenizer of {name_or_path!r} has no EOS token; poolattn appends one to every text")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def validate_texts(texts: Sequence[str]) -> None:
    """Reject inputs that are not a list of strings, naming the first bad position."""
    if isinstance(texts, str):
        raise TypeError("encode expects a list of texts, not a single string; wrap it: encode([text])")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is {type(text).__name__}, not str")


#: Compiled graphs a process may hold for one forward function (torch's default, 8, is shared by every model of
#: a class: a few compiled models, each with a short- and a long-sequence graph, would silently fall back to eager).
RECOMPILE_LIMIT = 64


@contextmanager
def compile_settings() -> Iterator[None]:
    """torch.compile settings of compiled encoding: inductor's freezing (weights folded into the graph, cast to
    bf16 once under autocast, prepacked for oneDNN) and :data:`RECOMPILE_LIMIT`. torch's config overrides are
    thread-local, so they are set around each call, in whichever thread compiles."""
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), dynamo_config.patch(recompile_limit=RECOMPILE_LIMIT):
        yield


def cpp_compiler() -> str | None:
    """The C++ compiler inductor would use on a CPU (``$CXX``, else g++), if installed."""
    return shutil.which(os.environ.get("CXX") or "g++")


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per encode batch: small on a CPU, where batches that stay in cache run fastest (SmolLM2,
    2 cores: 512 tokens encode 2.2x the texts/s of 16,384 on short texts, 1.6x on long ones), large on GPUs."""
    return 512 if device.type == "cpu" else 16384


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[tuple[int, int]]:
    """Split length-sorted (descending) items into [start, stop) batches of at most ``batch_tokens`` padded tokens."""
    batches, start = [], 0
    while start < len(lengths):
        width = lengths[start]
        size = max(1, min(max_batch_size, batch_tokens // max(width, 1)))
        stop = min(len(lengths), start + size)
        batches.append((start, stop))
        start = stop
    return batches
