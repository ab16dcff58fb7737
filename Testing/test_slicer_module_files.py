"""Static checks of the 3D Slicer module's files, runnable without Slicer.

Slicer finds most mistakes in these files only at run time (a widget name the
code and the .ui disagree on) or when the extension is built (a file missing
from CMakeLists.txt). These tests read the files with ``ast``, ``xml`` and
regular expressions instead, so CI catches them.
"""

from __future__ import annotations

import ast
import enum
import importlib.util
import re
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
MODULE_NAME = "PETStabilityDenoise"
MODULE_DIR = ROOT / MODULE_NAME
MODULE_FILE = MODULE_DIR / f"{MODULE_NAME}.py"
LIB_NAME = f"{MODULE_NAME}Lib"
UI_FILE = MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui"
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "requirements.txt"
PARAMETER_NODE_CLASS = f"{MODULE_NAME}ParameterNode"

# Every widget the module's code or the parameter node binds, with the class it must have in the .ui.
EXPECTED_WIDGET_CLASSES = {
    "inputsCollapsibleButton": "ctkCollapsibleButton",
    "inputPETSelector": "qMRMLNodeComboBox",
    "inputMRSelector": "qMRMLNodeComboBox",
    "methodComboBox": "QComboBox",
    "presetComboBox": "QComboBox",
    "advancedCollapsibleButton": "ctkCollapsibleButton",
    "epochsSpinBox": "QSpinBox",
    "intervalSpinBox": "QSpinBox",
    "startSpinBox": "QSpinBox",
    "deviceComboBox": "QComboBox",
    "seedSpinBox": "QSpinBox",
    "samplesSpinBox": "QSpinBox",
    "applyButton": "QPushButton",
    "loadRunButton": "QPushButton",
    "progressBar": "QProgressBar",
    "statusLabel": "QLabel",
    "displayCollapsibleButton": "ctkCollapsibleButton",
    "alphaSliderWidget": "ctkSliderWidget",
    "stabilityMapComboBox": "QComboBox",
    "overlayOpacitySliderWidget": "ctkSliderWidget",
}

# Widget classes the parameter node wrapper can bind to each field type (guiConnectors.py, Slicer 5.8).
CONNECTABLE_CLASSES = {
    "int": {"QSpinBox", "QSlider"},
    "float": {"ctkSliderWidget", "QDoubleSpinBox"},
    "str": {"QComboBox", "QLineEdit"},
    "bool": {"QCheckBox", "QPushButton"},
    "enum": {"QComboBox", "ctkComboBox"},  # QComboBoxToEnumConnector: it fills the items itself
}

# What Slicer's own Python provides; everything else the module needs must be in requirements.txt,
# except torch, which comes from the PyTorch extension.
# SampleData is a module of Slicer's own (the self-test and the sample registration use it); pydicom is Slicer's
# DICOM module's.
SLICER_PROVIDED = {"numpy", "SimpleITK", "vtk", "slicer", "qt", "ctk", "packaging", "SampleData", "pydicom"}
# Import names whose distribution on PyPI is called differently.
DISTRIBUTION_NAMES = {"skimage": "scikit-image", "PIL": "pillow", "yaml": "pyyaml"}
# Packages that a dependency imports lazily (MONAI's optional_import), so the import scan cannot see them:
# name -> (the importing package, the file of it that imports it).
INDIRECT_IMPORTS = {"einops": ("monai", "networks/nets/diffusion_model_unet.py")}

TEMPLATE_CLASSES = [  # in the order of Slicer's scripted-module template
    (MODULE_NAME, ["ScriptedLoadableModule"]),
    (PARAMETER_NODE_CLASS, []),
    (f"{MODULE_NAME}Widget", ["ScriptedLoadableModuleWidget", "VTKObservationMixin"]),
    (f"{MODULE_NAME}Logic", ["ScriptedLoadableModuleLogic"]),
    (f"{MODULE_NAME}Test", ["ScriptedLoadableModuleTest"]),
]


# --- helpers -----------------------------------------------------------------------------------


def module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"), filename=str(MODULE_FILE))


def class_def(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"{MODULE_FILE.name} has no top-level class {name}")


def referenced_ui_names(tree: ast.AST) -> set:
    """Names ``x`` of every ``self.ui.x`` in the code."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }


def parameter_fields() -> dict:
    """Field name -> annotation source of the parameterNodeWrapper class."""
    cls = class_def(module_tree(), PARAMETER_NODE_CLASS)
    return {
        node.target.id: ast.unparse(node.annotation)
        for node in cls.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def base_type(annotation: str) -> str:
    """``Annotated[int, WithinRange(0, 3)]`` -> ``int``; an Enum of the library's panel module -> ``enum``."""
    from PETStabilityDenoiseLib.slicer import panel

    match = re.fullmatch(r"Annotated\[\s*(\w+)\s*,.*\]", annotation, flags=re.S)
    name = (match.group(1) if match else annotation).split(".")[-1]
    if isinstance(getattr(panel, name, None), type) and issubclass(getattr(panel, name), enum.Enum):
        return "enum"
    return name


def ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def ui_widgets() -> dict:
    """Widget name -> element, for every widget in the .ui."""
    widgets = {}
    for element in ui_root().iter("widget"):
        name = element.get("name")
        assert name not in widgets, f"widget name {name} is used twice in {UI_FILE.name}"
        widgets[name] = element
    return widgets


def own_property(element: ET.Element, name: str):
    """The text of the widget's own (not a child widget's) property ``name``, or None."""
    for prop in element.findall("property"):
        if prop.get("name") == name:
            value = next(iter(prop), None)
            return value.text if value is not None else None
    return None


def strip_cmake_comments(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text)


def cmake_set(text: str, variable: str) -> list:
    """The values of ``set(variable ...)``, quotes removed."""
    match = re.search(rf"\bset\(\s*{variable}\b(.*?)\)", text, flags=re.S)
    assert match, f"no set({variable} ...)"
    return [value.strip('"') for value in re.findall(r'"[^"]*"|\S+', match.group(1))]


def module_cmake_lists() -> tuple:
    """(MODULE_PYTHON_SCRIPTS, MODULE_PYTHON_RESOURCES) of the module, with ${MODULE_NAME} expanded."""
    text = strip_cmake_comments((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    (name,) = cmake_set(text, "MODULE_NAME")
    assert name == MODULE_NAME

    def expand(values):
        return [value.replace("${MODULE_NAME}", name) for value in values]

    return expand(cmake_set(text, "MODULE_PYTHON_SCRIPTS")), expand(cmake_set(text, "MODULE_PYTHON_RESOURCES"))


def is_stdlib(name: str) -> bool:
    """Whether top-level module ``name`` comes with Python itself."""
    if hasattr(sys, "stdlib_module_names"):  # Python 3.10+
        return name in sys.stdlib_module_names
    if name in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec and spec.origin else ""
    stdlib = sysconfig.get_paths()["stdlib"]
    return origin.startswith(stdlib) and "site-packages" not in origin


def module_file_for(dotted: str):
    """The .py file of an importable module of this package, or None."""
    relative = Path(*dotted.split("."))
    for candidate in (MODULE_DIR / relative.with_suffix(".py"), MODULE_DIR / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


class _ImportCollector(ast.NodeVisitor):
    """Absolute names of the modules a file imports: anywhere in it, or with ``import_time`` only
    those that importing the file runs (function bodies skipped).

    Skipped: ``if TYPE_CHECKING:`` blocks, and ``try:`` bodies whose ``except`` catches ImportError
    (optional accelerators such as numba), because neither needs the package installed.
    """

    def __init__(self, module: str, is_package: bool, import_time: bool = False) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.import_time = import_time
        self.found = set()

    def visit_FunctionDef(self, node) -> None:
        if not self.import_time:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        optional = any(handler.type is not None and re.search(r"\b(ImportError|ModuleNotFoundError)\b",
                                                              ast.unparse(handler.type))
                       for handler in node.handlers)
        for child in ([] if optional else node.body) + node.handlers + node.orelse + node.finalbody:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module
        self.found.add(module)
        # "from . import x" may import the submodule x.
        for alias in node.names:
            if module_file_for(f"{module}.{alias.name}"):
                self.found.add(f"{module}.{alias.name}")


def import_closure(roots, import_time: bool = False) -> set:
    """Top-level names of the outside packages that ``roots`` (modules of this package) import.

    With ``import_time``, only what importing them runs; otherwise also what their functions import.
    """
    outside, seen, todo = set(), set(), list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = module_file_for(module)
        assert path is not None, f"{module} is imported but has no file"
        collector = _ImportCollector(module, path.name == "__init__.py", import_time)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for name in collector.found:
            top = name.split(".")[0]
            if top == LIB_NAME:
                # Importing a submodule runs its parent packages' __init__ too.
                parts = name.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            elif top != "__future__" and not is_stdlib(top):
                outside.add(top)
    return outside


def library_modules_used_by_module_file() -> set:
    """The PETStabilityDenoiseLib modules that PETStabilityDenoise.py imports, anywhere in it."""
    return {name for name in import_closure_names(module_tree()) if name.split(".")[0] == LIB_NAME}


def import_closure_names(tree: ast.AST) -> set:
    collector = _ImportCollector(MODULE_NAME, is_package=False)
    collector.visit(tree)
    return collector.found


# --- the .ui file ------------------------------------------------------------------------------


def test_ui_is_a_qmrmlwidget_named_after_the_module():
    root = ui_root()
    assert root.tag == "ui"
    assert root.findtext("class") == MODULE_NAME
    top = root.find("widget")
    assert (top.get("class"), top.get("name")) == ("qMRMLWidget", MODULE_NAME)


def test_expected_class_table_covers_every_widget_the_code_uses():
    referenced = referenced_ui_names(module_tree())
    assert referenced, "no self.ui.<name> found: has the module stopped using its .ui?"
    assert referenced - set(EXPECTED_WIDGET_CLASSES) == set(), \
        "add these widgets to EXPECTED_WIDGET_CLASSES with the class they must have"


def test_widgets_exist_in_the_ui_with_the_expected_class():
    widgets = ui_widgets()
    for name, expected in EXPECTED_WIDGET_CLASSES.items():
        assert name in widgets, f"{UI_FILE.name} has no widget {name}"
        assert widgets[name].get("class") == expected, f"{name} is a {widgets[name].get('class')}, not {expected}"


def test_custom_widgets_are_declared():
    root = ui_root()
    declared = {element.findtext("class") for element in root.iter("customwidget")}
    used = {element.get("class") for element in root.iter("widget")}
    assert {c for c in used if not c.startswith("Q")} <= declared


def test_node_combo_boxes_receive_the_scene():
    root = ui_root()
    connected = {
        connection.findtext("receiver")
        for connection in root.iter("connection")
        if connection.findtext("sender") == MODULE_NAME
        and connection.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and connection.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    combos = {name for name, element in ui_widgets().items() if element.get("class") == "qMRMLNodeComboBox"}
    assert combos and combos <= connected


def test_pet_is_required_and_mr_is_optional():
    widgets = ui_widgets()
    assert own_property(widgets["inputPETSelector"], "noneEnabled") == "false"
    assert own_property(widgets["inputMRSelector"], "noneEnabled") == "true"


def test_bound_widgets_name_parameter_fields_of_a_connectable_type():
    fields = parameter_fields()
    bound = {}
    for name, element in ui_widgets().items():
        parameter = own_property(element, "SlicerParameterName")
        if parameter is None:
            continue
        assert parameter in fields, f"{name} binds {parameter!r}, which is not a field of {PARAMETER_NODE_CLASS}"
        assert parameter not in bound, f"{parameter!r} is bound to both {bound[parameter]} and {name}"
        bound[parameter] = name
        annotation, widget_class = fields[parameter], element.get("class")
        kind = base_type(annotation)
        if kind.startswith("vtkMRML"):
            assert widget_class == "qMRMLNodeComboBox", f"{name}: a node field needs a qMRMLNodeComboBox"
        else:
            assert widget_class in CONNECTABLE_CLASSES[kind], f"{name}: {widget_class} cannot show a {kind}"
        if widget_class == "QComboBox" and kind == "str":
            # Slicer's connector refuses a combo box bound to a plain str: it needs the choices.
            assert "Choice(" in annotation, f"{parameter}: a QComboBox binding needs a Choice annotation"
        if kind == "enum":
            combo_items = element.findall("item")
            assert not combo_items, f"{name}: the Enum connector fills the items; the .ui must not list them"
        if widget_class == "ctkSliderWidget":
            assert "WithinRange(" in annotation, f"{parameter}: a ctkSliderWidget binding needs a range"
    assert bound, "no widget carries a SlicerParameterName"


def test_every_parameter_is_bound_to_a_widget():
    bound = {own_property(element, "SlicerParameterName") for element in ui_widgets().values()} - {None}
    assert bound == set(parameter_fields())


def test_parameters_default_to_the_library_settings():
    """The parameter node takes its defaults from PETStabilityDenoiseLib.settings, and the .ui shows the same."""
    from PETStabilityDenoiseLib.settings import DDPMSamplingConfig

    cls = class_def(module_tree(), PARAMETER_NODE_CLASS)
    defaults = {node.target.id: ast.unparse(node.value) for node in cls.body
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None}
    for parameter, expression in (("samples", "DDPM_DEFAULTS.samples"),
                                  ("alpha", "settings.DEFAULT_ALPHA"), ("method", "panel.Method[settings.DEFAULT_METHOD]"),
                                  ("preset", "panel.Preset[settings.DEFAULT_PRESET]"),
                                  ("device", "panel.Device[settings.DEFAULT_DEVICE]"),
                                  ("stabilityMap", "panel.Overlay[settings.DEFAULT_OVERLAY]")):
        assert defaults[parameter] == expression, f"{PARAMETER_NODE_CLASS}.{parameter} must default to {expression}"
    widgets = ui_widgets()
    for parameter, field in (("samples", "samples"),):
        expected = str(getattr(DDPMSamplingConfig(), field))
        assert own_property(widgets[f"{parameter}SpinBox"], "value") == expected, f"{parameter}SpinBox's value"


# --- the module file ---------------------------------------------------------------------------


def test_module_file_has_the_template_classes_in_template_order():
    tree = module_tree()
    positions = []
    for name, bases in TEMPLATE_CLASSES:
        cls = class_def(tree, name)
        assert [ast.unparse(base) for base in cls.bases] == bases, f"{name} derives from the wrong classes"
        positions.append(tree.body.index(cls))
    assert positions == sorted(positions)
    decorators = [ast.unparse(d) for d in class_def(tree, PARAMETER_NODE_CLASS).decorator_list]
    assert decorators == ["parameterNodeWrapper"]


def test_module_file_imports_no_deep_learning_stack_at_import_time():
    """The generic tests import the module before anything is installed: only Slicer's own packages and the
    library's torch-free layers, which need only what Slicer ships."""
    top_level, library = set(), set()
    for node in module_tree().body:
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            top_level.add(node.module.split(".")[0])
            if node.module.split(".")[0] == LIB_NAME:
                library |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names
                                            if module_file_for(f"{node.module}.{alias.name}")}
    outside = {name for name in top_level if not is_stdlib(name)} - {LIB_NAME}
    assert outside <= SLICER_PROVIDED, f"imported at module import time: {sorted(outside - SLICER_PROVIDED)}"
    needed = import_closure(library, import_time=True)
    assert needed <= SLICER_PROVIDED, f"the library modules imported at load time need {sorted(needed - SLICER_PROVIDED)}"


def test_library_modules_the_panel_uses_need_only_what_slicer_ships():
    """The panel, its logic and the dependency check are imported before the worker's packages are installed."""
    roots = library_modules_used_by_module_file()
    assert f"{LIB_NAME}.slicer.logic" in roots and f"{LIB_NAME}.slicer.install" in roots
    outside = import_closure(roots, import_time=True)
    assert outside <= SLICER_PROVIDED | {"scipy"}, (
        f"{sorted(outside - SLICER_PROVIDED - {'scipy'})} would have to be installed before the module panel "
        "can open; import them where they are used, inside the worker or after ensureDependencies()"
    )


# --- requirements.txt --------------------------------------------------------------------------


def requirements() -> list:
    lines = REQUIREMENTS_FILE.read_text(encoding="utf-8").splitlines()
    return [Requirement(line.split(" #")[0].strip()) for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_parse_and_leave_slicer_and_torch_alone():
    names = {canonicalize_name(requirement.name) for requirement in requirements()}
    assert names, "requirements.txt lists nothing"
    forbidden = {canonicalize_name(name) for name in ("numpy", "SimpleITK", "vtk", "torch")}
    assert names & forbidden == set()
    assert all(requirement.specifier for requirement in requirements()), "give every requirement a version floor"


def test_requirements_are_exactly_what_the_worker_and_logic_import():
    roots = library_modules_used_by_module_file() | {f"{LIB_NAME}.worker.__main__"}
    imported = import_closure(roots)
    imported |= {name for name, (importer, _) in INDIRECT_IMPORTS.items() if importer in imported}
    needed = {
        canonicalize_name(DISTRIBUTION_NAMES.get(name, name))
        for name in imported - SLICER_PROVIDED - {"torch"}
    }
    listed = {canonicalize_name(requirement.name) for requirement in requirements()}
    assert needed - listed == set(), "imported by the worker or logic but not in requirements.txt"
    assert listed - needed == set(), "in requirements.txt but imported by nothing that runs in Slicer"


def test_indirect_imports_are_still_made_by_their_importer():
    for name, (importer, relative) in INDIRECT_IMPORTS.items():
        spec = importlib.util.find_spec(importer)
        assert spec is not None and spec.origin, f"{importer} is not installed"
        source = (Path(spec.origin).parent / relative).read_text(encoding="utf-8")
        assert re.search(rf"""optional_import\(\s*["']{name}\b""", source), \
            f"{importer}/{relative} no longer imports {name}: drop it from INDIRECT_IMPORTS and requirements.txt?"


# --- CMakeLists.txt ----------------------------------------------------------------------------


def test_extension_cmakelists_has_the_required_metadata():
    text = strip_cmake_comments((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    values = dict(re.findall(r'\bset\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', text))
    for key in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"):
        assert values.get(f"EXTENSION_{key}", "").strip(), f"EXTENSION_{key} is missing or empty"
    assert "PyTorch" in values["EXTENSION_DEPENDS"].split()
    assert re.search(rf"project\(\s*{MODULE_NAME}\s*\)", text)
    assert re.search(r"find_package\(\s*Slicer\s+REQUIRED\s*\)", text)
    assert re.search(rf"add_subdirectory\(\s*{MODULE_NAME}\s*\)", text)
    for include in ("Slicer_USE_FILE", "Slicer_EXTENSION_GENERATE_CONFIG", "Slicer_EXTENSION_CPACK"):
        assert f"include(${{{include}}})" in text


@pytest.mark.parametrize("key", ["ICONURL", "SCREENSHOTURLS"])
def test_extension_image_urls_point_at_files_in_the_repository(key):
    text = strip_cmake_comments((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))
    urls = dict(re.findall(r'\bset\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', text))[f"EXTENSION_{key}"].split()
    for url in urls:
        match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/(.+)", url)
        assert match, f"{url} is not a raw GitHub URL"
        assert (ROOT / match.group(1)).is_file(), f"{url} names {match.group(1)}, which is not in the repository"


def test_module_cmakelists_lists_only_existing_files():
    scripts, resources = module_cmake_lists()
    missing = [path for path in scripts + resources if not (MODULE_DIR / path).is_file()]
    assert missing == [], "listed in PETStabilityDenoise/CMakeLists.txt but missing (the build would stop)"


def test_module_cmakelists_lists_every_python_file():
    scripts, _ = module_cmake_lists()
    on_disk = {
        path.relative_to(MODULE_DIR).as_posix()
        for path in MODULE_DIR.rglob("*.py")
        if "__pycache__" not in path.parts and not any(part.endswith(".egg-info") for part in path.parts)
    }
    assert len(scripts) == len(set(scripts)), "a script is listed twice"
    assert sorted(on_disk - set(scripts)) == [], "not in MODULE_PYTHON_SCRIPTS: the installed module would lack them"
    assert all(path.endswith(".py") for path in scripts)


def test_module_cmakelists_lists_every_resource_and_data_file():
    _, resources = module_cmake_lists()
    on_disk = {
        path.relative_to(MODULE_DIR).as_posix()
        for folder in (MODULE_DIR / "Resources", MODULE_DIR / LIB_NAME / "data")
        for path in folder.rglob("*")
        if path.is_file()
    }
    assert sorted(on_disk - set(resources)) == [], "not in MODULE_PYTHON_RESOURCES: the installed module would lack them"


def test_module_is_built_with_generic_tests_and_its_unit_test():
    text = strip_cmake_comments((MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8"))
    build = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, flags=re.S)
    assert build, "no slicerMacroBuildScriptedModule(...)"
    assert "WITH_GENERIC_TESTS" in build.group(1).split()
    for argument in ("NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}"):
        assert argument in " ".join(build.group(1).split())
    assert re.search(r"if\(\s*BUILD_TESTING\s*\).*slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)",
                     text, flags=re.S)
