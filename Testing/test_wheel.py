"""A plain (non-editable) install must carry everything the product loads at run time."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_alone_runs_the_bundled_diffusion_model(small_pet_mr, tmp_path):
    # Build from a copy, so that the checkout gets no build/ folder; unpack the wheel and run from it alone
    # (PYTHONPATH comes before the editable install of this checkout), with the dependencies already here.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE.txt"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "PETStabilityDenoise", source / "PETStabilityDenoise",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(dist), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    for needed in ("PETStabilityDenoiseLib/data/ddpm/weights.pt", "PETStabilityDenoiseLib/data/ddpm/model.json",
                   "PETStabilityDenoiseLib/data/ddpm/base/weights.pt", "PETStabilityDenoiseLib/data/ddpm/base/model.json",
                   "PETStabilityDenoiseLib/data/ddip_prior/weights.pt",
                   "PETStabilityDenoiseLib/data/ddip_prior/model.json",
                   "PETStabilityDenoiseLib/data/sample/PETStabilitySample_PET.nrrd",
                   "PETStabilityDenoiseLib/data/sample/PETStabilitySample_MR.nrrd",
                   "PETStabilityDenoiseLib/data/brainweb_subject04_labels_1mm.nii.gz",
                   "PETStabilityDenoiseLib/worker/__main__.py"):
        assert needed in names, f"the wheel lacks {needed}"

    pet, mr, _ = small_pet_mr
    sitk.WriteImage(pet, str(tmp_path / "pet.nii.gz"))
    sitk.WriteImage(mr, str(tmp_path / "mr.nii.gz"))
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    completed = subprocess.run(
        [sys.executable, "-m", "PETStabilityDenoiseLib.cli", "denoise", "--method", "ddpm", "--pet", "pet.nii.gz",
         "--mr", "mr.nii.gz", "--out", "run", "--samples", "2", "--device", "cpu", "--threads", "2",
         "--progress", "none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert Path(record["model_dir"]).resolve() == (tmp_path / "site" / "PETStabilityDenoiseLib" / "data" / "ddpm").resolve()
    assert sorted(record["outputs"]) == ["denoised", "network_output", "stability", "stability_norm"]
