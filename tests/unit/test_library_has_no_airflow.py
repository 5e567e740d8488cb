"""The library must run without Airflow: no module of it imports airflow, directly or through another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "include" / "flightplan"


def test_no_module_imports_airflow() -> None:
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(LIBRARY)}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_every_module_imports_with_airflow_unavailable() -> None:
    modules = sorted(
        ".".join(("flightplan", *p.relative_to(LIBRARY).with_suffix("").parts)).removesuffix(".__init__")
        for p in LIBRARY.rglob("*.py")
    )
    script = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'airflow': raise ImportError('airflow is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'airflow']\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
