"""An exported model as an mteb submission: its complete ModelMeta, a design as an experiment, mteb's mock run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before mteb / huggingface_hub are imported: nothing may be downloaded

import mteb
import numpy as np
import pytest
from mteb.results.task_result import TaskResult

from poolattn import EmbeddingModel
from poolattn.evaluate.mteb_meta import exported_meta, mock_run, weights_identity
from poolattn.st_export import export

EXPERIMENT = {"design": "M5", "attention": "bidirectional", "pooling": "mean"}


@pytest.fixture(scope="module")
def exported(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = EmbeddingModel.from_backbone(tiny_llama, attention="bidirectional", pooling="mean", max_length=128)
    return export(model, tmp_path_factory.mktemp("st") / "m5", instruction="Retrieve semantically similar text.")


def test_model_meta_is_complete(exported: Path) -> None:
    meta = exported_meta(
        exported,
        name="poolattn/tiny-study",
        experiment=EXPERIMENT,
        training_code="https://example.org/poolattn",
        training_data="https://huggingface.co/datasets/yixuantt/ir_data",
    )
    assert meta.revision == weights_identity(exported) and len(meta.revision) == 16
    assert meta.loader is not None and meta.loader_kwargs == {"path": str(exported)}
    assert meta.n_parameters and meta.memory_usage_mb and meta.embed_dim == 32 and meta.max_tokens == 128
    assert meta.release_date and meta.languages == ["eng-Latn"] and meta.open_weights
    assert meta.framework == ["Sentence Transformers", "PyTorch"] and meta.use_instructions
    assert meta.similarity_fn_name.value == "cosine" and meta.license == "not specified"
    assert meta.experiment_name and "M5" in meta.experiment_name
    (exported / "README.md").write_text((exported / "README.md").read_text() + "\nnew scores\n")
    assert weights_identity(exported) == meta.revision  # the model card is not the weights
    with pytest.raises(ValueError, match="experiment pooling='eos', but the folder holds 'mean'"):
        meta.model_copy(update={"experiment_kwargs": {**EXPERIMENT, "pooling": "eos"}}).load_model(device="cpu")


def test_mock_run_passes_and_results_are_filed_as_an_experiment(exported: Path, tmp_path: Path) -> None:
    meta = exported_meta(exported, name="poolattn/tiny-study", experiment=EXPERIMENT)
    results = mock_run(meta)
    ran = {name: status for name, status in results.items() if status is not None}
    print(results.to_markdown())
    assert results.all_passed and len(ran) >= 7
    for name in ("MockSTSTask", "MockRetrievalTask", "MockClassificationTask", "MockSummarizationTask"):
        assert isinstance(ran[name], TaskResult) and np.isfinite(ran[name].get_score()), name
    model = meta.load_model(device="cpu")
    model.mteb_model_meta = meta
    (task,) = [t for t in mteb.mocks.ALL_MOCK_TASK_TEST_GRID if t.metadata.name == "MockSTSTask"]
    mteb.evaluate(model, [task], cache=mteb.ResultCache(cache_path=tmp_path), show_progress_bar=False)
    (path,) = tmp_path.rglob("MockSTSTask.json")
    assert path.parent.parent.name == "experiments" and path.parent.name == meta.experiment_name
    assert meta.revision in path.parts
