"""The contrastive step: InfoNCE against a hand computation, chunk planning, GradCache equals the plain step."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from training_common import make_records, one_thread, trainable_grads  # noqa: F401 (autouse fixture)

from poolattn.data import TrainRecord
from poolattn.model import Tokenized
from poolattn.training import build_model, info_nce, load_train_config
from poolattn.training.contrastive import ContrastiveStep, RngState, plan_chunks
from poolattn.training.distributed import Distributed
from poolattn.training.records import Layout


# -------------------------------------------------------------------------------------------- the loss
def test_info_nce_matches_a_hand_computation():
    torch.manual_seed(0)
    q, p, n = (F.normalize(torch.randn(k, 6), dim=-1) for k in (3, 3, 2))
    records = [TrainRecord("a", "x", ["n1"]), TrainRecord("b", "y", []), TrainRecord("c", "z", ["n2"])]
    layout = Layout.of([records])
    loss = info_nce(q, p, n, layout, scale=20.0)
    expected = 0.0
    cands = torch.cat([p, n])
    for i in range(3):
        logits = 20.0 * cands @ q[i]
        expected += -(logits[i] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(loss, expected / 3)
    # symmetric and query-query terms
    qq = info_nce(q, p, n, layout, scale=20.0, query_query=True)
    expected_qq = 0.0
    for i in range(3):
        logits = torch.cat([20.0 * cands @ q[i], 20.0 * q[[j for j in range(3) if j != i]] @ q[i]])
        expected_qq += -(logits[i] - torch.logsumexp(logits, 0))
    torch.testing.assert_close(qq, expected_qq / 3)
    sym = info_nce(q, p, n, layout, scale=20.0, symmetric=True)
    reverse = F.cross_entropy(20.0 * p @ q.T, torch.arange(3))
    torch.testing.assert_close(sym, (loss + reverse) / 2)


def test_info_nce_masks_duplicates_of_the_positive():
    torch.manual_seed(1)
    q, p, n = (F.normalize(torch.randn(k, 4), dim=-1) for k in (3, 3, 1))
    records = [TrainRecord("a", "same", ["same"]), TrainRecord("b", "same", []), TrainRecord("c", "other", [])]
    layout = Layout.of([records])
    loss = info_nce(q, p, n, layout, scale=10.0)
    cands = torch.cat([p, n])
    allowed = {0: [0, 2], 1: [1, 2], 2: [0, 1, 2, 3]}  # "same" twice: neither copy is a negative of the other
    expected = sum(-(10.0 * cands[i] @ q[i] - torch.logsumexp(10.0 * cands[allowed[i]] @ q[i], 0)) for i in range(3))
    torch.testing.assert_close(loss, expected / 3)


def test_layout_of_several_processes_matches_one():
    records = make_records(6)
    one, two = Layout.of([records]), Layout.of([records[:3], records[3:]])

    def texts(shard):
        return [r.query for r in shard] + [r.positive for r in shard] + [x for r in shard for x in r.negatives]

    texts_one, texts_two = texts(records), texts(records[:3]) + texts(records[3:])
    for rows_one, rows_two in (
        (one.query_rows, two.query_rows),
        (one.positive_rows, two.positive_rows),
        (one.negative_rows, two.negative_rows),
    ):
        assert [texts_one[i] for i in rows_one] == [texts_two[i] for i in rows_two]
    assert sum(two.sizes) == sum(one.sizes) == len(texts_one)


def test_plan_chunks_sorts_by_length_and_respects_caps():
    items = [Tokenized([0] * n, [True] * n) for n in (3, 9, 1, 9, 5, 2)]
    assert plan_chunks(items, None, 1000) == [[1], [3], [4], [0], [5], [2]]  # free passes: no padding at all
    assert plan_chunks(items, None, 1000, overhead=100.0) == [[1, 3, 4, 0, 5, 2]]  # costly passes: one chunk
    assert plan_chunks(items, 2, 1000, overhead=100.0) == [[1, 3], [4, 0], [5, 2]]
    assert plan_chunks(items, None, 15, overhead=100.0) == [[1], [3], [4, 0], [5, 2]]  # 15 tokens at most


def partition_cost(ordered: list[int], sizes: list[int], max_texts, max_tokens: int, overhead: float) -> float:
    """Cost of cutting the length-sorted list into chunks of ``sizes`` (inf when a cap is broken)."""
    total, start = 0.0, 0
    for size in sizes:
        if (max_texts and size > max_texts) or (size > 1 and size * ordered[start] > max_tokens):
            return float("inf")
        total, start = total + size * ordered[start] + overhead, start + size
    return total


def test_plan_chunks_is_the_cheapest_partition():
    """Against brute force over every way of cutting the sorted list."""
    import itertools

    rng = random.Random(0)
    for _ in range(60):
        lengths = [rng.randint(1, 30) for _ in range(rng.randint(1, 8))]
        items = [Tokenized([0] * n, [True] * n) for n in lengths]
        caps = (rng.choice([None, 2, 3]), rng.choice([40, 80, 1000]), rng.choice([0.0, 5.0, 20.0]))
        ordered, n = sorted(lengths, reverse=True), len(lengths)
        best = min(
            partition_cost(ordered, [b - a for a, b in itertools.pairwise((0, *cuts, n))], *caps)
            for k in range(n)
            for cuts in itertools.combinations(range(1, n), k)
        )
        chunks = plan_chunks(items, *caps)
        assert sorted(i for c in chunks for i in c) == list(range(n))
        assert [len(items[i].ids) for c in chunks for i in c] == ordered
        assert partition_cost(ordered, [len(c) for c in chunks], *caps) == best


# ------------------------------------------------------------------------------------------- GradCache
def step_grads(backbone: Path, overrides: list[str], grad_cache: bool, records: list[TrainRecord]):
    config = load_train_config(None, [f"model.backbone={backbone}", "lora.r=4", "lora.alpha=8", *overrides])
    torch.manual_seed(0)
    dist = Distributed()  # the process's device (a GPU where there is one): the model goes there, as in training
    model = build_model(config).to(dist.device).train()
    with torch.no_grad():  # a non-zero LoRA B, so dropout on the adapter input changes the forward pass too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    step = ContrastiveStep(model, dist, config.recipe, grad_cache=grad_cache)
    torch.manual_seed(123)
    loss = step([records])
    return float(loss), trainable_grads(model)


@pytest.mark.parametrize(("pooling", "attention"), [("multilayer", "bidirectional"), ("latent", "causal")])
def test_gradcache_equals_the_plain_step_with_dropout(tiny_llama, pooling, attention, monkeypatch):
    """GradCache (no graphs, cached embedding gradients, RNG replayed per chunk) gives the plain step's gradients.

    With dropout the plain step embeds the same chunks in the same order (its graphs kept), so both draw the same
    dropout masks; without dropout it is one forward over the whole batch.
    """
    records = make_records(8, seed=2)
    design = [f"model.pooling={pooling}", f"model.attention={attention}"]
    drop = [*design, "lora.dropout=0.3", "recipe.mini_batch=3"]
    loss_cache, cached = step_grads(tiny_llama, drop, True, records)
    loss_plain, plain = step_grads(tiny_llama, drop, False, records)
    assert loss_cache == pytest.approx(loss_plain, abs=1e-6)
    assert cached.keys() == plain.keys() and any("lora_A" in k for k in cached)
    for name in cached:
        torch.testing.assert_close(cached[name], plain[name], rtol=1e-5, atol=1e-5, msg=name)

    # without the RNG replay the re-forward draws other masks and the gradients are wrong: the test is sensitive
    monkeypatch.setattr(RngState, "replay", lambda self: torch.random.fork_rng(devices=[]))
    _, unreplayed = step_grads(tiny_llama, drop, True, records)
    assert max((unreplayed[k] - plain[k]).abs().max().item() for k in plain) > 1e-3
    monkeypatch.undo()

    no_drop = [*design, "lora.dropout=0.0"]
    _, cached = step_grads(tiny_llama, [*no_drop, "recipe.mini_batch=2"], True, records)
    _, whole = step_grads(tiny_llama, [*no_drop, "recipe.forward_tokens=100000"], False, records)
    for name in cached:
        torch.testing.assert_close(cached[name], whole[name], rtol=1e-5, atol=1e-5, msg=name)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama):
    records = make_records(8, seed=3)
    design = ["model.pooling=multilayer", "model.attention=bidirectional", "lora.dropout=0.2"]
    _, plain = step_grads(tiny_llama, design, False, records)
    _, checkpointed = step_grads(tiny_llama, [*design, "recipe.gradient_checkpointing=true"], False, records)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
