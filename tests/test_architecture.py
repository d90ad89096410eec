"""The layers' dependencies point down: catalogue_cli -> search -> indexer, never back up."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _imported_packages(path: Path) -> set[str]:
    """The top-level package of every import in the module, those inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def _imports_of(package: str, forbidden: set[str]) -> list[str]:
    return [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in sorted(_imported_packages(path) & forbidden)
    ]


def test_the_libraries_import_nothing_above_them():
    """`indexer` is the bottom layer: it imports neither `search` nor the CLIs; `search` does not import the CLIs."""
    assert _imports_of("indexer", {"search", "catalogue_cli"}) == []
    assert _imports_of("search", {"catalogue_cli"}) == []


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from search.views import StoreViews\n    import catalogue_cli.options\n")
    assert _imported_packages(module) == {"search", "catalogue_cli"}
