"""The reference cabinet is what a third party would write: it imports nothing from the gateway."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cabinet_reference"
# Every top-level package of this repository other than the reference itself.
GATEWAY_PACKAGES = {
    path.name
    for path in ROOT.iterdir()
    if (path / "__init__.py").exists() and path.name != "cabinet_reference"
} | {"console", "benchmarks", "migrations"}


def imported_roots(source: Path) -> set[str]:
    """The top-level names a module imports (relative imports stay inside the package)."""
    roots: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_the_gateway_packages_are_known() -> None:
    assert {"core", "gateway", "voice_prompts", "ivr", "sms"} <= GATEWAY_PACKAGES


def test_no_module_of_the_reference_imports_the_gateway() -> None:
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) >= 8
    offending = {
        str(module.relative_to(ROOT)): sorted(imported_roots(module) & GATEWAY_PACKAGES)
        for module in modules
        if imported_roots(module) & GATEWAY_PACKAGES
    }
    assert offending == {}


def test_the_walker_sees_an_import_of_the_gateway(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import json\nfrom core.platform.settings import Settings\nimport importlib\n"
        "importlib.import_module('gateway.app')\nimport voice_prompts.ru as r\n"
    )
    assert imported_roots(module) & GATEWAY_PACKAGES == {"core", "gateway", "voice_prompts"}


def test_importing_the_reference_loads_no_gateway_module() -> None:
    """At run time too: a fresh interpreter that serves the app has loaded none of them."""
    script = (
        "import sys, cabinet_reference, cabinet_reference.__main__\n"
        "from cabinet_reference.app import create_app\n"
        "import tempfile, os\n"
        "create_app(os.path.join(tempfile.mkdtemp(), 'c.db'), 'x' * 32)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(GATEWAY_PACKAGES)!r})\n"
        "print(bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
