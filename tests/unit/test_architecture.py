"""The library's shape holds what docs/architecture.md draws: no package imports one drawn above it (so no
import cycle between stage packages, and the map stays true), and no function is longer than a screen."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from tests.support.pipeline import REPO

LIBRARY = REPO / "include" / "flightplan"
MAX_FUNCTION_LINES = 50


def drawn_layers() -> dict[str, int]:
    """Each unit of the map's layer block with its height (0: the bottom line)."""
    text = (REPO / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers -->\n```\n(.*?)\n```", text, re.S)
    assert block, "docs/architecture.md has no layer block after <!-- layers -->"
    lines = block.group(1).splitlines()
    return {unit: len(lines) - 1 - row for row, line in enumerate(lines) for unit in line.split()}


def unit_of(module: str) -> str:
    """The layer unit of a module: the package or top-level module under flightplan."""
    return module.split(".")[1] if "." in module else module


def module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """Every flightplan module ``path`` imports, at any depth of the file, with its line."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)


def test_every_unit_of_the_library_is_on_the_map() -> None:
    layers = drawn_layers()
    units = {path.stem if path.is_file() else path.name for path in LIBRARY.iterdir()}
    units = {unit for unit in units if not unit.startswith(("_", ".")) and unit != "py"}
    assert units - layers.keys() == set(), "units missing from the layer block of docs/architecture.md"
    assert layers.keys() - units == set(), "the layer block names units the library does not have"


def test_no_import_climbs_a_layer() -> None:
    layers = drawn_layers()
    climbing = []
    for path in sorted(LIBRARY.rglob("*.py")):
        here = unit_of(module_name(path))
        for line, module in imported_modules(path):
            if not module.startswith("flightplan."):
                continue
            there = unit_of(module)
            if there in layers and there != here and layers[there] > layers[here]:
                climbing.append(f"{path.relative_to(REPO)}:{line} imports {module} ({there} is above {here})")
    assert climbing == []


def test_no_library_function_is_longer_than_fifty_lines() -> None:
    long = [
        f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(LIBRARY.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
