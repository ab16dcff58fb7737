"""Find and install missing Python packages without ever replacing Slicer's own.

Installing a package into Slicer's Python can upgrade a dependency that Slicer itself
was built against (numpy, SimpleITK, vtk), which breaks Slicer until it is reinstalled.
Every install therefore goes through a pip constraints file that pins those packages to
the versions already installed. torch is also protected: it comes from the PyTorch
extension (CPU or the right CUDA build), never from our requirements.

Pure Python (standard library and ``packaging``), so that it works before anything is
installed. What only Slicer can do (dialogs, pip, the PyTorch extension) is passed in
as :class:`InstallSteps`, so that the whole install is tested with fakes.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Union

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

#: Packages that belong to Slicer (numpy, SimpleITK, vtk) or to the PyTorch extension (torch).
PROTECTED_PACKAGES = ("numpy", "SimpleITK", "vtk", "torch")

VersionLookup = Callable[[str], Optional[str]]
PathLike = Union[str, Path]


def installed_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name``, or None if it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_protected(name: str) -> bool:
    """Whether ``name`` (any spelling: ``simpleitk``, ``SimpleITK``) is one of PROTECTED_PACKAGES."""
    return canonicalize_name(name) in {canonicalize_name(p) for p in PROTECTED_PACKAGES}


def read_requirements(path: PathLike) -> list[Requirement]:
    """Parse a requirements file: one PEP 508 requirement per line, ``#`` comments and blank lines skipped.

    Raises ValueError naming the file and line for anything else (pip options such as ``-r`` included),
    and for any protected package, because installing it would replace Slicer's own.
    """
    path = Path(path)
    requirements = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise ValueError(f"{path}, line {number}: {raw.strip()!r} is not a valid requirement ({error})") from None
        if is_protected(requirement.name):
            raise ValueError(
                f"{path}, line {number}: {requirement.name} must not be listed, because installing it would replace "
                f"the copy that comes with Slicer or its PyTorch extension (protected: {', '.join(PROTECTED_PACKAGES)})"
            )
        requirements.append(requirement)
    return requirements


def missing_requirements(
    requirements: Iterable[Requirement], *, installed_version: VersionLookup = installed_version
) -> list[Requirement]:
    """The requirements that are not installed, or whose installed version does not satisfy the specifier.

    Requirements whose environment marker (``; python_version < "3.10"``) does not apply are skipped.
    """
    missing = []
    for requirement in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        version = installed_version(requirement.name)
        # Pre-releases count: Slicer previews ship pre-release builds that do satisfy a floor.
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(requirement)
    return missing


def pinned_packages(*, installed_version: VersionLookup = installed_version) -> List[str]:
    """``name==version`` of each protected package that pip can see, so can pin.

    A package installed without pip's metadata cannot be pinned: Slicer 5.8 ships vtk that way.
    """
    return [f"{name}=={version}" for name in PROTECTED_PACKAGES if (version := installed_version(name)) is not None]


def write_constraints(path: PathLike, *, installed_version: VersionLookup = installed_version) -> Path:
    """Write a pip constraints file pinning every installed protected package to its installed version.

    With ``pip install -c <path> ...``, pip can then never upgrade, downgrade or reinstall them; it
    fails with a conflict instead, which is the safe outcome.
    """
    path = Path(path)
    pins = pinned_packages(installed_version=installed_version)
    header = "# Written by PETStabilityDenoise: keep the packages of Slicer and its PyTorch extension as installed."
    lines = [header, *pins]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def requirement_text(requirement: Requirement) -> str:
    """The requirement as pip takes it on the command line, without its (already evaluated) marker."""
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    if requirement.url:
        return f"{requirement.name}{extras} @ {requirement.url}"
    return f"{requirement.name}{extras}{requirement.specifier}"


def pip_arguments(missing: Sequence[Requirement], constraints_path: PathLike) -> list[str]:
    """Arguments for ``pip install``: the constraints file, then each missing requirement."""
    return ["-c", str(constraints_path), *(requirement_text(r) for r in missing)]


def format_install_hint(missing: Sequence[Requirement], constraints_path: Optional[PathLike] = None) -> str:
    """A message for the user naming the missing packages and the commands that install them.

    With ``constraints_path`` (see :func:`write_constraints`) the commands use it, so that they
    cannot replace Slicer's own packages.
    """
    if not missing:
        return "All required Python packages are installed."
    names = ", ".join(requirement_text(r) for r in missing)
    texts = [requirement_text(r) for r in missing]
    arguments = ["-c", str(constraints_path), *texts] if constraints_path is not None else texts
    console = "slicer.util.pip_install([" + ", ".join(repr(a) for a in arguments) + "])"
    shell = "PythonSlicer -m pip install " + " ".join(f'"{a}"' for a in arguments)
    return (
        f"PETStabilityDenoise needs these Python packages: {names}.\n"
        f"Install them from Slicer's Python console with:\n    {console}\n"
        f"or from a terminal, with the PythonSlicer executable in Slicer's bin folder:\n    {shell}\n"
        "If a package was upgraded rather than newly installed, restart Slicer so that the new version loads."
    )


# torch comes from the PyTorch extension, which picks the build that matches the GPU driver.
TORCH_VERSION_REQUIREMENT = ">=2.3"
TORCH_REQUIREMENT = "torch" + TORCH_VERSION_REQUIREMENT
PYTORCH_EXTENSION_MISSING = ("PETStabilityDenoise needs the PyTorch extension. Install \"PyTorch\" from the "
                             "Extensions Manager, restart Slicer, and try again.")


@dataclass
class InstallSteps:
    """What only Slicer can do during an install, injected so that :func:`ensure_dependencies` runs with fakes.

    Args:
        batch_mode: True when no dialog can be answered (no main window, or testing).
        confirm: shows the names of what will be installed; True to go on.
        install_torch: installs torch through the PyTorch extension, True when it did;
            None when the extension is not installed.
        pip_install: installs the requirements under the constraints file.
        constraints_path: where the constraints file is written.
    """

    batch_mode: Callable[[], bool]
    confirm: Callable[[List[str]], bool]
    install_torch: Optional[Callable[[], bool]]
    pip_install: Callable[[Sequence[Requirement], Path], None]
    constraints_path: Path


def ensure_dependencies(requirements_path: PathLike, steps: InstallSteps, *, ask_confirmation: bool = True,
                        lookup: VersionLookup = installed_version) -> bool:
    """Makes torch and the packages of ``requirements_path`` importable; True when they all are.

    torch is installed through the PyTorch extension, the others with pip under a
    constraints file that pins Slicer's own numpy, SimpleITK and vtk (and torch).
    Returns False when the user declined. In batch mode nothing is installed:
    RuntimeError names what is missing and the commands that install it.
    """
    torch_missing, missing = _missing(requirements_path, lookup)
    if not torch_missing and not missing:
        return True
    if steps.batch_mode():
        raise RuntimeError(install_hint(torch_missing, missing, write_constraints(steps.constraints_path, installed_version=lookup)))
    install_torch = steps.install_torch
    if torch_missing and install_torch is None:
        raise RuntimeError(PYTORCH_EXTENSION_MISSING)

    names = [f"{TORCH_REQUIREMENT} (through the PyTorch extension)"] if torch_missing else []
    names += [requirement_text(requirement) for requirement in missing]
    if ask_confirmation and not steps.confirm(names):
        return False
    # torch first: monai requires torch, and pip must find the PyTorch extension's build installed
    # (and pinned by the constraints) rather than fetch a generic one.
    if torch_missing and not (install_torch is not None and install_torch()):
        raise RuntimeError("PyTorch was not installed.")
    if missing:
        steps.pip_install(missing, write_constraints(steps.constraints_path, installed_version=lookup))
    # Let this process import what has just been installed.
    importlib.invalidate_caches()
    return True


def missing_packages(requirements_path: PathLike, *, lookup: VersionLookup = installed_version) -> List[str]:
    """What :func:`ensure_dependencies` would install: torch (through the PyTorch extension) and the requirements."""
    torch_missing, missing = _missing(requirements_path, lookup)
    return ([TORCH_REQUIREMENT] if torch_missing else []) + [requirement_text(requirement) for requirement in missing]


def _missing(requirements_path: PathLike, lookup: VersionLookup) -> "tuple[bool, List[Requirement]]":
    torch_missing = bool(missing_requirements([Requirement(TORCH_REQUIREMENT)], installed_version=lookup))
    return torch_missing, missing_requirements(read_requirements(requirements_path), installed_version=lookup)


def install_hint(torch_missing: bool, missing: Sequence[Requirement], constraints_path: PathLike) -> str:
    """What is missing and the commands that install it, for batch mode where nothing can be confirmed."""
    parts = []
    if torch_missing:
        parts.append(
            f"PETStabilityDenoise needs PyTorch ({TORCH_REQUIREMENT}). Install the \"PyTorch\" extension from "
            "the Extensions Manager, then run in Slicer's Python console:\n"
            "    import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch("
            f"torchVersionRequirement=\"{TORCH_VERSION_REQUIREMENT}\")")
    if missing:
        parts.append(format_install_hint(missing, constraints_path))
    return "\n\n".join(parts)
