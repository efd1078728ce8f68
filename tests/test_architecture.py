"""The tree keeps its design: who may import what, how big a module grows, one error tree.

These read the source (with ``ast``), so a change that breaks a boundary fails here with
the file and line that broke it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 600


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, relative imports resolved to absolute."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def offenders(files: list[Path], banned: tuple[str, ...], allowed_under: str) -> list[str]:
    return [f"{rel(p)}:{line} imports {module}" for p in files
            if not rel(p).startswith(allowed_under)
            for line, module in imports(p)
            if module == banned[0] or module.split(".")[0] in banned]


def test_only_the_virt_package_imports_libvirt() -> None:
    files = python_files("daemon", "statemachines")
    assert offenders(files, ("libvirt", "libvirtaio"), "daemon/virt/") == []


def test_only_the_store_package_runs_sql() -> None:
    files = python_files("daemon", "statemachines")
    assert offenders(files, ("sqlite3", "sqlite_utils"), "daemon/store/") == []


def test_the_state_tables_import_nothing_from_the_daemon() -> None:
    assert offenders(python_files("statemachines"), ("daemon",), "-") == []


def test_benchmarks_never_import_the_tests() -> None:
    bad = [f"{rel(p)}:{line} imports {module}" for p in python_files("bench")
           for line, module in imports(p)
           if module == "tests" or module.startswith("tests.") or module in (
               "conftest", "libvirtd", "api_fuzz")]
    assert bad == []


@pytest.mark.parametrize("folder", ["daemon", "statemachines", "bench", "harness"])
def test_no_module_is_over_600_lines(folder: str) -> None:
    long = [f"{rel(p)}: {n} lines" for p in python_files(folder)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES]
    assert long == []


def test_every_daemon_exception_belongs_to_the_one_tree() -> None:
    """Outside provctl (whose errors are the client's own), every exception class the
    daemon defines derives from ProvisiondError, so the API and the CLI map it once."""
    import daemon.errors as errors

    strays = []
    for path in python_files("daemon"):
        if rel(path).startswith("daemon/cli/"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "")
                         for b in node.bases}
                if bases & {"Exception", "BaseException", "RuntimeError", "ValueError"}:
                    if node.name != "ProvisiondError":
                        strays.append(f"{rel(path)}:{node.lineno} {node.name}")
    assert strays == []
    # Every class of the tree is drawn in the module's docstring.
    pending = [errors.ProvisiondError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is not in the tree"
