"""``st_module`` repeats poolattn's pooling so that exports load without poolattn: the two copies give the same
vectors for every registered design under both attentions and every value of every option, and ``st_module``
refuses a design or setting it does not implement."""

from __future__ import annotations

import itertools

import pytest
import torch

from poolattn import st_module
from poolattn.layer_states import LAYER_REDUCTIONS, reduce_states
from poolattn.pooling import POOLERS
from poolattn.pooling.base import PoolInput
from poolattn.pooling.registry import build_pooler
from poolattn.st_export import head_config

HIDDEN, LAYERS = 32, 3


def cases() -> list[tuple[str, str, dict]]:
    """(pooling, attention, options): the product of each registered pooler's option space."""
    out = []
    for name, cls in sorted(POOLERS.items()):
        space = cls.option_space()
        for attention in ("causal", "bidirectional"):
            for values in itertools.product(*space.values()):
                out.append((name, attention, dict(zip(space, values, strict=True))))
    return out


def inputs(generator: torch.Generator) -> tuple[PoolInput, torch.Tensor]:
    """Right-padded rows (one all but padding), the instruction's tokens left out of the pool mask, and states of
    every layer (the last one final-normed)."""
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]])
    pool_mask = attention_mask.bool().clone()
    pool_mask[0, :2] = False
    layer_states = torch.randn(LAYERS, 3, 6, HIDDEN, generator=generator) * 3
    last_index = torch.tensor([5, 2, 0])
    return PoolInput(layer_states[-1], attention_mask, pool_mask, last_index), layer_states


def test_every_registered_design_and_option_is_covered():
    covered = {(name, attention) for name, attention, _ in cases()}
    assert covered == {(n, a) for n in POOLERS for a in ("causal", "bidirectional")}
    assert set(POOLERS) == set(st_module.HEAD_SETTINGS)
    assert set(st_module.HEAD_SETTINGS["multilayer"]["layer_reduction"]) == set(LAYER_REDUCTIONS)
    options = {k for _, _, o in cases() for k in o}
    assert {"preset", "inputs", "layer_pooling", "layer_norm", "latent_init"} <= options


@pytest.mark.parametrize(("pooling", "attention", "options"), cases(), ids=lambda v: str(v).replace(" ", ""))
def test_st_module_pools_as_poolattn(pooling, attention, options):
    torch.manual_seed(0)
    pooler = build_pooler(pooling, hidden_size=HIDDEN, num_layers=LAYERS, attention=attention, options=options)
    with torch.no_grad():  # non-trivial weights everywhere, the layer embedding included
        for param in pooler.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    copy = st_module.Pooler(pooling, HIDDEN, head_config(pooler))
    copy.load_state_dict(pooler.state_dict(), strict=True)
    pool_input, layer_states = inputs(torch.Generator().manual_seed(1))
    layer_vectors = None
    if pooler.needs_layers:
        reduction = pooler.layer_reduction()
        args = (pool_input.attention_mask, pool_input.pool_mask, pool_input.last_index)
        theirs = [st_module.reduce_layer(layer_states[i - 1], *args, reduction) for i in pooler.selected_layers()]
        ours = [reduce_states(layer_states[i - 1], *args, reduction) for i in pooler.selected_layers()]
        torch.testing.assert_close(torch.stack(theirs, 1), torch.stack(ours, 1), rtol=0, atol=0)
        layer_vectors = pool_input.layer_vectors = torch.stack(ours, 1)
    expected = pooler(pool_input)
    got = copy(
        pool_input.last_hidden, pool_input.attention_mask, pool_input.pool_mask, pool_input.last_index, layer_vectors
    )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("pooling", "head", "message"),
    [
        ("max", {}, r"unknown pooling 'max'"),
        ("trainable", {"size": {}, "inputs": "all"}, r"unknown inputs 'all'"),
        ("multilayer", {"size": {}, "layers": [1], "layer_reduction": "max", "layer_norm": "rms"}, "layer_reduction"),
        ("multilayer", {"size": {}, "layers": [1], "layer_reduction": "last", "layer_norm": "l2"}, "layer_norm 'l2'"),
        ("mean", {"temperature": 2}, r"takes the head settings \[\], got \['temperature'\]"),
    ],
)
def test_st_module_refuses_what_it_does_not_implement(pooling, head, message):
    with pytest.raises(ValueError, match=message):
        st_module.Pooler(pooling, HIDDEN, head)
