"""The training package stands on its own: nothing in ``vllm_vispec/train`` imports the demo
and test fixtures of ``vllm_vispec.tiny`` (the demo's prompts reach it as a named source)."""

from __future__ import annotations

import ast
from pathlib import Path

import vllm_vispec

PACKAGE = Path(vllm_vispec.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module a file imports, relative imports resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_scan_resolves_relative_imports():
    names = imported_modules(PACKAGE / "tiny" / "drafts.py")
    assert "vllm_vispec.tiny.targets" in names and "vllm_vispec.model.layout" in names


def test_train_imports_nothing_from_tiny():
    files = sorted((PACKAGE / "train").rglob("*.py"))
    assert len(files) > 10
    offenders = {f.name: sorted(n for n in imported_modules(f)
                                if n == "vllm_vispec.tiny" or n.startswith("vllm_vispec.tiny."))
                 for f in files}
    assert {f: n for f, n in offenders.items() if n} == {}
