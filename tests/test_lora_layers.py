"""LoRA on the last N decoder layers only: only those layers train, backward stops there, save → load is exact."""

from __future__ import annotations

import re

import numpy as np
import pytest
from training_common import one_thread  # noqa: F401 (autouse fixture)

from poolattn import EmbeddingModel
from poolattn.config import ConfigError
from poolattn.training import load_train_config

TEXTS = ["The quick brown fox.", "Pooling and attention decide it."]


@pytest.mark.parametrize("pooling", ["mean", "multilayer"])
def test_only_the_top_layers_get_adapters(tiny_llama, tmp_path, pooling):
    model = EmbeddingModel.from_backbone(str(tiny_llama), attention="bidirectional", pooling=pooling)
    model.add_lora(r=4, alpha=8, dropout=0.0, top_layers=2)
    adapted = {
        int(m.group(1))
        for n, p in model.named_parameters()
        if p.requires_grad and (m := re.search(r"layers\.(\d+)\.", n))
    }
    assert adapted == {1, 2}  # 3 layers: the last two
    kinds = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if "lora_A" in n}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    loss = model(model.tokenize(TEXTS)).sum()
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert all(g is not None for g in grads)
    model.save(tmp_path / "saved")
    np.testing.assert_array_equal(EmbeddingModel.load(tmp_path / "saved").encode(TEXTS), model.encode(TEXTS))


def test_top_layers_out_of_range_is_refused(tiny_llama):
    model = EmbeddingModel.from_backbone(str(tiny_llama), attention="causal", pooling="eos")
    with pytest.raises(ValueError, match=r"lora\.top_layers = 4: the backbone has 3 decoder layers"):
        model.add_lora(top_layers=4)
    with pytest.raises(ConfigError, match=r"lora\.top_layers"):
        load_train_config(None, ["lora.top_layers=0"])
