"""The import graph keeps its shape: no cycles, `core` knows no channel, only tests import tests.

Every import counts, including function-local (lazy) ones and those under `TYPE_CHECKING`: a lazy
import only hides a cycle, it does not open it. Module names come from file paths, so the rules
keep working when modules move into packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Directories that hold no project code (virtualenvs, caches, node, Alembic's scripts).
SKIPPED_DIRS = {".venv", "node_modules", ".git", "migrations", "build", "dist", "__pycache__"}
CHANNELS = {"ivr", "sms", "gateway", "console"}
TEST_PACKAGES = {"tests", "benchmarks"}


def _python_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(part in SKIPPED_DIRS or part.startswith(".") for part in parts[:-1]):
            continue
        yield path


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """Every module of the project, by dotted name."""
    return {_module_name(path): path for path in _python_files(ROOT)}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The most specific project module that `name` names (or lies inside)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name the module imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".") if package else []
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                # `from core import recovery` imports the module core.recovery.service; a name that is
                # not a module resolves to `base` itself.
                yield f"{base}.{alias.name}" if alias.name != "*" else base


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = set()
        for name in _imported_names(module, path):
            target = _resolve(name, modules)
            if target is not None and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _top(module: str) -> str:
    return module.split(".")[0]


def test_the_graph_is_read() -> None:
    graph = import_graph()
    # A parser that found nothing would make every rule below pass.
    assert "core.recovery.service" in graph["ivr.flow"]
    assert any(_top(target) == "core" for target in graph["gateway.app"])


def test_lazy_and_type_checking_imports_are_counted(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from core.platform.settings import Settings\n"
        "def f():\n    from core.kit import schedule\n"
    )
    module = tmp_path / "sample.py"
    module.write_text(source, encoding="utf-8")
    assert set(_imported_names("sample", module)) >= {
        "core.platform.settings.Settings",
        "core.kit.schedule",
    }


def test_cycles_are_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(import_graph()) == []


def test_core_imports_no_channel() -> None:
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _top(module) == "core"
        for target in targets
        if _top(target) in CHANNELS
    )
    assert offending == []


def test_only_tests_import_tests() -> None:
    offending = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _top(module) not in TEST_PACKAGES
        for target in targets
        if _top(target) == "tests"
    )
    assert offending == []
