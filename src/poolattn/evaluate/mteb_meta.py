"""mteb's model metadata for an exported poolattn model, ready for a results submission.

:func:`exported_meta` builds a complete ``ModelMeta`` from a folder written by :func:`poolattn.st_export.export`:
the loader (:func:`load_exported`), revision = the identity of the weights (a hash of every file but the model
card), release date, languages, parameters, memory, max tokens, embedding size, licence, open weights, training
code and data, framework, similarity function, instructions and training data sets. Each design of a study is an
mteb *experiment* of one model (``experiment`` → ``experiment_kwargs``; mteb files its results under
``<model>/<revision>/experiments/<name>/``). :func:`mock_run` is ``mteb mock-run`` for such a folder, offline.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from mteb.types import Licenses

from .. import modelinfo
from ..st_module import CONFIG_NAME

#: The files that are not the model (re-written with new scores without changing a vector).
NOT_WEIGHTS = {"README.md"}


def weights_identity(folder: str | os.PathLike[str]) -> str:
    """A hash of every file of an exported folder but its model card: its revision for mteb."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in NOT_WEIGHTS):
        digest.update(f"{path.relative_to(root).as_posix()}\x00".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def needs_remote_code(folder: str | os.PathLike[str]) -> bool:
    """Whether the export uses poolattn's custom module (loaded with ``trust_remote_code``)."""
    return (Path(folder) / CONFIG_NAME).is_file()


def load_exported(
    model_name: str,
    revision: str | None = None,
    *,
    path: str | None = None,
    device: str | None = None,
    **experiment: Any,
) -> SentenceTransformerEncoderWrapper:
    """mteb loader of an exported folder (``path``, else ``model_name`` from the hub); ``experiment`` (the design's
    settings, mteb passes them on) must match the folder's own design where it records one."""
    source = path or model_name
    folder = Path(source)
    if folder.is_dir():
        recorded = read_design(folder)
        wrong = {k: v for k, v in experiment.items() if k in recorded and recorded[k] != v}
        if wrong:
            key = next(iter(wrong))
            raise ValueError(f"{source}: experiment {key}={wrong[key]!r}, but the folder holds {recorded[key]!r}")
    remote = needs_remote_code(folder) if folder.is_dir() else True
    return SentenceTransformerEncoderWrapper(
        source, revision=None if folder.is_dir() else revision, device=device, trust_remote_code=remote
    )


def read_design(folder: Path) -> dict[str, Any]:
    """The attention and pooling recorded in an export (custom module's settings; mean / last-token otherwise)."""
    custom = folder / CONFIG_NAME
    if custom.is_file():
        config = json.loads(custom.read_text())
        return {"attention": config["attention"], "pooling": config["pooling"]}
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text()) if (folder / "1_Pooling").is_dir() else {}
    modes = {"pooling_mode_lasttoken": "eos", "pooling_mode_mean_tokens": "mean"}
    mode = next((v for k, v in modes.items() if pooling.get(k)), None)
    return {"attention": "causal", **({"pooling": mode} if mode else {})}


def exported_meta(
    folder: str | os.PathLike[str],
    *,
    name: str,
    model: Any = None,
    source: str | os.PathLike[str] | None = None,
    experiment: Mapping[str, Any] | None = None,
    release_date: str | None = None,
    languages: list[str] | None = None,
    training_code: str | None = None,
    training_data: str | None = None,
    training_datasets: set[str] | None = None,
    reference: str | None = None,
) -> ModelMeta:
    """The complete ``ModelMeta`` of the exported ``folder``, published as ``name`` (``org/model``).

    ``model``: the folder loaded as a ``SentenceTransformer`` (loaded here when not given: parameters, memory and
    embedding size are counted on it). ``source``: the poolattn model folder it was exported from (its training
    record gives the training data; a study's cell folder works). ``experiment``: the design's settings (an mteb
    experiment of ``name``). ``release_date`` defaults to the weights' date; ``languages`` to English; the training
    data to the hub dataset it was trained on (a built-in set is shipped with poolattn: no mteb data set)."""
    root = Path(folder)
    if model is None:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(root), device="cpu", trust_remote_code=needs_remote_code(root))
    parameters = list(model.parameters())
    settings = json.loads((root / "config_sentence_transformers.json").read_text())
    base, licence = modelinfo.base_model(str(model_backbone(root) or name))
    licence = modelinfo.readme_license(root / "README.md") or licence
    trained = modelinfo.training(source)
    if training_data is None and trained is not None and not trained["builtin_data"]:
        training_data = hub_dataset_url(trained["data"])
    if training_datasets is None and trained is not None and trained["builtin_data"]:
        training_datasets = set()  # poolattn's built-in sets share no text with any mteb task
    weights = max((p.stat().st_mtime for p in root.glob("*.safetensors")), default=None)
    date = release_date or (dt.date.fromtimestamp(weights).isoformat() if weights else dt.date.today().isoformat())
    return ModelMeta(
        loader=load_exported,
        loader_kwargs={"path": str(root)},
        name=name,
        revision=weights_identity(root),
        release_date=date,
        languages=languages or ["eng-Latn"],
        n_parameters=sum(p.numel() for p in parameters),
        memory_usage_mb=round(sum(p.numel() * p.element_size() for p in parameters) / 2**20, 2),
        max_tokens=model.max_seq_length,
        embed_dim=model.get_sentence_embedding_dimension() or int(model.encode(["probe"]).shape[1]),
        license=licence if licence in get_args(Licenses) else "not specified",
        open_weights=True,
        public_training_code=training_code,
        public_training_data=training_data,
        framework=["Sentence Transformers", "PyTorch"],
        reference=reference,
        similarity_fn_name=ScoringFunction.COSINE,
        use_instructions=bool(settings.get("prompts", {}).get("query")),
        training_datasets=training_datasets,
        adapted_from=base if base != name else None,
        experiment_kwargs=dict(experiment) if experiment else None,
    )


def model_backbone(folder: Path) -> str | None:
    """The base model an export names in its model card (``base_model:``), if any."""
    readme = folder / "README.md"
    for line in readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else []:
        key, _, value = line.partition(":")
        if key.strip() == "base_model" and value.strip():
            return value.strip()
    return None


def hub_dataset_url(data: str) -> str | None:
    """A hub dataset id as its page; a local file name is not public data (None)."""
    return f"https://huggingface.co/datasets/{data}" if data.count("/") == 1 and not Path(data).suffix else None


def mock_run(meta: ModelMeta, device: str = "cpu") -> Any:
    """``mteb mock-run`` for ``meta``'s model: every mock task compatible with it, offline (``MockRunResults``)."""
    import mteb

    model = meta.load_model(device=device)
    model.mteb_model_meta = meta  # the wrapper's own meta is an empty one named after the folder
    return mteb.mock_run(model)
