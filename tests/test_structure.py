"""The layering issue 10 set: small modules, the UI libraries only in cli/ and server/, no import cycle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imstore"
MAX_LINES = 600
UI_LIBRARIES = {"typer", "rich", "aiohttp", "click"}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path, name: str, *, top_level_only: bool) -> set[str]:
    """Absolute names of what the module at path imports (its whole body, or only what runs on import)."""
    tree = ast.parse(path.read_text("utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                if node.module:  # `from . import layout` needs imstore.layout, not the package's __init__
                    names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module or "")
    return names


def test_no_module_is_over_600_lines():
    long = {name: count for name, path in modules().items() if (count := len(path.read_text("utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_only_cli_and_server_import_typer_rich_or_aiohttp():
    offenders = {}
    for name, path in modules().items():
        if name.startswith(("imstore.cli", "imstore.server")):
            continue
        used = {module.split(".")[0] for module in imported(path, name, top_level_only=False)} & UI_LIBRARIES
        if used:
            offenders[name] = sorted(used)
    assert not offenders, offenders


def test_the_import_graph_has_no_cycle():
    table = modules()
    graph = {name: {target for target in imported(path, name, top_level_only=True) if target in table and target != name}
             for name, path in table.items()}  # fmt: skip
    state: dict[str, str] = {}
    cycle: list[str] = []

    def visit(node: str, trail: list[str]) -> bool:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle.extend(trail[trail.index(target):] + [target] if target in trail else [node, target])
                return True
            if target not in state and visit(target, trail + [target]):
                return True
        state[node] = "done"
        return False

    for name in sorted(graph):
        if name not in state and visit(name, [name]):
            break
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_check_can_fail(tmp_path, monkeypatch):
    package = tmp_path / "imstore"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("from .a import thing\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    try:
        test_the_import_graph_has_no_cycle()
    except AssertionError as failure:
        assert "imstore.a" in str(failure) and "imstore.b" in str(failure)
    else:
        raise AssertionError("a cycle a -> b -> a was not found")
