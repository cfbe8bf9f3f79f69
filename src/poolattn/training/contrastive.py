"""One contrastive step: the InfoNCE loss of a global batch and the gradients of the trainable parameters.

The loss is InfoNCE: each query against its positive, every other positive of the *global* batch and every
hard negative (cosine x ``scale``, cross-entropy); texts identical to a query's positive are masked out as
candidates, so duplicates are never pushed apart. Two ways to compute a step's gradients give the same result:

* plain: embed the process's texts with autograd graphs kept, gather, loss, backward;
* GradCache (``mini_batch``): embed in chunks without graphs, gather, take the loss's gradient w.r.t. the
  embeddings, then re-embed chunk by chunk with graphs and back-propagate ``embedding . cached_gradient``. The
  RNG state of each chunk is captured on the first pass and replayed, so dropout masks match. The negative pool
  is the whole global batch while activation memory is bounded by one chunk (the reference's gradient
  accumulation saw only 16 candidates per query).

Texts are embedded in length-sorted chunks cut where padding would cost more than another forward pass
(``forward_tokens`` padded tokens at most, ``mini_batch`` texts at most), so little compute goes to padding.
The trainer calls a :class:`ContrastiveStep` once per optimiser step; chunks stay inside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data import TrainRecord
from ..model import EmbeddingModel, Tokenized
from .config import MIXED_PRECISION, ConfigError, RecipeSection
from .distributed import Distributed
from .records import Layout, tokenize_shard

#: Fixed cost of one forward + backward pass, in padded tokens, by device type (see :func:`plan_chunks`). CPU:
#: measured on SmolLM2-135M with LoRA, 16 pairs a step: 128 makes a step 1.5x faster than 16 (fewer chunks).
CHUNK_OVERHEAD_TOKENS = {"cpu": 128.0, "default": 512.0}


def info_nce(
    q: torch.Tensor,
    p: torch.Tensor,
    n: torch.Tensor,
    layout: Layout,
    *,
    scale: float,
    symmetric: bool = False,
    query_query: bool = False,
) -> torch.Tensor:
    """InfoNCE of queries ``q`` (B, D) over candidates [positives ``p`` (B, D); negatives ``n`` (M, D)].

    Inputs are L2-normalised, so logits are cosine x ``scale``. A candidate whose text equals the query's
    positive (other than the positive itself) is masked out. ``query_query`` adds the other queries as
    candidates; ``symmetric`` averages with the positive -> query direction over the queries.
    """
    labels = torch.arange(q.shape[0], device=q.device)
    pos_keys, qry_keys = layout.positive_keys.to(q.device), layout.query_keys.to(q.device)
    cand_keys = torch.cat([pos_keys, layout.negative_keys.to(q.device)])
    logits = scale * q @ torch.cat([p, n]).T
    duplicate = pos_keys[:, None] == cand_keys[None, :]
    duplicate[labels, labels] = False
    logits = logits.masked_fill(duplicate, float("-inf"))
    if query_query:
        same_query = qry_keys[:, None] == qry_keys[None, :]
        logits = torch.cat([logits, (scale * q @ q.T).masked_fill(same_query, float("-inf"))], dim=1)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        same_query = qry_keys[:, None] == qry_keys[None, :]
        same_query[labels, labels] = False
        reverse = (scale * p @ q.T).masked_fill(same_query, float("-inf"))
        loss = (loss + F.cross_entropy(reverse, labels)) / 2
    return loss


@dataclass
class RngState:
    """The CPU (and CUDA) RNG state at one point, to replay a chunk's dropout exactly."""

    cpu: torch.Tensor
    cuda: torch.Tensor | None
    device: torch.device

    @classmethod
    def capture(cls, device: torch.device) -> RngState:
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), cuda, device)

    @contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=[self.device] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def plan_chunks(
    items: Sequence[Tokenized], max_texts: int | None, max_tokens: int, overhead: float = 0.0
) -> list[list[int]]:
    """Split items, sorted by length (longest first), into forward chunks of least cost.

    A chunk costs its padded tokens (size x longest length) plus ``overhead`` (the fixed cost of one forward
    pass, in tokens); it holds at most ``max_texts`` texts and ``max_tokens`` padded tokens (a single longer text
    is its own chunk). Exact dynamic programming over the cut points, O(n x largest chunk).
    """
    order = sorted(range(len(items)), key=lambda i: (-len(items[i].ids), i))
    lengths = [len(items[i].ids) for i in order]
    cap = max_texts or len(order)
    best = [0.0] + [math.inf] * len(order)
    cut = [0] * (len(order) + 1)
    for stop in range(1, len(order) + 1):
        for start in range(stop - 1, max(stop - cap, 0) - 1, -1):
            padded = (stop - start) * lengths[start]
            if padded > max_tokens and stop - start > 1:
                break  # growing the chunk towards longer texts only adds tokens
            cost = best[start] + padded + overhead
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    chunks, stop = [], len(order)
    while stop > 0:
        chunks.append(order[cut[stop] : stop])
        stop = cut[stop]
    return chunks[::-1]


def chunk_overhead(device: torch.device) -> float:
    """The fixed cost of a forward pass in padded tokens: small on a CPU, large on an accelerator."""
    return CHUNK_OVERHEAD_TOKENS.get(device.type, CHUNK_OVERHEAD_TOKENS["default"])


class ContrastiveStep:
    """Computes one step's loss and accumulates the gradients of the trainable parameters.

    ``grad_cache=True`` is GradCache; ``False`` keeps every chunk's graph (the plain step). Both embed the same
    chunks in the same order and consume the same random numbers, so their gradients agree to float precision.
    ``model`` tokenises and collates; ``module`` (default: ``model``) runs the forward passes: the model as the
    engine wrapped it (DDP, FSDP, DeepSpeed). ``backward`` defaults to :meth:`Distributed.backward`.
    """

    def __init__(
        self,
        model: EmbeddingModel,
        dist: Distributed,
        recipe: RecipeSection,
        *,
        grad_cache: bool,
        backward: Callable[[torch.Tensor], None] | None = None,
        module: nn.Module | None = None,
    ) -> None:
        self.model, self.dist, self.recipe = model, dist, recipe
        self.module = module if module is not None else model
        self.grad_cache = grad_cache
        self.backward = backward or dist.backward
        dtype = MIXED_PRECISION[recipe.mixed_precision]
        device_type = dist.device.type
        self.autocast: Callable[[], Any] = (
            (lambda: torch.autocast(device_type, dtype=dtype)) if dtype is not None else nullcontext
        )

    def embed(self, items: Sequence[Tokenized]) -> torch.Tensor:
        with self.autocast():
            return self.module(self.model.collate(items)).float()

    def __call__(self, shards: Sequence[Sequence[TrainRecord]]) -> torch.Tensor:
        """Loss of the global batch (``shards[r]`` = process r's records); gradients accumulate in ``.grad``."""
        layout = Layout.of(shards)
        items = tokenize_shard(self.model, shards[self.dist.rank])
        chunks = plan_chunks(
            items, self.recipe.mini_batch, self.recipe.forward_tokens, chunk_overhead(self.dist.device)
        )
        if self.dist.sharded:  # FSDP gathers weights in every forward, ZeRO-2 reduces in every backward
            chunks = split_to(chunks, int(self.dist.reduce_max(len(chunks))))
        order = torch.tensor([i for chunk in chunks for i in chunk])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        last = len(chunks) - 1
        if not self.grad_cache:
            parts = []
            for k, chunk in enumerate(chunks):  # DDP arms the synchronising backward at the last forward
                with self.dist.no_sync(self.module, k < last):
                    parts.append(self.embed([items[i] for i in chunk]))
            local = torch.cat(parts)[inverse.to(self.dist.device)]
            loss = self.loss(self.dist.gather(local, layout.sizes), layout)
            self.backward(loss)
            return loss.detach()
        states, parts = [], []
        with torch.no_grad():
            for chunk in chunks:
                states.append(RngState.capture(self.dist.device))
                parts.append(self.embed([items[i] for i in chunk]))
        local = torch.cat(parts)[inverse.to(self.dist.device)]
        gathered = self.dist.gather(local, layout.sizes).detach().requires_grad_()
        loss = self.loss(gathered, layout)
        loss.backward()
        offset = sum(layout.sizes[: self.dist.rank])
        cached = gathered.grad[offset : offset + local.shape[0]][order.to(self.dist.device)]
        start = 0
        for k, (chunk, state) in enumerate(zip(chunks, states, strict=True)):
            with self.dist.no_sync(self.module, k < last):  # gradients are synchronised once, at the last chunk
                with state.replay():
                    emb = self.embed([items[i] for i in chunk])
                self.backward((emb * cached[start : start + len(chunk)]).sum())
            start += len(chunk)
        return loss.detach()

    def loss(self, gathered: torch.Tensor, layout: Layout) -> torch.Tensor:
        device = gathered.device
        loss = info_nce(
            gathered[layout.query_rows.to(device)],
            gathered[layout.positive_rows.to(device)],
            gathered[layout.negative_rows.to(device)],
            layout,
            scale=self.recipe.scale,
            symmetric=self.recipe.symmetric,
            query_query=self.recipe.query_query,
        )
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(loss.item())
        return loss


def split_to(chunks: list[list[int]], n: int) -> list[list[int]]:
    """``chunks`` with the largest halved until there are ``n``, so that every process runs as many passes."""
    chunks = list(chunks)
    while len(chunks) < n:
        i = max(range(len(chunks)), key=lambda j: len(chunks[j]))
        if len(chunks[i]) == 1:
            raise ConfigError(
                f"this process has {len(chunks)} texts but another has {n} forward chunks, and FSDP / DeepSpeed "
                "ZeRO-2 need as many on every process: raise recipe.mini_batch"
            )
        half = len(chunks[i]) // 2
        chunks[i : i + 1] = [chunks[i][:half], chunks[i][half:]]
    return chunks


class NonFiniteLoss(Exception):
    """A step's loss is NaN or infinite (``value``); the step's gradients are not used."""

    def __init__(self, value: float) -> None:
        self.value = value
