"""PETStabilityDenoise library: stability-map conditional DIP denoising of PET.

Importable without 3D Slicer. The numerical engine works on numpy arrays in
SimpleITK's (z, y, x) order; image I/O and geometry work on ``SimpleITK.Image``.
"""

from pathlib import Path

__version__ = "0.1.0"

# What the product loads at run time and ships in the wheel: the bundled BrainWeb subject, the diffusion model
# (ddpm/) and the sample PET/MR case (sample/).
DATA_DIR = Path(__file__).resolve().parent / "data"
# The folder that holds this package: a worker process started there, or with it on PYTHONPATH, imports it.
LIBRARY_PARENT = Path(__file__).resolve().parent.parent
