"""The layout says what each module is for: one job each, named once, no cycles.

- a limit or default (`MAX_*`, `DEFAULT_*`) is defined in one module (shared ones in
  `core/limits.py`) and imported everywhere else, and so is a public constant of core
  that another module spells out alike (same name, same literal value);
- role names ("train", "query", "paramserver") are defined only in `core/roles.py`;
- no module is over `MAX_LINES` lines unless the first paragraph of its docstring says
  why ("long on purpose: ...");
- no import cycles among Chiron's modules (imports inside functions count too);
- the command line is wired one way: every `client/cli_*.py` room has `register(app)`,
  keeps no Typer app at module level, and is listed in `client.cli.ROOMS`;
- argparse is used only by the enclave's own process entry points, which are measured
  code and cannot use the client's command line.

Each `KNOWN_*` set below lists what still breaks a rule, with the reason; an entry that
no longer applies fails the test, so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[2] / "src" / "chiron"
ROLE_MODULE = "core/roles.py"
ROLE_NAMES = {"train", "query", "paramserver"}
MAX_LINES = 400
LONG_ON_PURPOSE = "long on purpose"

# Limits and constants still defined twice; each entry is (name, (file, file)).
KNOWN_DUPLICATE_LIMITS: set[tuple[str, tuple[str, str]]] = set()
KNOWN_ROLE_CONSTANTS: set[tuple[str, str]] = set()
KNOWN_LONG_MODULES: set[str] = set()
# Import cycles still to break (none: the TRAIN call's dispatch lives in
# enclave/train_call.py, above both the trainer and the distributed worker).
KNOWN_CYCLES: set[frozenset[str]] = set()
ARGPARSE_ALLOWED = {
    # The enclave's process entry points (measured runtime, started by EnclaveProcess
    # and the sandbox supervisor); the enclave may not import the client's typer CLI.
    "enclave/main.py",
    "enclave/sandbox/child.py",
    "enclave/sandbox/dryrun.py",
}


def _modules() -> list[tuple[str, ast.Module, str]]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        found.append((path.relative_to(SRC).as_posix(), ast.parse(text, str(path)), text))
    return found


def _assigned_names(node: ast.stmt) -> list[str]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets = [node.target]
    names = []
    for target in targets:
        for part in ast.walk(target):
            if isinstance(part, ast.Name):
                names.append(part.id)
    return names


def _assigned_value(node: ast.stmt) -> ast.expr | None:
    return node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None


def _is_literal(value: ast.expr | None) -> bool:
    if value is None:
        return False
    try:
        ast.literal_eval(value)
    except (ValueError, TypeError):
        return False
    return True


def test_each_limit_and_default_is_defined_once():
    defined: dict[str, list[str]] = defaultdict(list)
    # Other public constants by name and literal value: a module that spells out a
    # constant of core holds a twin, since every room may import core (the same name
    # for another value, or for a value computed from the module's own, is a namesake).
    alike: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, tree, _ in _modules():
        for node in tree.body:
            value = _assigned_value(node)
            for target in _assigned_names(node):
                bare = target.lstrip("_")
                if bare.startswith(("MAX_", "DEFAULT_")):
                    defined[bare].append(name)
                elif target.isupper() and not target.startswith("_") and _is_literal(value):
                    alike[(target, ast.unparse(value))].append(name)
    duplicates = {
        (constant, tuple(sorted(where))) for constant, where in defined.items() if len(where) > 1
    } | {
        (constant, tuple(sorted(where)))
        for (constant, _), where in alike.items()
        if len(where) > 1 and any(module.startswith("core/") for module in where)
    }
    assert duplicates - KNOWN_DUPLICATE_LIMITS == set(), (
        "define it once (shared limits in core/limits.py) and import it"
    )
    assert KNOWN_DUPLICATE_LIMITS - duplicates == set(), "fixed: drop it from the known list"


def _is_role_constant(target: str, value: ast.expr | None) -> bool:
    if value is None:
        return False
    if isinstance(value, ast.Constant):
        return value.value in ROLE_NAMES
    strings = [
        part.value
        for part in ast.walk(value)
        if isinstance(part, ast.Constant) and isinstance(part.value, str)
    ]
    # A collection of roles (every string in it a role), or anything named a role.
    if strings and all(s in ROLE_NAMES for s in strings) and len(strings) > 1:
        return True
    return "ROLE" in target.upper() and any(s in ROLE_NAMES for s in strings)


def test_role_names_are_defined_only_in_core_roles():
    found = set()
    for name, tree, _ in _modules():
        if name == ROLE_MODULE:
            continue
        for node in tree.body:
            for target in _assigned_names(node):
                if _is_role_constant(target, _assigned_value(node)):
                    found.add((name, target))
    assert found - KNOWN_ROLE_CONSTANTS == set(), "use chiron.core.roles.Role"
    assert KNOWN_ROLE_CONSTANTS - found == set(), "fixed: drop it from the known list"


def test_modules_over_the_line_limit_say_why():
    long_modules = set()
    for name, tree, text in _modules():
        if text.count("\n") <= MAX_LINES:
            continue
        first_paragraph = (ast.get_docstring(tree) or "").split("\n\n")[0]
        if LONG_ON_PURPOSE not in first_paragraph.lower():
            long_modules.add(name)
    assert long_modules - KNOWN_LONG_MODULES == set(), (
        f"split it, or say why in its docstring's first paragraph ({LONG_ON_PURPOSE!r}: ...)"
    )
    assert KNOWN_LONG_MODULES - long_modules == set(), "fixed: drop it from the known list"


def _cycles(graph: grimp.ImportGraph) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: set[frozenset[str]] = set()
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if child < len(edges[node]):
                work.append((node, child + 1))
                nxt = edges[node][child]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            for nxt in edges[node]:
                if nxt in on_stack:
                    low[node] = min(low[node], low[nxt])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.add(frozenset(component))
    return components


def test_no_import_cycles():
    cycles = _cycles(grimp.build_graph("chiron", cache_dir=None))
    assert {tuple(sorted(c)) for c in cycles - KNOWN_CYCLES} == set()
    assert KNOWN_CYCLES - cycles == set(), "fixed: drop it from the known list"


def test_the_command_line_is_wired_one_way():
    from chiron.client import cli

    rooms = {module.__name__.rsplit(".", 1)[1] for module in cli.ROOMS}
    files = {path.stem for path in (SRC / "client").glob("cli_*.py")}
    assert rooms == files, "list every cli_* room in client.cli.ROOMS"
    problems = []
    for path in sorted((SRC / "client").glob("cli_*.py")):
        tree = ast.parse(path.read_text())
        if not any(
            isinstance(node, ast.FunctionDef) and node.name == "register" for node in tree.body
        ):
            problems.append(f"{path.name}: no register(app)")
        for node in tree.body:
            value = _assigned_value(node)
            if isinstance(value, ast.Call) and ast.unparse(value.func) == "typer.Typer":
                problems.append(f"{path.name}: a Typer app at module level")
            if isinstance(node, ast.FunctionDef) and any(
                "command" in ast.unparse(d) or "callback" in ast.unparse(d)
                for d in node.decorator_list
            ):
                problems.append(f"{path.name}: {node.name} registers itself by decorator")
    assert problems == []


def test_argparse_only_in_the_enclave_process_entry_points():
    users = set()
    for name, tree, _ in _modules():
        for node in ast.walk(tree):
            imported = []
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module]
            if "argparse" in imported:
                users.add(name)
    assert users == ARGPARSE_ALLOWED
