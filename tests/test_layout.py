"""Imports point one way: ensemble.core <- members <- ensemble (through configs only)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("ensemble", "whisper_head", "cnn", "anomaly")
MEMBERS = ("whisper_head", "cnn", "anomaly")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {n for n in names if n.split(".")[0] in PROJECT}


def _files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("ensemble/core"), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_imports_only_core(path):
    assert all(n.startswith("ensemble.core") for n in _imports(path))


@pytest.mark.parametrize("member", MEMBERS)
def test_members_import_only_core_and_themselves(member):
    for path in _files(member):
        for name in _imports(path):
            assert name.startswith(("ensemble.core", member)), f"{path}: imports {name}"


def test_ensemble_reaches_members_only_through_configs():
    for path in _files("ensemble"):
        assert not any(n.split(".")[0] in MEMBERS for n in _imports(path)), path


def test_package_init_imports_nothing():
    tree = ast.parse((ROOT / "ensemble" / "__init__.py").read_text())
    assert not [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (at any depth of the file, in functions too)."""
    modules = {_module_name(p): p for package in PROJECT for p in _files(package)}
    graph = {}
    for name, path in modules.items():
        edges = set()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            edges |= {t for t in targets if t in modules and t != name}
        graph[name] = edges
    return graph


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # a package's __init__ re-exporting its modules is not a circle of its own
    circles = [c for c in circles if not any(c[0].startswith(m + ".") for m in c[1:2])]
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles)


def test_no_source_file_over_400_lines():
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "runs", ".git") or rel.parts[0].startswith("."):
            continue
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > 400:
            long.append(f"{rel} ({n} lines)")
    assert long == []
