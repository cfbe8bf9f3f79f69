"""The commands that embed, train, adapt, evaluate and study: ``encode``, ``train``, ``adapt``, ``eval``,
``experiment`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .base import (
    COMPILE_HELP,
    DTYPE_HELP,
    MODEL_HELP,
    PRECISION_HELP,
    TRUST_HELP,
    GpuOption,
    GpusOption,
    MfuOption,
    ParamsOption,
    PlanFlag,
    TokensOption,
    app,
    check_precision,
    console,
    fail,
    open_model,
    print_plan,
    run_training_job,
)


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
    from ..outputs import check_free_space, write_error
    from ..targets import OutputError
    from ..textio import InputError, check_output, output_bytes, output_format, read_texts, write_embeddings

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
            precision=precision,
        )
    except (ValueError, OSError) as err:
        fail(str(err))
    from ..backbone import autocast_precision

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
        "    poolattn train configs/train_paper.toml --plan --gpu h100 --gpus 8 --params family=mistral\n\n"
        "    accelerate launch --num_processes 8 -m poolattn train configs/train_paper.toml"
    )
)
def train(
    config: Annotated[
        Path | None, typer.Argument(help="TOML file: model, data and recipe (default: the built-in defaults)")
    ] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config value: section.key=value")] = None,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
    plan: PlanFlag = False,
    gpu: GpuOption = "h100",
    gpus: GpusOption = 1,
    params: ParamsOption = None,
    tokens: TokensOption = None,
    mfu: MfuOption = 0.35,
) -> None:
    """Fine-tune a design contrastively (LoRA, full or head-only); writes a folder `EmbeddingModel.load` reads."""
    from ..training import load_train_config

    if plan:
        from ..plan import PlanOptions, plan_training

        options = PlanOptions(gpu=gpu, gpus=gpus, params=params, tokens=tokens, mfu_train=mfu)
        source = str(config) if config else "defaults"
        print_plan(lambda: plan_training(load_train_config(config, list(set_ or [])), source, options))
    from ..training import train as run_training

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
    from ..training import adapt as run_adapt
    from ..training import load_adapt_config

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
    from ..evaluate import evaluate_model
    from ..evaluate.encoders import Batched, SentenceTransformerEncoder
    from ..evaluate.offline import print_summary
    from ..evaluate.run import check_request
    from ..evaluate.tasks import ALL_TASKS
    from ..outputs import claim, owned_run
    from ..targets import OutputError

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
        from .. import assets

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
                precision=precision,
            )
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
        "    poolattn experiment configs/paper.toml --plan --gpu h100 --gpus 8 --params family=mistral\n\n"
        "    poolattn experiment configs/qwen2_0.5b.toml --plan --tokens 160\n\n"
        "    poolattn experiment configs/default.toml --output runs/default --set train.steps=20"
    )
)
def experiment(
    config: Annotated[Path | None, typer.Argument(help="study TOML (default: the embedded default study)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="study folder (cells, results, report)")] = Path(
        "runs/default"
    ),
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a config value: section.key=value")] = None,
    plan: PlanFlag = False,
    gpu: GpuOption = "h100",
    gpus: GpusOption = 1,
    params: ParamsOption = None,
    tokens: TokensOption = None,
    mfu: MfuOption = 0.35,
) -> None:
    """Run a controlled design study: train every design, evaluate, test significance, write the report."""
    from ..backbone import BackboneError
    from ..data import DataError
    from ..study import StudyError, run_experiment
    from ..targets import OutputError
    from ..training import TrainingDiverged

    if plan:
        from ..plan import PlanOptions, plan_study
        from ..study import load_study

        options = PlanOptions(gpu=gpu, gpus=gpus, params=params, tokens=tokens, mfu_train=mfu)
        print_plan(lambda: plan_study(load_study(config, list(set_ or [])), options))

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
    from contextlib import nullcontext

    from ..outputs import locked
    from ..study.report import render_report

    try:  # the folder's lock: a running `poolattn experiment` writes the same files
        with locked(folder) if folder.is_dir() else nullcontext():
            path = render_report(folder, compare=compare)
    except (OSError, ValueError) as err:
        fail(str(err))
    console.print(f"[bold green]report:[/] {path}")
