import math

import pytest
import torch
from torch import nn

from poolattn.dropout import LEVELS, FastDropout, keep_mask, speed_up_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.3, 0.5, 0.9])
def test_keep_rate_in_every_word_of_a_draw(p):
    """Each of the three 16-bit words cut from a draw keeps with probability 1 - p (within 6 standard errors),
    and neighbouring elements are independent (both kept with probability (1 - p)^2)."""
    torch.manual_seed(0)
    n = 3 * 200_000
    keep = keep_mask((n,), p).float()
    q = 1 - round(p * LEVELS) / LEVELS
    for slot in range(3):  # the words of one draw sit at positions 3k, 3k+1, 3k+2
        rate = keep[slot::3].mean().item()
        assert abs(rate - q) < 6 * math.sqrt(q * (1 - q) / (n // 3)), (slot, rate)
    both = (keep[:-1] * keep[1:]).mean().item()
    assert abs(both - q * q) < 6 * math.sqrt(q * q * (1 - q * q) / n)


def test_mask_shape_and_odd_sizes():
    for shape in [(1,), (2,), (4,), (5, 7), (3, 1, 11)]:
        assert keep_mask(shape, 0.2).shape == torch.Size(shape)


def test_dropout_is_unbiased_and_follows_the_seed():
    layer = FastDropout(0.25).train()
    x = torch.ones(400, 500)
    torch.manual_seed(1)
    a = layer(x)
    torch.manual_seed(1)
    b = layer(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, layer(x))
    kept = a != 0
    scale = LEVELS / (LEVELS - round(0.25 * LEVELS))
    assert torch.equal(a[kept], torch.full_like(a[kept], scale))
    assert abs(a.mean().item() - 1.0) < 6 * math.sqrt(0.25 / 0.75 / x.numel())


def test_gradient_is_the_mask_times_the_scale():
    layer = FastDropout(0.4).train()
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    y = layer(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * (LEVELS / (LEVELS - round(0.4 * LEVELS))))


def test_identity_in_eval_and_without_dropout():
    x = torch.randn(8, 16)
    assert torch.equal(FastDropout(0.5).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)


def test_bfloat16_input_stays_bfloat16():
    assert FastDropout(0.1).train()(torch.ones(4, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_speed_up_dropout_replaces_plain_dropout_only():
    model = nn.Sequential(nn.Dropout(0.1), nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.3)), nn.Dropout(0.0))
    model.eval()
    assert speed_up_dropout(model) == 2
    assert isinstance(model[0], FastDropout) and model[0].p == 0.1 and not model[0].training
    assert isinstance(model[1][1], FastDropout) and model[1][1].p == 0.3
    assert type(model[2]) is nn.Dropout  # p = 0 is already free


def test_lora_adapters_use_fast_dropout(tiny_llama):
    from poolattn import EmbeddingModel

    model = EmbeddingModel.from_backbone(tiny_llama)
    model.add_lora(r=4, alpha=8, dropout=0.1)
    drops = [m.lora_dropout["default"] for m in model.backbone.modules() if hasattr(m, "lora_dropout")]
    assert drops and all(isinstance(d, FastDropout) and d.p == 0.1 for d in drops)
