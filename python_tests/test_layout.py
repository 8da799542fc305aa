"""The package's layering: no import circle between its modules (imports inside functions included), and
the serving commands never pull in the training package."""

from __future__ import annotations

import ast
from pathlib import Path

import dcd_ext

PACKAGE = Path(dcd_ext.__file__).resolve().parent


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file, with the packages whose
    ``__init__`` such an import runs (except ``name``'s own ancestors, which are already importing)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in known and not name.startswith(candidate + ".") and candidate != name:
                    found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]):
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph[node])
    return seen


def test_the_checker_finds_a_circle_and_the_package_has_none():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = import_graph()
    assert {"dcd_ext.evaluate", "dcd_ext.train.loop", "dcd_ext.cli"} <= set(graph)
    assert "dcd_ext.cli" in graph["dcd_ext.evaluate"]
    assert find_cycle(graph) is None


def test_serving_commands_do_not_import_the_training_package():
    graph = import_graph()
    for command in ("dcd_ext.index", "dcd_ext.search", "dcd_ext.speed", "dcd_ext.evaluate"):
        pulled = reachable(graph, command)
        assert not {m for m in pulled if m == "dcd_ext.train" or m.startswith("dcd_ext.train.")}, command
