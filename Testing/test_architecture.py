"""The package's layers and its one place per concept, checked on the source with ``ast``.

- settings, volumes, the worker's caller side and the Slicer layer never import torch (nor MONAI), directly or
  through the library modules they import, lazily or not: the Slicer panel opens before they are installed;
- the engine never imports Slicer or Qt; nothing imports the CLI; errors.py imports nothing but typing;
- every choice list is written out once, in settings/ (choices.py, or presets.py for the presets).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIB = ROOT / "PETStabilityDenoise" / "PETStabilityDenoiseLib"
LIB_NAME = LIB.name
# Where the choice lists are defined: the lists and defaults, and the presets (whose names are their keys).
DEFINITIONS = {LIB / "settings" / "choices.py", LIB / "settings" / "presets.py"}
# Where a user-facing choice list could be written out again.
CHOICE_SCAN = [*LIB.rglob("*.py"), ROOT / "PETStabilityDenoise" / "PETStabilityDenoise.py", *ROOT.glob("scripts/*.py")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports(path: Path) -> Set[str]:
    """Absolute names of everything ``path`` imports, anywhere in it, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    if LIB in path.parents:
        package = module_name(path).split(".") if is_package(path) else module_name(path).split(".")[:-1]
    else:
        package = []  # a script: only absolute imports name the library
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


MODULES: Dict[str, Path] = {module_name(path): path for path in LIB.rglob("*.py")}


def library_closure(start: str) -> Set[str]:
    """Every name imported by ``start`` and, transitively, by the library modules it imports."""
    seen, todo, external = set(), [start], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for imported in imports(MODULES[name]):
            if imported in MODULES:
                todo.append(imported)
                parent = imported.rpartition(".")[0]
                if parent in MODULES:
                    todo.append(parent)  # importing a.b runs a/__init__.py
            elif imported.split(".")[0] != LIB_NAME:
                external.add(imported.split(".")[0])
    return external | seen


TORCH_FREE = [name for name in MODULES if name.split(".")[1:2] in (["settings"], ["volumes"], ["slicer"])
              or name in (f"{LIB_NAME}.errors", f"{LIB_NAME}.worker", f"{LIB_NAME}.worker.process",
                          f"{LIB_NAME}.worker.protocol")]


def test_the_layers_are_folders():
    for layer in ("settings", "volumes", "engine", "training", "simulation", "evaluation", "worker", "slicer"):
        assert (LIB / layer / "__init__.py").is_file(), f"no {layer}/ package"
    top_level = sorted(path.name for path in LIB.glob("*.py"))
    assert top_level == ["__init__.py", "cli.py", "errors.py"], "a module outside the layers"


@pytest.mark.parametrize("module", TORCH_FREE)
def test_torch_free_layers_never_import_torch(module):
    reached = library_closure(module)
    assert not reached & {"torch", "monai"}, f"{module} reaches torch or MONAI"


@pytest.mark.parametrize("module", [name for name in MODULES if name.split(".")[1:2] == ["engine"]])
def test_the_engine_never_imports_slicer_or_qt(module):
    direct = {name.split(".")[0] for name in imports(MODULES[module])}
    assert not direct & {"slicer", "qt", "ctk", "vtk", "SampleData"}, f"{module} imports Slicer or Qt"
    assert not any(name.startswith(f"{LIB_NAME}.slicer") for name in imports(MODULES[module]))


def all_python_files() -> Iterator[Path]:
    for folder in ("PETStabilityDenoise", "scripts", "benchmarks"):
        yield from (ROOT / folder).rglob("*.py")


def test_nothing_imports_the_cli():
    importers = [path for path in all_python_files()
                 if any(name == f"{LIB_NAME}.cli" or name.startswith(f"{LIB_NAME}.cli.") for name in imports(path))]
    assert importers == []


def test_errors_import_nothing_but_typing():
    assert {name.split(".")[0] for name in imports(LIB / "errors.py")} <= {"typing"}


def choice_lists() -> Dict[str, Set[str]]:
    from PETStabilityDenoiseLib import settings

    lists = {name: set(getattr(settings, name)) for name in settings.__all__
             if name.isupper() and isinstance(getattr(settings, name), (tuple, dict)) and name != "PRESETS"}
    assert {"METHODS", "DEVICES", "PRESET_NAMES", "OUTPUT_FORMATS", "OVERLAYS", "NETWORKS"} <= set(lists)
    return lists


def string_collections(tree: ast.AST) -> Iterator[ast.AST]:
    """Tuples, lists, sets and dict keys of two or more distinct string constants (a pair such as
    ``("truth", "truth")``, a key and its label, lists no choices)."""
    for node in ast.walk(tree):
        elements = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and elements \
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in elements) \
                and len({e.value for e in elements}) >= 2:
            yield node


@pytest.mark.parametrize("path", [p for p in CHOICE_SCAN if p not in DEFINITIONS], ids=lambda p: p.name)
def test_choice_lists_are_written_only_in_settings(path):
    lists = choice_lists()
    for node in string_collections(ast.parse(path.read_text(encoding="utf-8"))):
        elements = node.keys if isinstance(node, ast.Dict) else node.elts
        values = {element.value for element in elements}
        for name, choices in lists.items():
            assert not values <= choices, (f"{path.relative_to(ROOT)}:{node.lineno} writes out (part of) "
                                           f"settings.{name}; import it instead")


def test_the_brainweb_file_name_is_written_once():
    pattern = "_labels_1mm"
    writers = [str(path.relative_to(ROOT)) for path in all_python_files() if pattern in path.read_text(encoding="utf-8")]
    assert writers == ["PETStabilityDenoise/PETStabilityDenoiseLib/simulation/case.py"]
