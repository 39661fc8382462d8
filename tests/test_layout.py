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
