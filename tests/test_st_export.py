"""The portable export: a self-contained sentence-transformers folder (weights in, no local paths, files 0644, a
model card) that gives poolattn's vectors on another machine, where poolattn is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from poolattn import EmbeddingModel
from poolattn.st_export import MODULE_FILE, ExportError, export

TEXTS = ["the quick brown fox", "pooling and attention " * 12, "", "a cat?"]
INSTRUCTION = "Retrieve semantically similar text."
#: Loads an exported folder in a process where poolattn cannot be imported, and saves its vectors.
LOADER = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoPoolattn(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "poolattn" or name.startswith("poolattn."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, NoPoolattn())
    sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
    try:
        import poolattn  # noqa: F401
        raise SystemExit("poolattn is importable")
    except ModuleNotFoundError:
        pass

    import numpy as np
    from sentence_transformers import SentenceTransformer

    folder, out, trust = sys.argv[1], sys.argv[2], sys.argv[3] == "trust"
    model = SentenceTransformer(folder, trust_remote_code=trust)
    texts = json.loads(sys.argv[4])
    np.save(out + "-doc.npy", model.encode(texts, convert_to_numpy=True))
    np.save(out + "-query.npy", model.encode_query(texts, convert_to_numpy=True))
    print(json.dumps({"modules": [type(m).__name__ for m in model], "max_seq_length": model.max_seq_length,
                      "similarity": model.similarity_fn_name, "prompts": model.prompts}))
    """
)


def load_elsewhere(folder: Path, tmp_path: Path, *, trust: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Copy the export to a new place and load it in a fresh ``python -I`` where poolattn cannot be imported."""
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, moved)
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, "-I", "-c", LOADER, str(moved), str(tmp_path / "vecs"), "trust" if trust else "plain"]
    done = subprocess.run([*args, json.dumps(TEXTS)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return np.load(tmp_path / "vecs-doc.npy"), np.load(tmp_path / "vecs-query.npy"), info


def check_portable(folder: Path, local_paths: list[Path]) -> None:
    """Every file 0644 and folder 0755; no text file names a local path."""
    for path in [folder, *folder.rglob("*")]:
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
        if path.suffix in (".json", ".md", ".py", ".jinja", ".txt"):
            text = path.read_text()
            for local in local_paths:
                assert str(local) not in text, (path, local)


@pytest.mark.parametrize(
    ("attention", "pooling", "standard"),
    [("causal", "eos", True), ("bidirectional", "trainable", False)],
    ids=["causal-eos", "bidirectional-trainable"],
)
def test_export_loads_elsewhere_without_poolattn(tiny_llama, tmp_path, attention, pooling, standard):
    model = EmbeddingModel.from_backbone(tiny_llama, attention=attention, pooling=pooling, max_length=64, seed=3)
    expected_doc = model.encode(TEXTS)
    expected_query = model.encode(TEXTS, instruction=INSTRUCTION)
    folder = export(model, tmp_path / "exported", instruction=INSTRUCTION)

    check_portable(folder, [tiny_llama, tiny_llama.resolve(), tmp_path, Path.home()])
    assert (folder / "model.safetensors").is_file()  # the backbone's weights travel with it
    assert (folder / MODULE_FILE).is_file() is not standard
    modules = [m["type"] for m in json.loads((folder / "modules.json").read_text())]
    if standard:
        assert modules == [f"sentence_transformers.models.{m}" for m in ("Transformer", "Pooling", "Normalize")]
    else:
        assert modules == ["poolattn_module.PoolattnEmbedding", "sentence_transformers.models.Normalize"]

    doc, query, info = load_elsewhere(folder, tmp_path, trust=not standard)
    doc_diff = float(np.abs(doc - expected_doc).max())
    query_diff = float(np.abs(query - expected_query).max())
    print(f"{attention}-{pooling}: max abs diff documents {doc_diff:.2e}, queries {query_diff:.2e}")
    assert doc_diff <= 1e-5 and query_diff <= 1e-5
    assert info["max_seq_length"] == 64 and info["similarity"] == "cosine"
    assert info["prompts"]["query"] == f"Instruct: {INSTRUCTION}\nQuery: "


def test_standard_export_needs_no_remote_code(tiny_llama, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = EmbeddingModel.from_backbone(tiny_llama, attention="causal", pooling="mean", max_length=16)
    folder = export(model, tmp_path / "st")
    st = SentenceTransformer(str(folder))  # trust_remote_code=False
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), rtol=0, atol=1e-5)
    settings = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert set(settings["__version__"]) >= {"sentence_transformers", "transformers", "pytorch", "poolattn"}
    custom = EmbeddingModel.from_backbone(tiny_llama, attention="bidirectional", pooling="mean")
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(export(custom, tmp_path / "custom")))


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("pooling", ["eos", "mean", "weighted_mean", "latent", "trainable", "multilayer"])
def test_every_design_gives_poolattns_vectors(tiny_llama, tmp_path, attention, pooling):
    from sentence_transformers import SentenceTransformer

    extra = {"pool_instruction": False} if pooling == "mean" and attention == "causal" else {}
    model = EmbeddingModel.from_backbone(tiny_llama, attention=attention, pooling=pooling, max_length=64, **extra)
    folder = export(model, tmp_path / "st", instruction=INSTRUCTION)
    st = SentenceTransformer(str(folder), trust_remote_code=(folder / MODULE_FILE).is_file())
    np.testing.assert_allclose(st.encode(TEXTS), model.encode(TEXTS), rtol=0, atol=1e-5)
    query = model.encode(TEXTS, instruction=INSTRUCTION)
    np.testing.assert_allclose(st.encode_query(TEXTS), query, rtol=0, atol=1e-5)


def test_lora_is_merged_and_no_adapter_path_travels(tiny_llama, tmp_path):
    model = EmbeddingModel.from_backbone(tiny_llama, attention="causal", pooling="eos")
    model.add_lora(r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, param in model.backbone.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained adapter, so merging matters
    model.save(tmp_path / "trained")
    loaded = EmbeddingModel.load(tmp_path / "trained")
    expected = loaded.encode(TEXTS)
    assert not np.allclose(expected, EmbeddingModel.from_backbone(tiny_llama).encode(TEXTS), atol=1e-3)
    folder = export(loaded, tmp_path / "st")
    assert not (folder / "adapter_config.json").exists()
    check_portable(folder, [tiny_llama, tiny_llama.resolve(), tmp_path])
    from sentence_transformers import SentenceTransformer

    np.testing.assert_allclose(SentenceTransformer(str(folder)).encode(TEXTS), expected, rtol=0, atol=1e-5)


def test_model_card_names_base_design_training_and_scores(tiny_llama, tmp_path):
    (tiny_llama_copy := tmp_path / "base").mkdir()
    for path in tiny_llama.iterdir():
        shutil.copy(path, tiny_llama_copy / path.name)
    (tiny_llama_copy / "README.md").write_text("---\nlicense: mit\n---\n# a base\n")
    cell = tmp_path / "study" / "cells" / "M2-s0"
    model = EmbeddingModel.from_backbone(tiny_llama_copy, attention="bidirectional", pooling="trainable")
    model.save(cell / "train" / "model")
    (cell / "cell.json").write_text("{}")
    summary = {"records": 64, "steps": 5, "final_loss": 1.25, "config": {"data": {"path": "default"}}}
    (cell / "train" / "model" / "train_summary.json").write_text(json.dumps(summary))
    (cell / "eval").mkdir()
    result = {"task": "WordSim353STS", "category": "sts", "main_metric": "cosine_spearman", "main_score": 0.4321}
    (cell / "eval" / "WordSim353STS.json").write_text(json.dumps(result))

    folder = export(EmbeddingModel.load(cell / "train" / "model"), tmp_path / "st")
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: sentence-transformers\n") and "license: mit" in card
    assert "`base`" in card and "bidirectional attention, `trainable` pooling" in card
    assert "built-in training set `default` (64 pairs, 5 steps, final loss 1.2500)" in card
    assert "| WordSim353STS | sts | cosine_spearman | 0.4321 |" in card
    assert 'SentenceTransformer("st", trust_remote_code=True)' in card
    check_portable(folder, [tmp_path])


def test_export_refuses_to_write_over_other_files(tiny_llama, tmp_path):
    model = EmbeddingModel.from_backbone(tiny_llama)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists and is not empty"):
        export(model, tmp_path / "busy", overwrite=True)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    export(model, tmp_path / "st")
    with pytest.raises(ExportError, match="--overwrite replaces an earlier export"):
        export(model, tmp_path / "st")
    export(model, tmp_path / "st", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "st"]  # no temporary folder left


def test_mteb_model_meta_is_filled(tiny_llama, tmp_path):
    from poolattn.evaluate.mteb_adapter import MTEBEncoder

    folder = tmp_path / "m"
    EmbeddingModel.from_backbone(tiny_llama, pooling="mean", max_length=48).save(folder)
    (folder / "train_summary.json").write_text(json.dumps({"config": {"data": {"path": "default"}}}))
    model = EmbeddingModel.load(folder)
    meta = MTEBEncoder(model).mteb_model_meta
    assert meta.n_parameters == sum(p.numel() for p in model.parameters())
    assert (meta.embed_dim, meta.max_tokens, meta.training_datasets) == (model.dim, 48, set())
    assert meta.adapted_from == tiny_llama.name and meta.license is None  # the tiny base has no model card
