"""Export a model as a self-contained sentence-transformers folder that works on any machine.

* Designs that sentence-transformers' own modules express exactly — causal attention with ``eos`` (last-token)
  pooling, or ``mean`` pooling that includes the instruction — become ``Transformer`` + ``Pooling`` +
  ``Normalize``, with a tokenizer that appends the EOS as poolattn does: ``SentenceTransformer(folder)`` loads it,
  no custom code runs.
* Every other design (bidirectional attention, trainable heads, position-weighted means, pooling without the
  instruction) is one custom module followed by ``Normalize``. Its code, :mod:`poolattn.st_module`, is written into
  the folder (``poolattn_module.py``) and needs torch, transformers and sentence-transformers only:
  ``SentenceTransformer(folder, trust_remote_code=True)``, with or without poolattn installed.

The backbone's weights are in the folder (a LoRA adapter merged in), no file names a local path, every file is
0644. ``config_sentence_transformers.json`` holds the query prompt (the instruction in poolattn's template), so
``encode_query`` / ``encode_document`` embed as poolattn does, and ``similarity_fn_name`` (cosine); a README.md
model card (base model, design, training data, scores) makes the folder ready for the Hub.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import modelinfo, st_module
from ._version import __version__
from .io import load_json_object
from .outputs import install, read_marker, user_entries
from .targets import kind_of, make_temp

#: The custom module's file name inside an exported folder (its ``modules.json`` type is ``poolattn_module.*``).
MODULE_FILE = "poolattn_module.py"
MODULE_TYPE = "poolattn_module.PoolattnEmbedding"
#: The query instruction when none is given and the training record names none.
DEFAULT_QUERY_INSTRUCTION = "Retrieve semantically similar text."
LEGACY = "sentence_transformers.models"  # module paths every sentence-transformers version resolves


class ExportError(ValueError):
    """A model or target folder that cannot be exported as asked."""


def standard_pooling(model: Any) -> str | None:
    """The sentence-transformers pooling mode that reproduces the model exactly (``lasttoken`` | ``mean``), or
    ``None`` when the design needs the custom module."""
    config = model.config
    if config.attention != "causal":
        return None
    if config.pooling == "eos":
        return "lasttoken"
    if config.pooling == "mean" and config.pool_instruction:
        return "mean"
    return None


def query_prompt(model: Any, instruction: str) -> str:
    """The prefix poolattn's instruction template puts before a text (sentence-transformers' prompts are prefixes)."""
    template = model.config.instruction_template
    if not template.endswith("{text}"):
        raise ExportError(f"instruction_template {template!r} puts text after the query; a prompt cannot express it")
    return template[: -len("{text}")].format(instruction=instruction)


def export(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    instruction: str | None = None,
    results: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (an ``EmbeddingModel``) into ``folder`` as a self-contained sentence-transformers model.

    ``instruction``: the query instruction ``encode_query`` applies (default: the one it was trained with, else
    :data:`DEFAULT_QUERY_INSTRUCTION`). ``results``: a folder of per-task results for the model card (default:
    those a study stored beside the model). ``folder`` must be new or empty unless ``overwrite`` (then only the
    files an earlier export wrote are replaced or removed; anything else in the folder stays). A LoRA adapter is
    merged into the model's backbone (its vectors stay the same). The export is written beside its target and
    moved into place.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no bar for writing one shard
    target = Path(folder)
    check_target(target, overwrite)
    check_results(results)
    source = getattr(model, "folder", None)
    trained = modelinfo.training(source)
    instruction = instruction or (trained or {}).get("instruction") or DEFAULT_QUERY_INSTRUCTION
    prompt = query_prompt(model, instruction)
    model.merge_adapter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp(target, folder=True)
    try:
        model.backbone.save_pretrained(tmp)
        pooling = standard_pooling(model)
        if pooling is not None and not write_standard(model, tmp, pooling):
            pooling = None  # the tokenizer cannot be made to append the EOS: the custom module tokenises instead
        if pooling is None:
            write_custom(model, tmp)
        settings = {
            "__version__": versions(),
            "model_type": "SentenceTransformer",
            "prompts": {"query": prompt, "document": ""},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        }
        write_text(tmp / "config_sentence_transformers.json", json.dumps(settings, indent=2) + "\n")
        scores = modelinfo.stored_scores(source, results)
        write_text(tmp / "README.md", model_card(model, target.name, pooling, instruction, prompt, trained, scores))
        local = [model.config.backbone, str(source or ""), str(tmp.resolve()), str(target.resolve())]
        make_portable(tmp, [*local, *(str(Path(p).resolve()) for p in local if p)])
        install(tmp, target, "export")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse to write anywhere but a new or empty folder, or (``overwrite``) a folder an earlier export marked."""
    kind = kind_of(target)
    if kind is None:
        return
    if kind != "folder":
        raise ExportError(f"{target} is a {kind}; choose a folder to export into")
    if not user_entries(target):
        return
    earlier = (read_marker(target) or {}).get("command") == "export"
    if earlier and overwrite:
        return
    if earlier:
        hint = " (--overwrite replaces an earlier export)"
    elif (target / "modules.json").is_file():
        hint = " (it holds an export with no record of the files it wrote: remove it yourself to replace it)"
    else:
        hint = ""
    raise ExportError(f"{target} already exists and is not empty; choose a new folder{hint}")


def check_results(results: str | os.PathLike[str] | None) -> None:
    """Refuse a ``results`` folder that is missing, holds a damaged JSON file, or no evaluation result."""
    if results is None:
        return
    folder = Path(results)
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such folder of evaluation results (--results)")
    for path in sorted(folder.glob("*.json")):
        load_json_object(path)  # a ValueError naming the file, line and column
    if not modelinfo.stored_scores(None, folder):
        raise ExportError(f"{folder}: no evaluation result (a JSON file with 'task' and 'main_score') to report")


def write_standard(model: Any, folder: Path, pooling: str) -> bool:
    """Transformer + Pooling + Normalize; ``False`` (nothing of the tokenizer kept) when the saved tokenizer does
    not tokenise exactly as poolattn does."""
    from transformers import AutoTokenizer

    tokenizer = eos_appending(model.tokenizer, model.config.max_length)
    tokenizer.save_pretrained(folder)
    reloaded = AutoTokenizer.from_pretrained(folder)
    probes = [
        "",
        "a",
        "Embedding models pool the states of a decoder.",
        " ".join(["word"] * 4 * model.config.max_length),
    ]
    expected = [item.ids for item in model.tokenize_texts(probes)]
    got = reloaded(probes, truncation=True, max_length=model.config.max_length)["input_ids"]
    if got != expected or reloaded.padding_side != "right":
        for path in folder.iterdir():
            if path.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab", "merges")):
                path.unlink()
        return False
    dim = model.backbone.config.hidden_size
    write_json(
        folder / "sentence_bert_config.json", {"max_seq_length": model.config.max_length, "do_lower_case": False}
    )
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    chosen = "mean_tokens" if pooling == "mean" else "lasttoken"
    pooling_config = {"word_embedding_dimension": dim, **{f"pooling_mode_{m}": m == chosen for m in modes}}
    (folder / "1_Pooling").mkdir()
    write_json(folder / "1_Pooling" / "config.json", {**pooling_config, "include_prompt": True})
    (folder / "2_Normalize").mkdir()
    write_json(folder / "2_Normalize" / "config.json", {})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": f"{LEGACY}.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{LEGACY}.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{LEGACY}.Normalize"},
    ]
    write_json(folder / "modules.json", modules)
    return True


def eos_appending(tokenizer: Any, max_length: int) -> Any:
    """A copy of ``tokenizer`` whose special tokens end every text with one EOS (as poolattn appends it), padding
    on the right, truncating to ``max_length`` tokens."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tokenizer)
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), None)
    if start is None:
        return tokenizer  # the probe check refuses it
    eos = tokenizer.eos_token_id
    suffix = full[start + len(plain) :]
    suffix = suffix[:-1] if suffix and suffix[-1] == eos else suffix
    prefix, suffix = full[:start], [*suffix, eos]
    tokens = {i: tokenizer.convert_ids_to_tokens(i) for i in {*prefix, *suffix}}
    single = [tokens[i] for i in prefix] + ["$A"] + [tokens[i] for i in suffix]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=single, pair=[*single, "$B", tokens[eos]], special_tokens=sorted((t, i) for i, t in tokens.items())
    )
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = max_length
    return tokenizer


def write_custom(model: Any, folder: Path) -> None:
    """The custom module (its code, config and head weights) + Normalize."""
    from safetensors.torch import save_file

    model.tokenizer.save_pretrained(folder)
    shutil.copyfile(Path(st_module.__file__), folder / MODULE_FILE)
    pooler = model.pooler
    head = head_config(pooler)
    if model.config.pooling in st_module.HEADS:
        state = {k: v.detach().contiguous().cpu() for k, v in pooler.state_dict().items()}
        save_file(state, folder / st_module.HEAD_WEIGHTS)
    config = {
        "attention": model.config.attention,
        "pooling": model.config.pooling,
        "max_length": model.config.max_length,
        "pool_instruction": model.config.pool_instruction,
        "head": head,
    }
    write_json(folder / st_module.CONFIG_NAME, config)
    (folder / "1_Normalize").mkdir()
    write_json(folder / "1_Normalize" / "config.json", {})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": MODULE_TYPE},
        {"idx": 1, "name": "1", "path": "1_Normalize", "type": f"{LEGACY}.Normalize"},
    ]
    write_json(folder / "modules.json", modules)


def head_config(pooler: Any) -> dict[str, Any]:
    """The resolved head settings :class:`poolattn.st_module.Pooler` takes (sizes, inputs, layers, reductions)."""
    head: dict[str, Any] = {}
    if pooler.name in st_module.HEADS:
        head["size"] = pooler.size.as_dict()
    if pooler.name == "trainable":
        head["inputs"] = pooler.inputs
    if pooler.name == "multilayer":
        head.update(layers=list(pooler.layers), layer_reduction=pooler.layer_reduction(), layer_norm=pooler.layer_norm)
    return head


def versions() -> dict[str, str]:
    import sentence_transformers
    import torch
    import transformers

    return {
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "pytorch": torch.__version__,
        "poolattn": __version__,
    }


def write_json(path: Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def make_portable(folder: Path, local_paths: list[str]) -> None:
    """Files 0644, folders 0755; refuse the folder if a text file names one of the ``local_paths`` (the backbone's
    and the model's folders, the export's own), which would not exist on another machine."""
    paths = sorted({p for p in local_paths if p and Path(p).is_absolute() and p != "/"}, key=len, reverse=True)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if path.is_file() and path.suffix in (".json", ".md", ".py", ".txt", ".jinja"):
            text = path.read_text(encoding="utf-8", errors="replace")
            if found := next((p for p in paths if p in text), None):
                raise ExportError(f"{path.relative_to(folder)} names the local path {found}; it would not travel")


def model_card(
    model: Any,
    name: str,
    pooling: str | None,
    instruction: str,
    prompt: str,
    trained: dict[str, Any] | None,
    scores: list[dict[str, Any]],
) -> str:
    """A README.md for the Hub: front matter, how to load it, design, training data, scores."""
    config = model.config
    base, license_id = modelinfo.base_model(config.backbone)
    custom = pooling is None
    front = ["---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity"]
    if "/" in base:
        front.append(f"base_model: {base}")
    if license_id:
        front.append(f"license: {license_id}")
    front += ["tags:", "- sentence-transformers", "- feature-extraction", "- sentence-similarity", "- poolattn", "---"]
    load = f'SentenceTransformer("{name}"{", trust_remote_code=True" if custom else ""})'
    modules = (
        f"`PoolattnEmbedding` (custom code in `{MODULE_FILE}`: torch, transformers and sentence-transformers only) + "
        "`Normalize`; loading it runs that file, hence `trust_remote_code=True`"
        if custom
        else f"`Transformer` + `Pooling` ({pooling}) + `Normalize`: standard modules, no custom code"
    )
    options = json.dumps(config.pooling_options, sort_keys=True) if config.pooling_options else "none"
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        f"A text-embedding model made with [poolattn](https://pypi.org/project/poolattn/) {__version__} from the "
        f"decoder-only LLM `{base}`: {config.attention} attention, `{config.pooling}` pooling, "
        f"{model.dim}-dimensional L2-normalised embeddings compared by cosine similarity.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = {load}",
        'queries = model.encode_query(["how do decoders become embedding models?"])',
        'documents = model.encode_document(["Pooling turns token states into one vector."])',
        "print(model.similarity(queries, documents))",
        "```",
        "",
        f"`encode_query` puts the query instruction before each text: `{instruction}` (poolattn's template "
        f"`{config.instruction_template!r}`); pass `prompt=` for another task. Documents are embedded as they are.",
        "",
        "## Design",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base}`{f' ({license_id})' if license_id else ''} |",
        f"| attention | {config.attention} |",
        f"| pooling | {config.pooling} (options: {options}; instruction tokens pooled: {config.pool_instruction}) |",
        f"| embedding dimension | {model.dim} |",
        f"| max sequence length | {config.max_length} tokens (longer texts are cut; the EOS is kept last) |",
        f"| weights | {config.dtype}, {sum(p.numel() for p in model.parameters()):,} parameters |",
        f"| modules | {modules} |",
        "",
        "## Training",
        "",
        *training_lines(trained),
        "",
        "## Scores",
        "",
        *score_lines(scores),
        "",
    ]
    return "\n".join(lines)


def training_lines(trained: dict[str, Any] | None) -> list[str]:
    if trained is None:
        return ["Not trained by poolattn (or its training record was not kept): the base model with this design."]
    data = trained["data"]
    kind = "poolattn's built-in training set" if trained["builtin_data"] else "the file"
    lines = [f"Contrastive training (in-batch negatives) on {kind} `{data}`"]
    details = [
        f"{trained['records']} pairs" if trained.get("records") else None,
        f"{trained['steps']} steps" if trained.get("steps") else None,
        f"fine-tuning: {trained['finetune']}" if trained.get("finetune") else None,
        f"final loss {trained['final_loss']:.4f}" if isinstance(trained.get("final_loss"), int | float) else None,
    ]
    lines[0] += f" ({', '.join(d for d in details if d)})." if any(details) else "."
    if trained["builtin_data"]:
        lines.append("The built-in sets are made from shipped data and share no text with any evaluation task.")
    return lines


def score_lines(scores: list[dict[str, Any]]) -> list[str]:
    if not scores:
        return ["Not evaluated yet (`poolattn eval` scores a model on the offline suite or on MTEB)."]
    rows = [f"| {s['task']} | {s['category']} | {s['metric']} | {s['score']:.4f} |" for s in scores]
    return ["| task | category | metric | score |", "|---|---|---|---|", *rows]
