"""What is known about a model besides its weights, for model cards and mteb's model metadata: the base model (as a
hub id or a folder name, never a local path) and its licence, the model's size, what it was trained on and how it
scored. Nothing here loads a model; a missing or unreadable record means "not known"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import assets
from .io import read_json

#: Written by ``poolattn train`` into the model folder.
TRAIN_SUMMARY = "train_summary.json"


def packaged_asset(backbone: str) -> assets.Asset | None:
    """The packaged model asset ``backbone`` names (``default``, ``gemma3``...) or is the converted folder of."""
    if backbone in assets.BACKBONE_ALIASES:
        return assets.ASSETS[assets.BACKBONE_ALIASES[backbone]]
    path = Path(backbone).expanduser()
    models = assets.cache_dir() / "models"
    if path.parent.resolve() == models.resolve() and path.name in assets.ASSETS:
        return assets.ASSETS[path.name]
    return None


def readme_license(readme: str | Path | None) -> str | None:
    """The ``license:`` of a model card's YAML front matter."""
    try:
        lines = Path(readme).read_text(encoding="utf-8").splitlines() if readme else []
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None


def base_model(backbone: str) -> tuple[str, str | None]:
    """The base model's name as others can find it (a hub id, or a local folder's name) and its licence if known."""
    if asset := packaged_asset(backbone):
        return asset.base_model or asset.name, asset.license or None
    path = Path(backbone).expanduser()
    if path.is_dir():
        return path.name, readme_license(path / "README.md")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(backbone, "README.md")
    return backbone, readme_license(cached if isinstance(cached, str) else None)


def training(folder: str | Path | None) -> dict[str, Any] | None:
    """What the model saved in ``folder`` was trained on and how (from its train summary); ``None`` when unknown.
    A training file is named by its file name only."""
    summary = read_json(Path(folder) / TRAIN_SUMMARY) if folder else None
    if not summary:
        return None
    config = summary.get("config") or {}
    data, recipe = config.get("data") or {}, config.get("recipe") or {}
    source = str(data.get("path", ""))
    return {
        "data": source if builtin_data(source) else Path(source).name,
        "builtin_data": builtin_data(source),
        "n_pairs": data.get("n_pairs"),
        "records": summary.get("records"),
        "instruction": data.get("instruction"),
        "steps": summary.get("steps"),
        "finetune": recipe.get("finetune"),
        "final_loss": summary.get("final_loss"),
    }


def builtin_data(path: str) -> bool:
    """Whether a training ``data.path`` names poolattn's built-in sets (made from shipped data), not a file."""
    return bool(path) and "/" not in path and "." not in path


def stored_scores(folder: str | Path | None, results: str | Path | None = None) -> list[dict[str, Any]]:
    """Per-task scores of the model: the JSON results in ``results``, else those a study stored beside the model
    (``cells/<cell>/eval`` for ``cells/<cell>/train/model``). Each: task, category, metric, score."""
    where = Path(results) if results else None
    if where is None and folder is not None:
        cell = Path(folder).resolve().parent.parent
        where = cell / "eval" if (cell / "cell.json").is_file() else None
    scores = []
    for path in sorted(where.glob("*.json")) if where and where.is_dir() else []:
        record = read_json(path)
        if record and isinstance(record.get("main_score"), int | float) and "task" in record:
            metric = record.get("main_metric", "")
            scores.append(
                {
                    "task": record["task"],
                    "category": record.get("category", ""),
                    "metric": metric,
                    "score": float(record["main_score"]),
                }
            )
    return scores


def describe(encoder: Any) -> dict[str, Any]:
    """mteb ``ModelMeta`` fields of an encoder: ``n_parameters``, ``embed_dim``, ``max_tokens``, ``license``,
    ``adapted_from`` and ``training_datasets`` (the mteb data sets it was trained on: none for an untrained model or
    poolattn's built-in training sets, which share no text with any evaluation task; ``None`` when not known). The
    training record is read from the folder the model was loaded from (``encoder.folder``)."""
    module = encoder if callable(getattr(encoder, "parameters", None)) else getattr(encoder, "model", None)
    n_parameters = sum(p.numel() for p in module.parameters()) if module is not None else None
    config = getattr(encoder, "config", None)
    info: dict[str, Any] = {
        "n_parameters": n_parameters,
        "embed_dim": getattr(encoder, "dim", None),
        "max_tokens": getattr(config, "max_length", None) or getattr(encoder, "max_length", None),
    }
    backbone = getattr(config, "backbone", None)
    if isinstance(backbone, str):
        info["adapted_from"], info["license"] = base_model(backbone)
    trained = training(getattr(encoder, "folder", None))
    info["training_datasets"] = set() if trained is not None and trained["builtin_data"] else None
    return info
