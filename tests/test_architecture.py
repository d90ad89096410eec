"""The architecture, checked: rules a reader relies on that no single behaviour test would notice breaking."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The one module that reads the environment (`indexer/settings.py`'s docstring says why).
SETTINGS_MODULE = ROOT / "indexer" / "settings.py"
_ENVIRONMENT = {"environ", "environb", "getenv", "getenvb"}


def product_modules() -> list[Path]:
    """Every Python file of the packages pyproject.toml installs (a package added there is checked too)."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    roots = {folder for pattern in patterns for folder in ROOT.glob(pattern.rstrip("*")) if (folder / "__init__.py").is_file()}
    assert roots, f"no product package found for {patterns}"
    return sorted(path for root in roots for path in root.rglob("*.py"))


def environment_reads(path: Path) -> list[str]:
    """`line: code` for each read of the process environment in a module: os.environ, os.getenv, or those imported."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {alias.asname or alias.name for alias in node.names if alias.name == "os"}
    found = []
    for node in ast.walk(tree):
        imported = isinstance(node, ast.ImportFrom) and node.module == "os" and _ENVIRONMENT & {a.name for a in node.names}
        attribute = (
            isinstance(node, ast.Attribute)
            and node.attr in _ENVIRONMENT
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
        )
        if imported or attribute:
            found.append((node.lineno, f"{node.lineno}: {ast.get_source_segment(source, node)}"))
    return [read for _line, read in sorted(found)]


def test_only_the_settings_module_reads_the_environment():
    offenders = {
        str(path.relative_to(ROOT)): reads
        for path in product_modules()
        if path != SETTINGS_MODULE and (reads := environment_reads(path))
    }
    listing = "\n".join(f"  {module}:{read}" for module, reads in sorted(offenders.items()) for read in reads)
    assert not offenders, f"read the environment through indexer.settings.get(), not directly:\n{listing}"


def test_the_environment_check_sees_every_way_of_reading_it(tmp_path):
    module = tmp_path / "module.py"
    module.write_text(
        "import os\nimport os as system\nfrom os import getenv\n"
        "a = os.environ.get('A')\nb = system.environ['B']\nc = getenv('C')\nd = os.getenv('D')\n"
        "'''os.environ in a docstring is no read'''\n"
    )
    assert [read.split(":")[0] for read in environment_reads(module)] == ["3", "4", "5", "7"]


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
