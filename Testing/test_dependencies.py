"""Requirement parsing, missing-package detection and the constraints that protect Slicer's own packages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from PETStabilityDenoiseLib.slicer import install as deps

REQUIREMENTS_TXT = Path(__file__).resolve().parents[1] / "PETStabilityDenoise" / "Resources" / "requirements.txt"

INSTALLED = {"numpy": "1.26.4", "SimpleITK": "2.4.0", "vtk": "9.4.0", "monai": "1.3.2", "psutil": "6.0.0"}


def fake_version(name: str):
    return INSTALLED.get(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    return path


def test_read_requirements_skips_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "# header\n\nmonai>=1.4  # the engine\n  psutil>=5.9\nscikit-image[data]>=0.21\n")
    assert [str(r) for r in deps.read_requirements(path)] == ["monai>=1.4", "psutil>=5.9", "scikit-image[data]>=0.21"]


def test_bad_line_error_names_file_line_and_text(tmp_path):
    path = write(tmp_path, "monai>=1.4\nnot a requirement!\n")
    with pytest.raises(ValueError, match=r"requirements\.txt, line 2: 'not a requirement!'"):
        deps.read_requirements(path)


def test_pip_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="line 1"):
        deps.read_requirements(write(tmp_path, "-r other.txt\n"))


@pytest.mark.parametrize("line", ["numpy>=2", "SimpleITK", "simpleitk==2.5", "VTK", "torch>=2.3"])
def test_protected_packages_are_refused(tmp_path, line):
    with pytest.raises(ValueError, match="must not be listed"):
        deps.read_requirements(write(tmp_path, f"monai>=1.4\n{line}\n"))


def test_missing_outdated_and_satisfied():
    requirements = [Requirement(r) for r in ("monai>=1.4", "psutil>=5.9", "numba>=0.59", "monai<2")]
    missing = deps.missing_requirements(requirements, installed_version=fake_version)
    # monai 1.3.2 is too old for the first, fine for the last; numba is not installed; psutil is satisfied.
    assert [str(r) for r in missing] == ["monai>=1.4", "numba>=0.59"]


def test_prerelease_satisfies_a_floor():
    missing = deps.missing_requirements([Requirement("monai>=1.4")], installed_version={"monai": "1.5.0rc1"}.get)
    assert missing == []


def test_requirements_whose_marker_does_not_apply_are_skipped():
    requirement = Requirement(f'numba>=0.59; python_version < "{sys.version_info.major}.0"')
    assert deps.missing_requirements([requirement], installed_version=fake_version) == []


def test_default_lookup_sees_this_environment():
    assert deps.installed_version("packaging") is not None
    assert deps.installed_version("no-such-package-petstab") is None


def test_constraints_pin_every_installed_protected_package(tmp_path):
    path = deps.write_constraints(tmp_path / "sub" / "constraints.txt", installed_version=fake_version)
    pins = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    # torch is not installed here, so it is not pinned; the others are, to the installed version.
    assert pins == ["numpy==1.26.4", "SimpleITK==2.4.0", "vtk==9.4.0"]
    for pin in pins:
        Requirement(pin)


def test_pip_arguments_put_the_constraints_first(tmp_path):
    missing = [Requirement("monai>=1.4"), Requirement('numba>=0.59; python_version >= "3"')]
    constraints = tmp_path / "c.txt"
    assert deps.pip_arguments(missing, constraints) == ["-c", str(constraints), "monai>=1.4", "numba>=0.59"]


def test_install_hint_names_packages_and_commands(tmp_path):
    hint = deps.format_install_hint([Requirement("monai>=1.4"), Requirement("numba")], tmp_path / "c.txt")
    assert "monai>=1.4, numba" in hint
    assert f"slicer.util.pip_install(['-c', {str(tmp_path / 'c.txt')!r}, 'monai>=1.4', 'numba'])" in hint
    assert f'PythonSlicer -m pip install "-c" "{tmp_path / "c.txt"}" "monai>=1.4" "numba"' in hint


def test_install_hint_without_constraints_and_with_nothing_missing():
    assert "slicer.util.pip_install(['monai>=1.4'])" in deps.format_install_hint([Requirement("monai>=1.4")])
    assert "installed" in deps.format_install_hint([])


def test_bundled_requirements_parse_and_name_no_protected_package():
    requirements = deps.read_requirements(REQUIREMENTS_TXT)
    assert requirements
    assert not any(deps.is_protected(r.name) for r in requirements)


# --- ensure_dependencies: the whole install, with fakes for what only Slicer can do ------------------------


class FakeSlicer:
    """Records what the install asked Slicer to do; ``installed`` is what importlib.metadata would report."""

    def __init__(self, tmp_path, *, installed, batch=False, answer=True, extension=True, torch_installs=True):
        self.installed, self.calls = dict(installed), []
        self.batch, self.answer, self.torch_installs = batch, answer, torch_installs
        self.steps = deps.InstallSteps(batch_mode=lambda: self.batch, confirm=self.confirm,
                                       install_torch=self.install_torch if extension else None,
                                       pip_install=self.pip_install, constraints_path=tmp_path / "constraints.txt")

    def confirm(self, names):
        self.calls.append(("confirm", names))
        return self.answer

    def install_torch(self):
        self.calls.append(("torch",))
        if self.torch_installs:
            self.installed["torch"] = "2.5.0"
        return self.torch_installs

    def pip_install(self, missing, constraints):
        self.calls.append(("pip", [r.name for r in missing], constraints.read_text()))
        self.installed.update({r.name: "99.0" for r in missing})

    def ensure(self, requirements, **kwargs):
        return deps.ensure_dependencies(requirements, self.steps, lookup=self.installed.get, **kwargs)


def test_nothing_to_do_asks_nothing(tmp_path):
    fake = FakeSlicer(tmp_path, installed={**INSTALLED, "torch": "2.5.0", "monai": "1.4.0"})
    assert fake.ensure(write(tmp_path, "monai>=1.4\n")) is True
    assert fake.calls == []


def test_confirmed_install_puts_torch_first_then_pip_under_the_constraints(tmp_path):
    fake = FakeSlicer(tmp_path, installed=INSTALLED)
    assert fake.ensure(write(tmp_path, "monai>=1.4\npsutil>=5.9\n")) is True
    (confirm, names), torch_call, (pip, packages, constraints) = fake.calls
    assert confirm == "confirm" and names[0].startswith(deps.TORCH_REQUIREMENT) and "monai>=1.4" in names
    assert torch_call == ("torch",)
    assert pip == "pip" and packages == ["monai"]  # psutil 6.0.0 already satisfies its floor
    assert "numpy==1.26.4" in constraints and "torch==2.5.0" in constraints  # torch was pinned once installed


def test_declined_install_installs_nothing(tmp_path):
    fake = FakeSlicer(tmp_path, installed=INSTALLED, answer=False)
    assert fake.ensure(write(tmp_path, "monai>=1.4\n")) is False
    assert [call[0] for call in fake.calls] == ["confirm"]


def test_no_confirmation_asked_when_not_wanted(tmp_path):
    fake = FakeSlicer(tmp_path, installed={**INSTALLED, "torch": "2.5.0"})
    assert fake.ensure(write(tmp_path, "monai>=1.4\n"), ask_confirmation=False) is True
    assert [call[0] for call in fake.calls] == ["pip"]


def test_batch_mode_installs_nothing_and_names_the_commands(tmp_path):
    fake = FakeSlicer(tmp_path, installed=INSTALLED, batch=True)
    with pytest.raises(RuntimeError) as error:
        fake.ensure(write(tmp_path, "monai>=1.4\n"))
    assert fake.calls == []
    message = str(error.value)
    assert "installTorch" in message and "monai>=1.4" in message and str(tmp_path / "constraints.txt") in message


def test_missing_pytorch_extension_is_named(tmp_path):
    fake = FakeSlicer(tmp_path, installed=INSTALLED, extension=False)
    with pytest.raises(RuntimeError, match="PyTorch extension"):
        fake.ensure(write(tmp_path, "monai>=1.4\n"))
    assert fake.calls == []


def test_failed_torch_install_stops_before_pip(tmp_path):
    fake = FakeSlicer(tmp_path, installed=INSTALLED, torch_installs=False)
    with pytest.raises(RuntimeError, match="PyTorch was not installed"):
        fake.ensure(write(tmp_path, "monai>=1.4\n"))
    assert [call[0] for call in fake.calls] == ["confirm", "torch"]


def test_missing_packages_names_torch_and_the_requirements(tmp_path):
    requirements = write(tmp_path, "monai>=1.4\npsutil>=5.9\n")
    assert deps.missing_packages(requirements, lookup=fake_version) == [deps.TORCH_REQUIREMENT, "monai>=1.4"]
    assert deps.missing_packages(requirements, lookup={**INSTALLED, "torch": "2.5.0", "monai": "1.4.1"}.get) == []


def test_only_packages_pip_can_see_are_pinned():
    # Slicer 5.8 ships vtk without pip's metadata: it cannot be pinned, and must not be said to be.
    lookup = {"numpy": "1.26.4", "SimpleITK": "2.4.0"}.get
    assert deps.pinned_packages(installed_version=lookup) == ["numpy==1.26.4", "SimpleITK==2.4.0"]
