"""The trust boundaries of the layout, enforced on the source itself.

import-linter (run by `make test`) checks the room-to-room rules; this test adds the
one it cannot express: host and client may reach into `chiron.enclave` only through
its boundary module, and core never imports torch at import time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "chiron"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_host_and_client_reach_the_enclave_only_through_the_boundary():
    offenders = []
    for room in ("host", "client"):
        for path in sorted((SRC / room).rglob("*.py")):
            for name in _imports(path):
                if (
                    name.startswith("chiron.enclave")
                    and name
                    not in (
                        "chiron.enclave",
                        "chiron.enclave.boundary",
                    )
                    and not name.startswith("chiron.enclave.boundary.")
                ):
                    offenders.append(f"{path.relative_to(SRC)} imports {name}")
    assert offenders == []


def test_core_does_not_import_torch():
    code = (
        "import sys, importlib, pkgutil, chiron.core as c\n"
        "for m in pkgutil.walk_packages(c.__path__, 'chiron.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_enclave_runtime_process_does_not_import_torch():
    # The process's entry point, the trainer and the query enclave, and the modules
    # split out of those two.
    modules = (
        "main",
        "trainer",
        "accepted_job",
        "checkpoints",
        "padding",
        "parameter_exchange",
        "query",
        "evaluation",
        "query_ledger",
    )
    code = (
        f"import sys, {', '.join(f'chiron.enclave.{name}' for name in modules)}\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
