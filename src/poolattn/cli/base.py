"""What every ``poolattn`` command shares: the typer app, one-line errors, the common options and opening a model."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import click
import typer
from rich.console import Console
from typer.core import TyperGroup


class Commands(TyperGroup):
    """The command group: an asset that cannot be resolved (``POOLATTN_CACHE`` a file, a failed fetch) ends any
    command in one error line, and a command run by ``accelerate launch`` leaves no process group behind."""

    def invoke(self, ctx: click.Context) -> Any:
        from ..assets import AssetError

        try:
            return super().invoke(ctx)
        except AssetError as err:
            fail(str(err))
        finally:
            destroy_process_group()


def destroy_process_group() -> None:
    """Destroy the default process group of a multi-process run, if a command made one: a gloo group left to
    the interpreter's exit aborts it now and then ("terminate called without an active exception")."""
    distributed = sys.modules.get("torch.distributed")  # a command that never imported torch made none
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


app = typer.Typer(
    cls=Commands,
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
        from .._version import __version__

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

    from ..data import DataError
    from ..training import TrainingDiverged

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
    " >= 0.999); int8 runs an int8 copy of the backbone's linear layers, on a CPU only (cosine >= 0.99 under causal"
    " attention); auto = bf16 where its matmuls measure faster than float32's here (`poolattn machine` shows it)"
)


PlanFlag = Annotated[
    bool,
    typer.Option(
        "--plan",
        help="print the cost plan (parameters, memory, FLOPs, GPU-hours) and exit; nothing downloads but the"
        " backbone's config",
    ),
]
GpuOption = Annotated[
    str,
    typer.Option(
        help="--plan's accelerator: h100 | h100-pcie | h200 | b200 | a100 | a100-40gb | l40s | l4 | a10 | rtx4090"
        " | mi300x"
    ),
]
GpusOption = Annotated[int, typer.Option(help="--plan: how many accelerators (wall-clock time)")]
ParamsOption = Annotated[
    str | None,
    typer.Option(
        help="--plan offline: the backbone's shape instead of its config, a count (7.2B) or "
        "family=mistral,hidden=4096,layers=32,intermediate=14336,heads=32,kv_heads=8,vocab=32000"
    ),
]
TokensOption = Annotated[
    float | None, typer.Option(help="--plan: mean tokens per training text (default: model.max_length, an upper bound)")
]
MfuOption = Annotated[float, typer.Option(help="--plan: assumed model FLOPs utilisation of training")]


def print_plan(make: Callable[[], object]) -> None:
    """Print a plan (``poolattn.plan.Plan``) and exit: status 0 if every cell fits a device, else one error line."""
    from ..costs import PlanError

    try:
        plan = make()
    except (PlanError, ValueError, OSError) as err:
        fail(str(err))
    typer.echo("\n".join(plan.lines()))  # type: ignore[attr-defined]
    try:
        plan.check_fits()  # type: ignore[attr-defined]
    except PlanError as err:
        fail(str(err))
    raise typer.Exit()


def check_precision(precision: str) -> str:
    from ..backbone import PRECISIONS

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
    precision: str | None = None,
):
    """A saved poolattn folder (design flags must not contradict it) or a backbone with a design; ``compile``:
    through :meth:`EmbeddingModel.compile_backbone`; ``trust_remote_code``: the caller's ``--trust-remote-code``;
    ``precision``: as :func:`poolattn.quantize.for_precision` computes with it (an int8 copy for ``int8``).
    A missing folder or a damaged weights file fails before anything loads."""
    from ..assets import resolve_backbone
    from ..backbone import check_source
    from ..model import CONFIG_FILE, EmbeddingModel

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
    if precision is not None:
        from ..quantize import for_precision

        model = for_precision(model, precision)
    return model
