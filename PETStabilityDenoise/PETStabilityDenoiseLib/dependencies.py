"""Find and install missing Python packages without ever replacing Slicer's own.

Installing a package into Slicer's Python can upgrade a dependency that Slicer itself
was built against (numpy, SimpleITK, vtk), which breaks Slicer until it is reinstalled.
Every install therefore goes through a pip constraints file that pins those packages to
the versions already installed. torch is also protected: it comes from the PyTorch
extension (CPU or the right CUDA build), never from our requirements.

Pure Python (standard library and ``packaging``), so that it works before anything is
installed and can be tested without Slicer.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

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


def write_constraints(path: PathLike, *, installed_version: VersionLookup = installed_version) -> Path:
    """Write a pip constraints file pinning every installed protected package to its installed version.

    With ``pip install -c <path> ...``, pip can then never upgrade, downgrade or reinstall them; it
    fails with a conflict instead, which is the safe outcome.
    """
    path = Path(path)
    pins = [f"{name}=={version}" for name in PROTECTED_PACKAGES if (version := installed_version(name)) is not None]
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
