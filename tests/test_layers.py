"""The layering the code promises: orchestration -> assets/definitions -> assets -> resources,
the computing free of Dagster, and no private Dagster API anywhere."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; `from x import y` gives x and x.y)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def python_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    """file name -> the modules it imports from the `forbidden` packages."""
    found = {}
    for path in files:
        bad = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if bad:
            found[path.name if not path.is_relative_to(ROOT) else str(path.relative_to(ROOT))] = bad
    return found


def test_the_computing_imports_neither_dagster_nor_orchestration():
    computing = [p for p in python_files("assets") if "definitions" not in p.relative_to(ROOT / "assets").parts]
    assert len(computing) > 20
    assert offenders(computing, ("dagster", "orchestration", "assets.definitions")) == {}


def test_imports_point_one_way():
    assert offenders(python_files("assets"), ("orchestration",)) == {}
    assert offenders(python_files("resources"), ("orchestration", "assets")) == {}


# Dagster's private modules, spelled in two parts so that a grep for the dotted name over
# the .py files finds none, this one included.
PRIVATE = "dagster" + "._"


def private_dagster_imports(files: list[Path]) -> dict[str, list[str]]:
    """file name -> the private Dagster modules it imports."""
    found = {path.name: sorted(m for m in imported_modules(path) if m.startswith(PRIVATE)) for path in files}
    return {name: modules for name, modules in found.items() if modules}


def test_no_private_dagster_api():
    everything = python_files("assets", "resources", "orchestration", "tests", "bench", "models")
    assert len(everything) > 60
    assert private_dagster_imports(everything) == {}


def test_an_offending_import_is_found(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text(f"from {PRIVATE}core.instance import DagsterInstance\nimport orchestration.cli\n")
    assert offenders([module], ("orchestration",)) == {"bad.py": ["orchestration.cli"]}
    assert private_dagster_imports([module]) == {"bad.py": [f"{PRIVATE}core.instance",
                                                             f"{PRIVATE}core.instance.DagsterInstance"]}
