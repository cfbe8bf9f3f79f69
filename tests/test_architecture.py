"""The package's shape: imports run one way (no cycle, counting imports inside functions), nothing imports the
command line, and no module grows past a reviewable size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "poolattn"
MAX_LINES = 650


def module_name(path: Path) -> str:
    parts = ("poolattn", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the poolattn modules it imports anywhere in its body (``from pkg import sub`` counts ``sub``)."""
    modules = {module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    source = ".".join([*base, node.module] if node.module else base)
                else:
                    source = node.module or ""
                subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
                # `from . import x` imports the submodule x; `from .pkg import name` imports pkg itself
                targets = subs if subs and len(subs) == len(node.names) else [source, *subs]
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_nothing_imports_the_command_line() -> None:
    importers = sorted(m for m, deps in import_graph().items() if "poolattn.cli" in deps and m != "poolattn.__main__")
    assert importers == []


def test_imports_run_one_way_across_layers() -> None:
    """Lower layers never import higher ones: cli → {study, plan} → {training, st_export, serve, datainfo} →
    {data, sources, evaluate, model} → the rest. ``plan`` (a study's or a training run's cost), ``serve`` (a model
    behind HTTP) and ``datainfo`` (a training source summarised) consume the layers below them, and only the
    command line imports them."""
    layer = {
        "cli": 4,
        "study": 3,
        "plan": 3,
        "training": 2,
        "st_export": 2,
        "serve": 2,
        "quantize": 2,
        "datainfo": 2,
        "data": 1,
        "sources": 1,
        "evaluate": 1,
        "model": 1,
    }
    graph = import_graph()
    wrong = []
    for module, deps in graph.items():
        if module in ("poolattn", "poolattn.__main__"):  # the package's façade and `python -m poolattn`
            continue
        top = module.split(".")[1] if "." in module else ""
        for dep in deps:
            dep_top = dep.split(".")[1] if "." in dep else ""
            if layer.get(dep_top, 0) > layer.get(top, 0):
                wrong.append(f"{module} -> {dep}")
    assert wrong == []
    assert not any(d.startswith("poolattn.data") for d in set().union(*(graph[m] for m in graph if ".evaluate" in m)))


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_module_size(path: Path) -> None:
    assert len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES
