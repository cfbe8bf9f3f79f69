"""Export to a sentence-transformers folder: one custom module that wraps the saved EmbeddingModel.

``SentenceTransformer(folder)`` imports :class:`PoolattnModule` (poolattn must be installed), which tokenises
exactly as poolattn does (EOS appended, instruction template) and returns the same L2-normalised vectors. An ST
``prompt`` is used as the poolattn instruction.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODULE_TYPE = "poolattn.st_export.PoolattnModule"


class PoolattnModule(nn.Module):
    """A sentence-transformers input module backed by an EmbeddingModel."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    @property
    def modalities(self) -> list[str]:
        return ["text"]

    def preprocess(self, inputs: list[str], prompt: str | None = None, **_: Any) -> dict[str, torch.Tensor]:
        batch = self.model.tokenize(list(inputs), instruction=prompt or None)
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask, "pool_mask": batch.pool_mask}

    def tokenize(self, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        return self.preprocess(texts, **kwargs)

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from .model import Batch

        batch = Batch(features["input_ids"], features["attention_mask"], features["pool_mask"])
        features["sentence_embedding"] = self.model(batch)
        return features

    def get_embedding_dimension(self) -> int:
        return self.model.dim

    get_sentence_embedding_dimension = get_embedding_dimension

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        self.model.save(output_path)

    @staticmethod
    def load(input_path: str) -> PoolattnModule:
        from .model import EmbeddingModel

        return PoolattnModule(EmbeddingModel.load(input_path))


def export(model: Any, folder: Path) -> Path:
    """Save ``model`` into ``folder`` with the files sentence-transformers reads."""
    model.save(folder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPE}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    settings = {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(settings, indent=2))
    return folder
